"""Reading images back: resolve a reference, load its manifest, stream its chunks.

``load_manifest`` verifies the blob and validates the manifest before returning it;
``load_dir_manifest`` opens it for a mount, a directory checked when first read.
``fetch_in_order`` fetches chunks through the ordered pipeline (``pipeline.in_order``), ahead
of the consumer but at most ``window`` chunks ahead: bounded memory, parallel requests.
Thread-safe as the store is; the generator itself belongs to one consumer thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from ..errors import BlobCorrupt, BlobNotFound, ManifestInvalid
from ..store.base import ObjectStore
from ..store.blobs import BlobStore
from ..store.codec import MAX_BLOB_SIZE
from ..store.tiers import BlobTier
from .dirmanifest import DirManifest, open_dir_manifest
from .manifest import FILE, Entry, Manifest, decode
from .pipeline import in_order
from .refs import Refs

T = TypeVar("T")


def load_manifest(blobs: BlobStore, id: str) -> Manifest:
    """Every entry of manifest ``id``, checked."""
    return _load(blobs, id, decode)


def load_dir_manifest(blobs: BlobStore, id: str) -> DirManifest:
    """Manifest ``id`` opened for lookups, a directory decoded and checked when first
    asked for (what a mount reads)."""
    dm = _load(blobs, id, open_dir_manifest)
    dm.label = f"manifest {id} in {blobs}"
    return dm


def _load(blobs: BlobStore, id: str, decoder: Callable[[bytes], T]) -> T:
    try:
        data = blobs.get(id, max_size=MAX_BLOB_SIZE)
    except BlobNotFound:
        raise BlobNotFound(f"manifest {id} not found in {blobs}") from None
    try:
        return decoder(data)
    except ManifestInvalid as exc:
        raise ManifestInvalid(f"manifest {id} in {blobs}: {exc}") from None


def open_image(objects: ObjectStore, ref: str) -> tuple[str, Manifest]:
    """The manifest id and manifest that ``ref`` (``NAME:TAG`` or an id) names."""
    mid = Refs(objects).resolve(ref)
    return mid, load_manifest(BlobStore(objects), mid)


def open_image_dirs(objects: ObjectStore, ref: str) -> tuple[str, DirManifest]:
    """``open_image`` for a mount: the manifest opened for lookups."""
    mid = Refs(objects).resolve(ref)
    return mid, load_dir_manifest(BlobStore(objects), mid)


def fetch_chunk(blobs: BlobTier, manifest: Manifest, index: int) -> bytes:
    """Chunk ``index`` of ``manifest`` through ``blobs`` (the store, or a node's tiers)."""
    ref = manifest.chunks[index]
    data = blobs.get(ref.id, max_size=ref.size)
    if len(data) != ref.size:
        raise BlobCorrupt(f"chunk {ref.id} in {blobs}: {len(data)} bytes, manifest says "
                          f"{ref.size}")
    return data


def fetch_in_order(blobs: BlobStore, manifest: Manifest, order: Iterable[int], *,
                   jobs: int = 8, window: int = 16) -> Iterator[tuple[int, bytes]]:
    """``(index, bytes)`` for each chunk index in ``order``, fetched ahead in parallel."""
    return in_order(order, lambda i: fetch_chunk(blobs, manifest, i), jobs=jobs,
                    window=window)


def chunk_order(entries: Iterable[Entry]) -> list[int]:
    """The chunk indexes in the order reading ``entries``' spans in turn meets them."""
    order: list[int] = []
    for e in entries:
        for s in e.spans:
            if not order or order[-1] != s.chunk:
                order.append(s.chunk)
    return order


def iter_file_bytes(entries: list[Entry], chunks: Iterator[tuple[int, bytes]]
                    ) -> Iterator[tuple[Entry, memoryview]]:
    """Pieces of each file's bytes, in order, given ``fetch_in_order(chunk_order(entries))``."""
    current, data = -1, b""
    for e in entries:
        if e.type != FILE:
            continue
        for s in e.spans:
            if s.chunk != current:
                current, data = next(chunks)
                if current != s.chunk:
                    raise RuntimeError("chunk order out of step with the spans")
            yield e, memoryview(data)[s.offset:s.offset + s.length]
