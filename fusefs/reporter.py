"""The daemon's node report: every few seconds, what this node offers placement.

Runs as a trio task; building the report (listing the disk cache, loading manifests,
asking NVML) and writing it go to a worker thread. Each manifest's chunk sizes are kept
once loaded (manifests never change), so a report costs a cache listing and set lookups.
"""

from __future__ import annotations

import logging
import socket

import trio

from blobstore.base import ObjectStore
from blobstore.blobs import BlobStore
from blobstore.diskcache import DiskCache
from blobstore.errors import ThawError
from blobstore.images import load_manifest
from blobstore.nodereport import build_report, nvml_gpus, write_report
from blobstore.refs import Refs

log = logging.getLogger(__name__)


class NodeReporter:
    def __init__(self, objects: ObjectStore, cache: DiskCache, *, node_id: str | None,
                 gpus: list[dict] | None, interval: float = 5.0) -> None:
        self.objects, self.cache, self.interval = objects, cache, interval
        self.node_id = node_id or socket.gethostname()
        self.gpus = gpus
        self._chunks: dict[str, dict[str, int]] = {}  # manifest id -> {chunk id: size}

    def _chunk_sizes(self, mid: str) -> dict[str, int]:
        if mid not in self._chunks:
            m = load_manifest(BlobStore(self.objects), mid)
            self._chunks[mid] = {c.id: c.size for c in m.chunks}
        return self._chunks[mid]

    def report(self) -> dict:
        present = self.cache.ids()
        cached = {}
        for _, mid in Refs(self.objects).list():
            sizes = self._chunk_sizes(mid)
            cached[mid] = sum(size for id, size in sizes.items() if id in present)
        gpus = self.gpus if self.gpus is not None else (nvml_gpus() or [])
        return build_report(self.node_id, gpus, self.cache.size, self.cache.max_bytes, cached)

    def write_once(self) -> None:
        write_report(self.objects, self.report())

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                await trio.to_thread.run_sync(self.write_once)
            except ThawError as exc:
                log.warning("node report not written: %s", exc)
            await trio.sleep(self.interval)
