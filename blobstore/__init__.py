"""Blob ids, encoding, stores, tiers and the manifest format. Imports nothing of ours."""

from .errors import (
    BlobCorrupt,
    BlobNotFound,
    ManifestInvalid,
    NotFound,
    RefNotFound,
    StoreConfigError,
    StoreError,
    StoreUnavailable,
    ThawError,
)
from .store.blobs import BlobStore
from .store.url import open_store

__all__ = [
    "BlobCorrupt", "BlobNotFound", "BlobStore", "ManifestInvalid", "NotFound", "RefNotFound",
    "StoreConfigError", "StoreError", "StoreUnavailable", "ThawError", "open_store",
]
