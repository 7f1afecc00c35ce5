"""The pyfuse3 adapter: each handler is a few lines over a namespace and the fetcher.

Every handler goes through ``@fuse_errors``, the one boundary that turns our errors into
errno values: ``errors.FsError`` by name (ENOENT, EINVAL, EBADF); a store's ``ThawError``
is EIO, logged once; anything else, a ``KeyError`` too, is a bug: traceback and EIO.
pyfuse3 catches only ``FUSEError``, and anything else escaping a handler ends
``pyfuse3.main()`` and the mount dies. A read returns exactly the bytes asked for, up to the
end of the file: the spans cover the range, and a read that crosses chunks joins them.
Sequential reads of a file widen a read-ahead window that the fetcher prefetches into, and
reads that move forward through an image's data stream, across files, widen another
(``readahead.StreamReadAhead``). Runs on the trio thread only.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import math
import os
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

import pyfuse3
import trio

from blobstore.errors import ThawError
from blobstore.image.manifest import FILE

from . import control
from .errors import FsError, NoSuchHandle
from .fetch import ChunkFetcher, Priority
from .materialize import Materializer
from .passthrough import Passthrough
from .readahead import StreamReadAhead
from .stats import MountStats
from .tree import Attrs, FsTree

log = logging.getLogger(__name__)
TIMEOUT = 24 * 3600.0  # images never change: let the kernel keep entries and attributes
READ_AHEAD_MIN, READ_AHEAD_MAX = 1 << 20, 16 << 20
CACHE_DIR = 1 << 63  # in an opendir handle: the kernel may cache the listing
LISTED_ENTRIES = 100_000  # directory entries whose attributes readdir keeps (~30 MB)


class Namespace(Protocol):
    """What the mount shows: one image, or every image of a store."""

    kind: str  # "image" or "daemon", as `thaw stats` says
    async def ready(self, ino: int) -> None: ...
    def immutable(self, ino: int) -> bool: ...
    async def lookup(self, parent: int, name: bytes) -> int | None: ...
    async def children(self, ino: int) -> list[tuple[bytes, int]]: ...
    def attrs(self, ino: int) -> Attrs: ...
    def readlink(self, ino: int) -> bytes: ...
    def xattrs(self, ino: int) -> tuple[tuple[bytes, bytes], ...]: ...
    def tree_of(self, ino: int) -> FsTree: ...
    def totals(self) -> tuple[int, int]: ...
    def carries_xattrs(self) -> bool: ...


@dataclass
class _Handle:
    tree: FsTree
    ino: int
    next_offset: int = 0
    window: int = READ_AHEAD_MIN
    backing: bool = False  # a passthrough open: the kernel reads its backing file
    read: bool = False  # a read went through it (its chunks may all be on the node now)


def fuse_errors(fn):
    """Map every exception of a handler to an errno; nothing else may escape."""

    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self, *args):
        self.requests[name] += 1
        self.last_request = time.monotonic()
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except FsError as exc:  # NoSuchInode, NotASymlink, NoSuchHandle: by name
            raise pyfuse3.FUSEError(exc.errno) from None
        except ThawError as exc:  # store down, corrupt or missing blob, invalid manifest
            self.log_once(str(exc))
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("bug in %s%r", fn.__name__, args)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def entry_attributes(a: Attrs) -> pyfuse3.EntryAttributes:
    e = pyfuse3.EntryAttributes()
    e.st_ino, e.generation = a.ino, 0
    e.entry_timeout = e.attr_timeout = TIMEOUT if a.ttl is None else a.ttl
    e.st_mode, e.st_nlink, e.st_uid, e.st_gid = a.mode, a.nlink, a.uid, a.gid
    e.st_rdev, e.st_size, e.st_blksize, e.st_blocks = a.rdev, a.size, 4096, a.blocks
    e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = a.mtime_ns
    return e


def _control_attributes(ino: int) -> pyfuse3.EntryAttributes:
    """A control file: read-only, its size unknown (read to the end: direct I/O), never
    cached, so every lookup and open reaches the daemon."""
    e = pyfuse3.EntryAttributes()
    e.st_ino, e.generation, e.entry_timeout, e.attr_timeout = ino, 0, 0, 0
    e.st_mode, e.st_nlink, e.st_size, e.st_blksize = 0o100444, 1, 0, 4096
    return e


class ImageOps(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = True

    def __init__(self, namespace: Namespace, fetcher: ChunkFetcher,
                 on_chunk_read: Callable[[FsTree, int], None] | None = None,
                 statistics: Callable[[], MountStats] | None = None,
                 on_warm: Callable[[FsTree, str], Awaitable[dict]] | None = None,
                 passthrough: Passthrough | None = None,
                 files: Materializer | None = None) -> None:
        """``statistics``: the mount's record, served as the root's ``.thaw-stats``;
        ``on_warm``: what opening ``.thaw-warm.INO.WORKLOAD`` starts (``control.py``);
        ``passthrough`` and ``files``: backing files for the files whose bytes are on the
        node (none: every read comes here)."""
        super().__init__()
        self.ns, self.fetcher, self.statistics = namespace, fetcher, statistics
        self.on_warm = on_warm
        self.readdir_requests = 0
        self.requests: Counter[str] = Counter()  # requests the kernel sent, by handler
        self.last_request = -math.inf  # time.monotonic(): worker threads read it too
        self.on_chunk_read = on_chunk_read  # (image, chunk index) of each read, for hints
        self.passthrough = passthrough or Passthrough("off")
        self.enable_passthrough = self.passthrough.enabled  # asked of the kernel at INIT
        self.files = files
        if files:
            files.wait_out(self.idle_seconds)
        self._handles: dict[int, _Handle] = {}
        self._listed: OrderedDict[int, list[tuple[bytes, pyfuse3.EntryAttributes]]] = \
            OrderedDict()
        self._listed_entries = 0
        self._streams: weakref.WeakKeyDictionary[FsTree, StreamReadAhead] = \
            weakref.WeakKeyDictionary()  # dropped with the image's tree
        self._next_fh = 1
        self._control = control.ControlInodes()
        self._control_data: dict[int, bytes] = {}  # handle -> an opened control file's bytes
        self._logged: set[str] = set()
        self.initialized = trio.Event()

    def init(self) -> None:
        """Called by pyfuse3 just before the kernel's INIT request is answered."""
        self.initialized.set()

    def log_once(self, message: str) -> None:
        if message not in self._logged:
            self._logged.add(message)
            log.error("read failed: %s", message)

    @fuse_errors
    async def lookup(self, parent_inode, name, ctx=None):
        if name == b".":
            await self.ns.ready(parent_inode)
            return entry_attributes(self.ns.attrs(parent_inode))
        if name == b"..":
            raise pyfuse3.FUSEError(errno.ENOENT)  # the kernel resolves '..' itself
        if parent_inode == pyfuse3.ROOT_INODE and name.startswith(b".thaw-"):
            c = control.parse(name)
            if c is not None and (self.statistics if c.kind == "stats" else self.on_warm):
                return _control_attributes(self._control.add(c))
        ino = await self.ns.lookup(parent_inode, name)
        if ino is None:
            if not self.ns.immutable(parent_inode):
                raise pyfuse3.FUSEError(errno.ENOENT)  # the root and refs/ change
            # A name missing from an image stays missing: inode 0 with a timeout is a
            # negative entry, so the kernel answers the next lookup of it (an interpreter's
            # start looks up thousands of paths that do not exist).
            self.requests["lookup_missing"] += 1
            e = pyfuse3.EntryAttributes()
            e.st_ino, e.entry_timeout = 0, TIMEOUT
            return e
        return entry_attributes(self.ns.attrs(ino))

    @fuse_errors
    async def getattr(self, inode, ctx=None):
        if self._control.get(inode):
            return _control_attributes(inode)
        await self.ns.ready(inode)
        return entry_attributes(self.ns.attrs(inode))

    @fuse_errors
    async def readlink(self, inode, ctx):
        await self.ns.ready(inode)
        return self.ns.readlink(inode)

    @fuse_errors
    async def opendir(self, inode, ctx):
        """The handle is the inode; an image's directory never changes, so its handle
        carries ``CACHE_DIR``, which asks the kernel to keep its listing (with pyfuse3
        rebuilt by ``scripts/pyfuse3.sh``; a stock pyfuse3 passes the bit
        through to ``readdir``, which drops it)."""
        return inode | CACHE_DIR if self.ns.immutable(inode) else inode

    @fuse_errors
    async def readdir(self, fh, start_id, token):
        """From ``start_id`` on (the index after the last name the kernel took), so a big
        directory listed in many calls costs each entry once."""
        self.readdir_requests += 1
        ino = fh & ~CACHE_DIR
        listing = self._listed.get(ino)
        if listing is not None:
            self._listed.move_to_end(ino)
        else:
            children = await self.ns.children(ino)
            if not self.ns.immutable(ino) or len(children) > LISTED_ENTRIES:
                # attributes only for the names this reply takes: still linear overall
                for i in range(start_id, len(children)):
                    name, child = children[i]
                    if not pyfuse3.readdir_reply(
                            token, name, entry_attributes(self.ns.attrs(child)), i + 1):
                        return
                return
            listing = self._keep(ino, children)
        for i in range(start_id, len(listing)):
            name, attrs = listing[i]
            if not pyfuse3.readdir_reply(token, name, attrs, i + 1):
                return

    def _keep(self, ino: int, children: list[tuple[bytes, int]]
              ) -> list[tuple[bytes, pyfuse3.EntryAttributes]]:
        """Build and keep an image directory's names with their attributes, for the
        directories listed last (``LISTED_ENTRIES`` entries in all, about 300 bytes each):
        a directory is read in one request per page of names, and building its attributes
        once rather than per request takes a repeated listing of 100k entries (with a
        stock pyfuse3, which cannot let the kernel cache it) from 0.53 to 0.21 s."""
        listing = [(name, entry_attributes(self.ns.attrs(child))) for name, child in children]
        self._listed[ino] = listing
        self._listed_entries += len(listing)
        while self._listed_entries > LISTED_ENTRIES:
            self._listed_entries -= len(self._listed.popitem(last=False)[1])
        return listing

    @fuse_errors
    async def open(self, inode, flags, ctx):
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise pyfuse3.FUSEError(errno.EROFS)
        c = self._control.get(inode)
        if c is not None:
            fh, self._next_fh = self._next_fh, self._next_fh + 1
            self._control_data[fh] = await self._control_file(c)
            return pyfuse3.FileInfo(fh=fh, keep_cache=False, direct_io=True)
        await self.ns.ready(inode)
        tree = self.ns.tree_of(inode)
        if tree.entry(inode).type != FILE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        fh, self._next_fh = self._next_fh, self._next_fh + 1
        backing = self._backing(tree, inode)
        self._handles[fh] = _Handle(tree, inode, backing=backing is not None)
        if backing is not None:  # keep_cache must be off on a passthrough open
            return pyfuse3.FileInfo(fh=fh, keep_cache=False, direct_io=False,
                                    backing_id=backing)
        self.passthrough.opened_normally(inode)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=False)

    def _backing(self, tree: FsTree, inode: int) -> int | None:
        """A backing id for a passthrough open of ``inode``, or None. The reads will not
        come here, so what they would have told is learnt now: the file's chunks count
        as read (hints, in open order), as used (what prefetch fetched for them was no
        waste), and the file as used (the cache's recency)."""
        if self.files is None or not self.passthrough.enabled:
            return None
        path = self.files.ready(tree, inode)
        backing = None if path is None else self.passthrough.open(inode, path)
        if backing is not None:
            chunks = tree.manifest.chunks
            for s in tree.entry(inode).spans:
                self.fetcher.used(chunks[s.chunk])
                if self.on_chunk_read is not None:
                    self.on_chunk_read(tree, s.chunk)
            self.files.used(tree, inode)
        return backing

    def idle_seconds(self) -> float:
        """Seconds since the kernel's last request (any thread)."""
        return time.monotonic() - self.last_request

    def stats_now(self) -> MountStats:
        """The mount's record with this handler's own counts."""
        return replace(self.statistics(), readdir_requests=self.readdir_requests,
                       fuse_requests=dict(sorted(self.requests.items())))

    async def _control_file(self, c: control.Control) -> bytes:
        if c.kind == "stats":
            doc = self.stats_now().as_json()
        else:
            await self.ns.ready(c.image_ino)
            if not self.ns.immutable(c.image_ino):
                raise pyfuse3.FUSEError(errno.EINVAL)  # the root or refs/: not an image
            doc = await self.on_warm(self.ns.tree_of(c.image_ino), c.workload)
        return json.dumps(doc, sort_keys=True).encode()

    @fuse_errors
    async def read(self, fh, off, size):
        data = self._control_data.get(fh)
        if data is not None:
            return data[off:off + size]
        h = self._handle(fh)
        h.read = True
        try:
            return await self._read(h, off, size)
        except ThawError as exc:  # say which image and file the failed chunk belongs to
            self.log_once(f"{h.tree.name} /{h.tree.entry(h.ino).path}: {exc}")
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def _read(self, h: _Handle, off: int, size: int):
        chunks = h.tree.manifest.chunks
        spans = h.tree.spans(h.ino, off, size)
        if self.on_chunk_read is not None:
            for s in spans:
                self.on_chunk_read(h.tree, s.chunk)
        if spans:
            self._stream_ahead(h.tree, spans[-1].chunk, off == 0)
        self._read_ahead(h, off, size)
        if len(spans) == 1:
            s = spans[0]
            data = await self.fetcher.get(chunks[s.chunk])
            return memoryview(data)[s.offset:s.offset + s.length]
        pieces: list[bytes] = [b""] * len(spans)
        errors: list[Exception] = []

        async def fill(i: int) -> None:
            s = spans[i]
            try:
                data = await self.fetcher.get(chunks[s.chunk])
            except Exception as exc:  # noqa: BLE001 - the first one is raised below, alone
                errors.append(exc)
                return
            pieces[i] = memoryview(data)[s.offset:s.offset + s.length]

        async with trio.open_nursery() as nursery:
            for i in range(len(spans)):
                nursery.start_soon(fill, i)
        if errors:
            raise errors[0]  # one error, not an ExceptionGroup: the boundary logs it once
        return b"".join(pieces)

    def _read_ahead(self, h: _Handle, off: int, size: int) -> None:
        """Sequential reads double the window ahead of them; a jump resets it and fetches
        nothing ahead (random reads must not pull in the chunks after each of them)."""
        sequential = off == h.next_offset
        h.window = min(h.window * 2, READ_AHEAD_MAX) if sequential else READ_AHEAD_MIN
        h.next_offset = off + size
        if not sequential:
            return
        ahead = h.tree.spans(h.ino, off + size, h.window)
        chunks = h.tree.manifest.chunks
        self.fetcher.prefetch([chunks[s.chunk] for s in ahead])

    def _stream_ahead(self, tree: FsTree, index: int, file_start: bool) -> None:
        """Before the read: whether anybody had asked for its chunk is the news."""
        if not self.fetcher.enabled:
            return
        stream = self._streams.get(tree)
        chunks = tree.manifest.chunks
        if stream is None:
            stream = self._streams[tree] = StreamReadAhead([c.stored_size for c in chunks])
        stream.min_bytes = min(self.fetcher.window, stream.max_bytes)
        stream.around = stream.min_bytes
        ahead = stream.read(index, not self.fetcher.requested(chunks[index].id), file_start)
        if ahead:
            self.fetcher.prefetch([chunks[i] for i in ahead], Priority.READ_AHEAD)

    def _handle(self, fh: int) -> _Handle:
        h = self._handles.get(fh)
        if h is None:
            raise NoSuchHandle(fh)
        return h

    @fuse_errors
    async def release(self, fh):
        h = self._handles.pop(fh, None)
        self._control_data.pop(fh, None)
        if h is not None:
            self.passthrough.released(h.ino, h.backing)
            if h.read and self.files is not None and self.passthrough.enabled:
                self.files.consider(h.tree, h.ino)  # its chunks may all be here now

    @fuse_errors
    async def releasedir(self, fh):
        return None

    @fuse_errors
    async def access(self, inode, mode, ctx):
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        if self._control.get(inode):
            return
        await self.ns.ready(inode)
        self.ns.attrs(inode)  # ENOENT for an unknown inode; permissions: default_permissions

    @fuse_errors
    async def getxattr(self, inode, name, ctx):
        if not self.ns.carries_xattrs():
            # The kernel then answers every getxattr of this mount itself (no data)
            # instead of asking the daemon twice for each file `ls -l` shows.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        if self._control.get(inode):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        await self.ns.ready(inode)
        for key, value in self.ns.xattrs(inode):
            if key == name:
                return value
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    @fuse_errors
    async def listxattr(self, inode, ctx):
        if self._control.get(inode):
            return []
        await self.ns.ready(inode)
        return [key for key, _ in self.ns.xattrs(inode)]

    @fuse_errors
    async def statfs(self, ctx):
        total_bytes, inodes = self.ns.totals()
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = (total_bytes + 4095) // 4096
        s.f_bfree = s.f_bavail = 0
        s.f_files, s.f_ffree, s.f_favail = inodes, 0, 0
        s.f_namemax = 255
        return s

    async def forget(self, inode_list):
        """Image inodes are fixed for the life of the mount; control files are not."""
        for ino, _ in inode_list:
            self._control.forget(ino)
