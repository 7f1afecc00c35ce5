"""Push a source tree: cut its data stream into chunks, upload the new ones, write the
manifest, then the tag.

Threading: the calling thread reads the stream, cuts and hashes (blake3 of a 1 MiB chunk is
a millisecond); a pool of ``jobs`` threads asks the store whether each chunk exists and, if
not, compresses and uploads it. zstd and the store release the GIL, so those overlap. At most
``2 * jobs`` chunks are in flight, which bounds memory. A chunk seen earlier in the same push
is not sent twice. The tag is written last, after every chunk and the manifest are stored,
so an interrupted push never leaves a tag that names missing blobs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

from blobstore.base import ObjectStore
from blobstore.blobs import BlobStore
from blobstore.digest import blob_id
from blobstore.errors import BlobNotFound, StoreUnavailable
from blobstore.manifest import (
    DIR,
    FILE,
    ChunkRef,
    Entry,
    Header,
    Manifest,
    encode,
    stream_spans,
)
from blobstore.refs import Ref, Refs

from .chunker import DEFAULT, ChunkerParams, cut
from .stream import DataStream
from .tree import Node, SourceTree


@dataclass
class PushResult:
    manifest: str
    files: int
    bytes: int
    chunks: int
    new_chunks: int
    uploaded_bytes: int
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


class _KnownBlobs:
    """What the store already holds, learnt from one listing in a background thread.

    A listing returns a thousand keys per S3 request where asking per chunk costs a request
    each, so when the store is small next to the image, listing is far cheaper
    (bench/push.py). The listing gives up past ``limit`` blobs, and then each chunk is
    looked up on its own: the cost is never much worse than per-chunk lookups.
    """

    def __init__(self, blobs: BlobStore, limit: int) -> None:
        self.sizes: dict[str, int] = {}
        self.complete = False
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._list, args=(blobs, limit), daemon=True,
                                        name="thaw-list")
        self._thread.start()

    def _list(self, blobs: BlobStore, limit: int) -> None:
        try:
            for id, size in blobs.iter_stored_sizes():
                if len(self.sizes) >= limit:
                    return
                self.sizes[id] = size
            self.complete = True
        except BaseException as exc:  # noqa: BLE001 - the uploader falls back to lookups
            self._error = exc
        finally:
            self._done.set()

    def stored_size(self, blobs: BlobStore, id: str) -> int | None:
        """The stored size of ``id`` if the store has it, else None."""
        self._done.wait()
        if self.complete:
            return self.sizes.get(id)
        if isinstance(self._error, StoreUnavailable):
            raise self._error  # the listing already waited out the store's time budget
        try:
            return blobs.stored_size(id)
        except BlobNotFound:
            return None


class _Uploader:
    """Uploads chunks that the store lacks, from a bounded pool of threads."""

    def __init__(self, blobs: BlobStore, jobs: int, known: _KnownBlobs) -> None:
        self.blobs = blobs
        self.known = known
        self.pool = ThreadPoolExecutor(jobs, thread_name_prefix="thaw-upload")
        self.slots = threading.BoundedSemaphore(2 * jobs)
        self.by_id: dict[str, Future] = {}
        self.new_chunks = 0
        self.uploaded_bytes = 0
        self._lock = threading.Lock()

    def submit(self, id: str, data: bytes) -> Future:
        if id in self.by_id:
            return self.by_id[id]
        self.slots.acquire()
        fut = self.pool.submit(self._store, id, data)
        fut.add_done_callback(lambda _: self.slots.release())
        self.by_id[id] = fut
        return fut

    def _store(self, id: str, data: bytes) -> int:
        size = self.known.stored_size(self.blobs, id)
        if size is not None:
            return size
        size = self.blobs.put_new(id, data)
        with self._lock:
            self.new_chunks += 1
            self.uploaded_bytes += size
        return size

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _chunk_stream(tree: SourceTree, files: list[tuple[str, Node]], uploader: _Uploader,
                  params: ChunkerParams, on_bytes: Callable[[int], None] | None
                  ) -> list[tuple[str, int, Future]]:
    chunks = []
    stream = DataStream(files, on_bytes)
    try:
        for view in cut(stream, params):
            data = bytes(view)
            id = blob_id(data)
            chunks.append((id, len(data), uploader.submit(id, data)))
            failed = next((f for _, _, f in chunks[-8:] if f.done() and f.exception()), None)
            if failed is not None:
                failed.result()  # a store error: stop reading at once
    finally:
        stream.close()
    return chunks


def _link_groups(tree: SourceTree, paths: list[str]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for p in paths:
        node = tree.nodes[p]
        if node.type != DIR:
            counts[id(node)] = counts.get(id(node), 0) + 1
    groups: dict[int, int] = {}
    for p in paths:
        key = id(tree.nodes[p])
        if counts.get(key, 0) > 1 and key not in groups:
            groups[key] = len(groups) + 1
    return groups


def build_manifest(tree: SourceTree, chunks: list[ChunkRef], offsets: dict[int, int],
                   params: ChunkerParams) -> Manifest:
    """The manifest of ``tree`` given the chunk table and each data node's stream offset."""
    starts, sizes, pos = [], [], 0
    for c in chunks:
        starts.append(pos)
        sizes.append(c.size)
        pos += c.size
    paths = tree.sorted_paths()
    groups = _link_groups(tree, paths)
    entries = []
    for path in paths:
        n = tree.nodes[path]
        spans = (stream_spans(offsets[id(n)], n.size, starts, sizes)
                 if n.type == FILE and n.size else ())
        entries.append(Entry(path, n.type, n.mode & 0o7777, n.uid, n.gid, n.mtime_ns, n.size,
                             n.target, n.rdev, tuple(sorted(n.xattrs.items())),
                             groups.get(id(n), 0), spans))
    header = Header(tree.kind, tree.source, params.header(), tree.created_ns)
    return Manifest(header, tuple(chunks), tuple(entries))


def push_tree(tree: SourceTree, objects: ObjectStore, ref: Ref | None = None, *,
              params: ChunkerParams = DEFAULT, jobs: int = 8,
              on_bytes: Callable[[int], None] | None = None,
              started: float | None = None) -> PushResult:
    """Store ``tree`` in ``objects`` and point ``ref`` at it; returns what was done.

    ``started``: the ``time.monotonic()`` the push began at, when the caller did work before
    (opening and unpacking the source), so ``seconds`` covers all of it."""
    started = time.monotonic() if started is None else started
    blobs = BlobStore(objects)
    files = list(tree.data_nodes())
    offsets, pos = {}, 0
    for _, node in files:
        offsets[id(node)] = pos
        pos += node.size
    # Listing beyond a few times the image's chunk count costs more than asking per chunk.
    known = _KnownBlobs(blobs, limit=4 * (pos // params.min_size + 1))
    uploader = _Uploader(blobs, jobs, known)
    try:
        cut_chunks = _chunk_stream(tree, files, uploader, params, on_bytes)
        table = [ChunkRef(cid, size, fut.result()) for cid, size, fut in cut_chunks]
    finally:
        uploader.close()
    manifest = build_manifest(tree, table, offsets, params)
    raw = encode(manifest)
    mid = blob_id(raw)
    uploaded = uploader.uploaded_bytes + blobs.ensure(mid, raw)[1]
    if ref is not None:
        Refs(objects).set(ref, mid)
    return PushResult(mid, manifest.file_count(), pos, len(table), uploader.new_chunks,
                      uploaded, round(time.monotonic() - started, 3))
