"""Blobs on top of an object store: ids, the stored encoding, and verification on every read.

``BlobStore`` keeps blobs at ``blobs/ab/<id>``. Everything it returns has been decoded and
re-hashed: a store can be wrong, never believed. Thread-safe as its object store is.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import BlobNotFound, NotFound
from .base import ObjectStore
from .codec import DEFAULT_LEVEL, encode_blob
from .digest import blob_id, check_blob_id, is_blob_id
from .tiers import BlobTier

PREFIX = "blobs/"


def blob_key(id: str) -> str:
    return f"{PREFIX}{id[:2]}/{check_blob_id(id)}"


class BlobStore(BlobTier):
    """Content-addressed blobs in an object store: the backend tier of every stack."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    def get_stored(self, id: str) -> bytes:
        """The blob's stored (encoded) bytes, unverified."""
        try:
            return self.objects.get(blob_key(id))
        except NotFound:
            raise BlobNotFound(f"blob {id} not found in {self.objects}") from None

    def put(self, data: bytes | memoryview, level: int = DEFAULT_LEVEL) -> tuple[str, int]:
        """Store ``data``; returns its id and stored size. Idempotent."""
        id = blob_id(data)
        stored = encode_blob(data, level)
        self.objects.put(blob_key(id), stored)
        return id, len(stored)

    def put_stored(self, id: str, stored: bytes) -> None:
        self.objects.put(blob_key(id), stored)

    def put_new(self, id: str, data: bytes | memoryview) -> int:
        """Encode and store ``data``, whose id the caller has computed; the stored size."""
        stored = encode_blob(data)
        self.objects.put(blob_key(id), stored)
        return len(stored)

    def ensure(self, id: str, data: bytes | memoryview) -> tuple[int, int]:
        """Store ``data`` unless the store has it: (stored size, bytes uploaded)."""
        try:
            return self.stored_size(id), 0
        except BlobNotFound:
            size = self.put_new(id, data)
            return size, size

    def has(self, id: str) -> bool:
        return self.objects.has(blob_key(id))

    def stored_size(self, id: str) -> int:
        """The blob's stored size; BlobNotFound if absent."""
        try:
            return self.objects.size(blob_key(id))
        except NotFound:
            raise BlobNotFound(f"blob {id} not found in {self.objects}") from None

    def delete(self, id: str) -> None:
        self.objects.delete(blob_key(id))

    def iter_ids(self) -> Iterator[str]:
        return (id for id, _ in self.iter_stored_sizes())

    def iter_stored_sizes(self) -> Iterator[tuple[str, int]]:
        """``(id, stored size)`` of every blob, from a listing."""
        for key, size in self.objects.list_sizes(PREFIX):
            name = key.rsplit("/", 1)[-1]
            if is_blob_id(name) and key == blob_key(name):
                yield name, size

    def __str__(self) -> str:
        return str(self.objects)
