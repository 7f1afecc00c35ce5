"""The daemon's node report: every few seconds, what this node offers placement.

It reports the images this node has served (those its daemon loaded, now or before a
restart), each with the bytes of its distinct chunks in the node's disk cache. It does not
decode every manifest of the store: a store of many big images would cost seconds of CPU at
start and memory for ever, and an image this node never served has no bytes here beyond
chunks it shares with one it did. Each served image's chunk table (id and size) is kept in
``CACHE/.images/<manifest id>`` (40 bytes a chunk), written once when the image is first
loaded, so a restarted daemon reports it without its manifest; it is removed once none of
its chunks is cached. The cache is not listed whole each interval: ``CacheIndex`` rescans
only the cache's subdirectories whose mtime changed (an entry added or evicted).

Runs as a trio task; building the report (scanning, reading tables, asking NVML) and writing
it go to a worker thread. ``add`` is called on the trio thread as images load.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import trio

from blobstore.errors import ThawError
from blobstore.image.dirmanifest import AnyManifest
from blobstore.ops.nodereport import build_report, write_report
from blobstore.schema import NodeReport
from blobstore.store.base import ObjectStore
from blobstore.store.diskcache import CacheIndex, DiskCache
from blobstore.store.tempfiles import temp_path

log = logging.getLogger(__name__)
_ROW = struct.Struct("<32sQ")  # chunk id (raw), size


def chunk_table(manifest: AnyManifest) -> bytes:
    """The distinct chunks of an image as ``(id, size)`` rows, sorted."""
    sizes = {c.id: c.size for c in manifest.chunks}
    return b"".join(_ROW.pack(bytes.fromhex(id), size) for id, size in sorted(sizes.items()))


def read_table(data: bytes) -> dict[str, int]:
    """A table written by ``chunk_table``; a damaged one (a torn write) reads as empty."""
    if len(data) % _ROW.size:
        return {}
    return {raw.hex(): size for raw, size in _ROW.iter_unpack(data)}


class NodeReporter:
    def __init__(self, objects: ObjectStore, cache: DiskCache, *, node_id: str | None,
                 gpus: Callable[[], list[dict] | None], interval: float = 5.0,
                 peer_url: str | None = None) -> None:
        """``gpus``: asked each report (the command line gives NVML's probe, or a fixed
        list from ``--gpus``); None means no GPUs. ``peer_url``: where this node's ``thaw
        serve`` answers (``--self``), for ``--peers store`` and placement."""
        self.objects, self.cache, self.interval = objects, cache, interval
        self.peer_url = peer_url
        self.node_id = node_id or socket.gethostname()
        self.gpus = gpus
        self.tables = Path(cache.root) / ".images"
        self.index = CacheIndex(cache)
        self._pending: dict[str, AnyManifest] = {}  # images loaded since the last report
        self._sizes: dict[str, dict[str, int]] = {}  # manifest id -> {chunk id: size}
        self._served: set[str] = set()  # loaded by this daemon: reported even at 0 bytes

    def add(self, mid: str, manifest: AnyManifest) -> None:
        """An image this node now serves (trio thread: only queues it; its table is built
        in the report's worker thread)."""
        if mid not in self._served:
            self._served.add(mid)
            if mid not in self._sizes:
                self._pending[mid] = manifest

    def _load_tables(self) -> None:
        pending, self._pending = self._pending, {}
        for mid, manifest in pending.items():
            table = chunk_table(manifest)
            self._sizes[mid] = read_table(table)
            _write_atomic(self.tables / mid, table)
        try:
            names = os.listdir(self.tables)
        except FileNotFoundError:
            return
        for mid in names:
            if len(mid) == 64 and mid not in self._sizes:
                self._sizes[mid] = read_table((self.tables / mid).read_bytes())

    def report(self) -> NodeReport:
        self._load_tables()
        present = self.index.refresh()
        cached = {}
        for mid, sizes in list(self._sizes.items()):
            cached[mid] = sum(size for id, size in sizes.items() if id in present)
            if not cached[mid] and mid not in self._served:  # nothing of it left: forget it
                del self._sizes[mid]
                (self.tables / mid).unlink(missing_ok=True)
        gpus = self.gpus() or []
        return build_report(self.node_id, gpus, self.cache.size, self.cache.max_bytes, cached,
                            peer_url=self.peer_url)

    def write_once(self) -> None:
        write_report(self.objects, self.report())

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                await trio.to_thread.run_sync(self.write_once)
            except (ThawError, OSError) as exc:
                log.warning("node report not written: %s", exc)
            await trio.sleep(self.interval)


def _write_atomic(path: Path, data: bytes) -> None:
    """Under a unique temporary name, then renamed: daemons sharing a cache may race."""
    tmp = temp_path(path.parent, path.name)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
