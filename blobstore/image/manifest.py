"""The manifest, the index of one image: itself a blob, so an image is named by its id.

The one entry point to encode and decode it, in either format, and the names of its model
(``entries``: the types, their checks and format 1). ``encode()`` writes format 2
(``dirmanifest``: a section per directory, which a mount reads a directory at a time) and is
canonical: the same tree gives the same bytes and so the same id. ``decode()`` reads both
formats and treats its input as hostile: the format version, then every invariant in
``validate()``, before anything uses the manifest. Pure; thread-safe.
"""

from __future__ import annotations

from ..store.digest import blob_id
from .dirmanifest import decode_v2, encode_v2
from .entries import (
    BLOCK,
    CHAR,
    DIR,
    FIFO,
    FILE,
    FORMAT_VERSION,
    KINDS,
    MAX_CHUNK_SIZE,
    MAX_ENTRIES,
    MAX_MANIFEST_SIZE,
    MAX_XATTR_VALUE,
    READS,
    SOCKET,
    SYMLINK,
    TYPES,
    ChunkRef,
    Entry,
    FileSpans,
    Header,
    Manifest,
    Span,
    _decode_v1,
    _no_cyclic_gc,
    encode_v1,
    normalize_lookup,
    path_key,
    stream_spans,
    unpack,
    validate,
)

__all__ = [
    "BLOCK", "CHAR", "ChunkRef", "DIR", "Entry", "FIFO", "FILE", "FORMAT_VERSION",
    "FileSpans", "Header", "KINDS", "MAX_CHUNK_SIZE", "MAX_ENTRIES", "MAX_MANIFEST_SIZE",
    "MAX_XATTR_VALUE", "Manifest", "READS", "SOCKET", "SYMLINK", "Span", "TYPES", "decode",
    "decode_doc", "encode", "encode_v1", "manifest_id", "normalize_lookup", "path_key",
    "stream_spans", "unpack", "validate",
]


def encode(m: Manifest) -> bytes:
    """Canonical bytes of ``m`` in the format this thaw writes (2, a section per directory;
    ``dirmanifest``), validated first, so we never write a bad one."""
    return encode_v2(m)


def manifest_id(m: Manifest) -> str:
    return blob_id(encode(m))


# -- decoding ------------------------------------------------------------------------------


def decode(data: bytes) -> Manifest:
    """Parse and validate manifest bytes (already decompressed), of either format, into
    every entry. Raises ManifestInvalid."""
    return decode_doc(unpack(data))


def decode_doc(doc: dict) -> Manifest:
    """``decode`` of a top level that ``unpack`` returned."""
    with _no_cyclic_gc():
        if doc["version"] == 1:
            return _decode_v1(doc)
        return decode_v2(doc)
