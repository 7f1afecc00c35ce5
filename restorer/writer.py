"""Writing an image of kind ``snapshot``: files cut into fixed-size chunks and fed to
``blobstore.image.writer.ImageWriter`` (parallel, bounded uploads of what the store lacks; the
manifest; the tag last).

Each storage is its own file, cut from its first byte, so a storage that did not change
between two snapshots (most tensors of a fine-tune) gives the same chunks and is not
uploaded again, and a restore knows where every piece goes without a content-defined cut.
Threading: ``add_file`` hashes on the caller's thread; the image writer's pool compresses
and uploads; ``finish`` waits for them, then writes the manifest and the tag.
"""

from __future__ import annotations

from concurrent.futures import Future

from blobstore.image.manifest import DIR, FILE, Entry, Header, Manifest, Span
from blobstore.image.refs import Ref
from blobstore.image.writer import ImageWriter
from blobstore.lifecycle.fence import GcFence
from blobstore.lifecycle.leases import Lease, LeaseKeeper
from blobstore.store.base import ObjectStore
from blobstore.store.blobs import BlobStore
from blobstore.store.digest import blob_id

CHUNK = 4 << 20


class SnapshotWriter:
    def __init__(self, objects: ObjectStore, *, jobs: int = 8, chunk_size: int = CHUNK) -> None:
        self.chunk_size = chunk_size
        # As a push: leased before it looks at the store; condemned blobs uploaded again.
        self.keeper = LeaseKeeper(Lease(objects, "snapshot")).start()
        self.writer = ImageWriter(BlobStore(objects), jobs=jobs, thread_name="thaw-snapshot",
                                  lease=self.keeper.lease, fence=GcFence(objects))
        self.chunks: list[tuple[str, int, Future]] = []
        self.files: dict[str, tuple[int, tuple[Span, ...]]] = {}

    def add_file(self, path: str, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        spans = []
        for start in range(0, len(view), self.chunk_size):
            piece = bytes(view[start:start + self.chunk_size])
            id = blob_id(piece)
            spans.append(Span(len(self.chunks), 0, len(piece)))
            self.chunks.append((id, len(piece), self.writer.submit(id, piece)))
        self.files[path] = (len(view), tuple(spans))

    def finish(self, ref: Ref | None, *, source: str) -> str:
        """Wait for the uploads, store the manifest, then point ``ref`` at it."""
        try:
            return self._finish(ref, source)
        finally:
            self.keeper.stop()  # the tag, written last, holds the snapshot from now on

    def _finish(self, ref: Ref | None, source: str) -> str:
        with self.writer:
            table = tuple(self.writer.table(self.chunks))
        dirs = sorted({p.rsplit("/", 1)[0] for p in self.files if "/" in p})
        entries = [Entry("", DIR, 0o755, 0, 0, 0)] + [Entry(d, DIR, 0o755, 0, 0, 0) for d in dirs]
        entries += [Entry(p, FILE, 0o644, 0, 0, 0, size, spans=spans)
                    for p, (size, spans) in self.files.items()]
        entries.sort(key=lambda e: tuple(e.path.split("/")) if e.path else ())
        header = Header("snapshot", source, {"algorithm": "fixed", "avg": self.chunk_size,
                                             "min": self.chunk_size, "max": self.chunk_size}, 0)
        return self.writer.finish(Manifest(header, table, tuple(entries)), ref)
