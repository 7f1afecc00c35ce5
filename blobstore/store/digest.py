"""Blob ids: blake3 of the uncompressed bytes, as 64 lowercase hex digits.

Pure functions; thread-safe. blake3 releases the GIL for large inputs, so hashing in worker
threads scales across cores.
"""

from __future__ import annotations

import re

import blake3

ID_LENGTH = 64
_ID_RE = re.compile(r"[0-9a-f]{64}")
# Above this size blake3's own threads pay for themselves.
_THREADED_HASH_BYTES = 4 << 20


def blob_id(data: bytes | bytearray | memoryview) -> str:
    """The id of ``data``."""
    if len(data) >= _THREADED_HASH_BYTES:
        return blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest()
    return blake3.blake3(data).hexdigest()


def is_blob_id(text: object) -> bool:
    """Whether ``text`` is a well-formed blob id."""
    return isinstance(text, str) and _ID_RE.fullmatch(text) is not None


def check_blob_id(text: str) -> str:
    """Return ``text`` if it is a blob id, else raise ValueError naming it."""
    if not is_blob_id(text):
        raise ValueError(f"not a blob id (64 lowercase hex digits): {text!r}")
    return text
