"""Writing an image of kind ``snapshot``: files cut into fixed-size chunks, uploaded in
parallel when the store lacks them, a manifest, then the tag.

Each storage is its own file, cut from its first byte, so a storage that did not change
between two snapshots (most tensors of a fine-tune) gives the same chunks and is not
uploaded again, and a restore knows where every piece goes without a content-defined cut.
Threading: ``add_file`` hashes on the caller's thread and hands compression and upload to a
pool of ``jobs`` threads; ``finish`` waits for them, then writes the manifest and the tag.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

from blobstore.base import ObjectStore
from blobstore.blobs import BlobStore
from blobstore.digest import blob_id
from blobstore.manifest import DIR, FILE, ChunkRef, Entry, Header, Manifest, Span, encode
from blobstore.refs import Ref, Refs

CHUNK = 4 << 20


class ImageWriter:
    def __init__(self, objects: ObjectStore, *, jobs: int = 8, chunk_size: int = CHUNK) -> None:
        self.objects, self.blobs = objects, BlobStore(objects)
        self.chunk_size = chunk_size
        self.pool = ThreadPoolExecutor(jobs, thread_name_prefix="thaw-snapshot")
        self.slots = threading.BoundedSemaphore(2 * jobs)
        self.chunks: list[tuple[str, int, Future]] = []
        self.files: dict[str, tuple[int, tuple[Span, ...]]] = {}
        self.uploaded = 0
        self._lock = threading.Lock()

    def _store(self, id: str, data: bytes) -> int:
        size, uploaded = self.blobs.ensure(id, data)
        with self._lock:
            self.uploaded += uploaded
        return size

    def add_file(self, path: str, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        spans = []
        for start in range(0, len(view), self.chunk_size):
            piece = bytes(view[start:start + self.chunk_size])
            id = blob_id(piece)
            self.slots.acquire()
            fut = self.pool.submit(self._store, id, piece)
            fut.add_done_callback(lambda _: self.slots.release())
            spans.append(Span(len(self.chunks), 0, len(piece)))
            self.chunks.append((id, len(piece), fut))
        self.files[path] = (len(view), tuple(spans))

    def finish(self, ref: Ref | None, *, source: str) -> str:
        """Wait for the uploads, store the manifest, then point ``ref`` at it."""
        try:
            table = tuple(ChunkRef(id, size, fut.result()) for id, size, fut in self.chunks)
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
        dirs = sorted({p.rsplit("/", 1)[0] for p in self.files if "/" in p})
        entries = [Entry("", DIR, 0o755, 0, 0, 0)] + [Entry(d, DIR, 0o755, 0, 0, 0) for d in dirs]
        entries += [Entry(p, FILE, 0o644, 0, 0, 0, size, spans=spans)
                    for p, (size, spans) in self.files.items()]
        entries.sort(key=lambda e: tuple(e.path.split("/")) if e.path else ())
        header = Header("snapshot", source, {"algorithm": "fixed", "avg": self.chunk_size,
                                             "min": self.chunk_size, "max": self.chunk_size}, 0)
        raw = encode(Manifest(header, table, tuple(entries)))
        mid = blob_id(raw)
        self.blobs.ensure(mid, raw)
        if ref is not None:
            Refs(self.objects).set(ref, mid)
        return mid
