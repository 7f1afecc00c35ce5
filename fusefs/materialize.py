"""Files whose bytes are all on the node made into plain files (``blobstore.store.filecache``)
for FUSE passthrough, and files a restarted daemon finds checked before it hands them out.

A regular file of at least ``MIN_SIZE`` bytes is considered when a handle that read it is
released (its chunks may all be on the node now), when it is opened and a file for it
exists that this daemon has not verified (one made before a restart), and when a prefetch
of its image (``--prefetch all``, hints, ``thaw warm``) has brought its chunks
(``after_prefetch``). ``ready`` names a verified file,
for ``open`` to answer with passthrough; until then the chunk path serves the file. Smaller
files stay on the chunk path: the kernel keeps their pages after the first read, and
writing a file of its own for each would cost more than it saves.

Never in the way of a read: each job runs in a worker thread, two at a time, one per file
at once; a job reads the file's chunks from the disk cache (verified there) and writes and
hashes the file, or hashes a found file again. A chunk missing from the disk cache ends the
job (the file is considered again later). Nor in the way of a start: a job waits, before
it begins and before each chunk it writes, and the scan after a prefetch before each slice
of the image, until the kernel has sent no request for ``QUIET`` seconds (``wait_out``).
A start's requests come far closer than that, and the CPU a job takes is what the start
needs: on two cores a hinted start of the inference image took 15 s with passthrough off
and 17 to 18 s with files made as it ran. Trio thread; the jobs in worker threads.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from blobstore.errors import StoreError
from blobstore.image.manifest import FILE
from blobstore.store.diskcache import DiskCache
from blobstore.store.filecache import FileCache, file_key

from .tree import FsTree

log = logging.getLogger(__name__)
MIN_SIZE = 64 << 10
JOBS = 2
QUIET = 0.1  # seconds without a kernel request before a job goes on
SCAN_SLICE = 1000  # entries the scan after a prefetch looks at between waits (~20 ms)


class Materializer:
    def __init__(self, disk: DiskCache, *, min_size: int = MIN_SIZE) -> None:
        self.disk, self.files, self.min_size = disk, FileCache(disk), min_size
        self._keys: weakref.WeakKeyDictionary[FsTree, dict[int, str]] = \
            weakref.WeakKeyDictionary()
        self._verified: set[str] = set()
        self._busy: set[str] = set()
        self._waiting: weakref.WeakSet[FsTree] = weakref.WeakSet()
        self._limiter = trio.CapacityLimiter(JOBS)
        self._idle: Callable[[], float] = lambda: math.inf
        self._nursery: trio.Nursery | None = None
        self.made = self.checked = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def wait_out(self, idle: Callable[[], float]) -> None:
        """``idle``: seconds since the kernel's last request, which jobs wait to reach
        ``QUIET``."""
        self._idle = idle

    async def _quiet(self) -> None:
        while (idle := self._idle()) < QUIET:
            await trio.sleep(QUIET - idle)

    def _quiet_in_thread(self) -> None:
        while (idle := self._idle()) < QUIET:
            time.sleep(QUIET - idle)

    def key(self, tree: FsTree, ino: int) -> str | None:
        """The file's name in the file cache; None for what is not made into a file."""
        keys = self._keys.setdefault(tree, {})
        if ino not in keys:
            entry = tree.entry(ino)
            if entry.type != FILE or entry.size < self.min_size:
                keys[ino] = ""
            else:
                chunks = tree.manifest.chunks
                keys[ino] = file_key((chunks[s.chunk].id, s.offset, s.length)
                                     for s in entry.spans)
        return keys[ino] or None

    def ready(self, tree: FsTree, ino: int) -> Path | None:
        """The verified file of ``ino``, if there is one now; else None (and a job to make
        or verify it is started where one may help)."""
        key = self.key(tree, ino)
        if key is None:
            return None
        if key in self._verified:
            path = self.files.path(key)
            if path.exists():
                return path
            self._verified.discard(key)  # evicted meanwhile
        elif self.files.has(key):
            self.consider(tree, ino)  # made before this daemon started: verify it first
        return None

    @property
    def ready_count(self) -> int:
        """Files verified or made by this daemon (some may have been evicted since)."""
        return len(self._verified)

    def used(self, tree: FsTree, ino: int) -> None:
        """The file of ``ino`` was opened: a use, for the cache's eviction order."""
        key = self.key(tree, ino)
        if key is not None:
            self.files.touch(key)

    def consider(self, tree: FsTree, ino: int) -> None:
        """Make ``ino`` into a file, or verify the one there, in the background."""
        key = self.key(tree, ino)
        if key is None or key in self._busy or key in self._verified or self._nursery is None:
            return
        self._busy.add(key)
        self._nursery.start_soon(self._job, tree, ino, key)

    def after_prefetch(self, tree: FsTree, drained: Callable[[], Awaitable[None]]) -> None:
        """Once the prefetch queued now is done (``drained`` returns), consider each file of
        ``tree`` whose chunks it brought: a file prefetched whole opens with passthrough the
        first time, not after a read through the daemon."""
        if self._nursery is None or tree in self._waiting:
            return  # a wait already running sees this prefetch out too
        self._waiting.add(tree)
        self._nursery.start_soon(self._consider_image, tree, drained)

    async def _consider_image(self, tree: FsTree, drained: Callable[[], Awaitable[None]]
                              ) -> None:
        try:
            await drained()
        finally:
            self._waiting.discard(tree)
        inodes = []
        for first in range(0, tree.inode_count, SCAN_SLICE):
            await self._quiet()
            inodes += await trio.to_thread.run_sync(self._on_node, tree, first)
        for ino in inodes:
            self.consider(tree, ino)
        if inodes:
            log.info("%s: making %d files whose chunks are on the node ready for "
                     "passthrough", tree.name, len(inodes))

    def _on_node(self, tree: FsTree, first: int) -> list[int]:
        """In a worker thread: the large files among ``SCAN_SLICE`` entries of ``tree``
        from ``first`` whose chunks are all in the disk cache."""
        chunks = tree.manifest.chunks
        return [ino for ino in tree.file_inodes(self.min_size, first, first + SCAN_SLICE)
                if all(self.disk.has(chunks[s.chunk].id) for s in tree.entry(ino).spans)]

    async def _job(self, tree: FsTree, ino: int, key: str) -> None:
        try:
            async with self._limiter:
                await self._quiet()
                if await trio.to_thread.run_sync(self._make_or_verify, tree, ino, key):
                    self._verified.add(key)
        except (StoreError, OSError) as exc:
            log.info("%s /%s not made into a file: %s", tree.name, tree.entry(ino).path, exc)
        finally:
            self._busy.discard(key)

    def _make_or_verify(self, tree: FsTree, ino: int, key: str) -> bool:
        """In a worker thread: whether a verified file for ``ino`` is there now. A found
        file that fails its check is made again at once: the reads that would ask for it
        again may all come from the kernel's cache."""
        if self.files.has(key):
            self.checked += 1
            if self.files.verify(key):
                return True
        entry, chunks = tree.entry(ino), tree.manifest.chunks
        if not all(self.disk.has(chunks[s.chunk].id) for s in entry.spans):
            return False  # not all on the node yet

        def pieces():
            for s in entry.spans:
                self._quiet_in_thread()
                c = chunks[s.chunk]
                yield memoryview(self.disk.fetch(c.id, max_size=c.size).data)[
                    s.offset:s.offset + s.length]

        self.files.write(key, pieces(), entry.size)
        self.made += 1
        return True
