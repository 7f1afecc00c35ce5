"""Push a source tree: cut its data stream into chunks, upload the new ones, write the
manifest, then the tag.

Threading: the calling thread reads the stream, cuts and hashes (blake3 of a 1 MiB chunk is
a millisecond); a pool of ``jobs`` threads asks the store whether each chunk exists and, if
not, compresses and uploads it (``blobstore.image.writer.ImageWriter``, shared with snapshots).
zstd and the store release the GIL, so those overlap. At most ``2 * jobs`` chunks are in
flight, which bounds memory. A chunk seen earlier in the same push
is not sent twice. The tag is written last, after every chunk and the manifest are stored,
so an interrupted push never leaves a tag that names missing blobs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass

from blobstore.image.manifest import (
    DIR,
    FILE,
    ChunkRef,
    Entry,
    Header,
    Manifest,
    stream_spans,
)
from blobstore.image.refs import Ref
from blobstore.image.writer import ImageWriter, KnownBlobs
from blobstore.lifecycle.fence import GcFence
from blobstore.lifecycle.leases import Lease, LeaseKeeper
from blobstore.store.base import ObjectStore
from blobstore.store.blobs import BlobStore
from blobstore.store.digest import blob_id

from .chunker import DEFAULT, ChunkerParams, cut
from .stream import DataStream
from .tree import Node, SourceTree


@dataclass
class PushResult:
    manifest_id: str
    files: int
    bytes: int
    chunks: int
    new_chunks: int
    uploaded_bytes: int
    seconds: float

    def as_dict(self) -> dict:
        """``thaw push --json``: the id is ``manifest`` there, as the README documents."""
        doc = asdict(self)
        return {"manifest": doc.pop("manifest_id"), **doc}


def _chunk_stream(tree: SourceTree, files: list[tuple[str, Node]], writer: ImageWriter,
                  params: ChunkerParams, on_bytes: Callable[[int], None] | None
                  ) -> list[tuple[str, int, Future]]:
    chunks = []
    stream = DataStream(files, on_bytes)
    try:
        for view in cut(stream, params):
            data = bytes(view)
            id = blob_id(data)
            chunks.append((id, len(data), writer.submit(id, data)))
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
    # A lease before anything is decided from the store's contents: `thaw gc` keeps what
    # this push relies on, and the blobs a collector has condemned are uploaded again.
    keeper = LeaseKeeper(Lease(objects, "push")).start()
    try:
        fence = GcFence(objects)
        # Listing beyond a few times the image's chunk count costs more than asking per chunk.
        known = KnownBlobs(blobs, limit=4 * (pos // params.min_size + 1),
                           condemned=fence.condemned)
        with ImageWriter(blobs, jobs=jobs, known=known, lease=keeper.lease,
                         fence=fence) as writer:
            table = writer.table(_chunk_stream(tree, files, writer, params, on_bytes))
        manifest = build_manifest(tree, table, offsets, params)
        mid = writer.finish(manifest, ref)
    finally:
        keeper.stop()  # the tag, written last, holds the image from now on
    return PushResult(mid, manifest.file_count(), pos, len(table), writer.new_chunks,
                      writer.uploaded_bytes, round(time.monotonic() - started, 3))
