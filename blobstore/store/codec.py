"""Stored-blob encoding: one type byte, then the payload (raw, or one zstd frame).

Incompressible data is stored raw, so it costs nothing to decode. Decoding is bounded: a
malicious frame cannot expand past ``max_size``. Pure functions; thread-safe (zstd
compressor objects are per thread, and zstd releases the GIL while it works).
"""

from __future__ import annotations

import threading

import zstandard

from ..errors import BlobCorrupt
from .digest import blob_id

RAW = 0x00
ZSTD = 0x01
DEFAULT_LEVEL = 3
# A chunk whose zstd frame saves less than this fraction is stored raw.
_MIN_SAVING = 0.03
MAX_BLOB_SIZE = 1 << 30

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cache[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


def encode_blob(data: bytes | memoryview, level: int = DEFAULT_LEVEL) -> bytes:
    """The stored form of ``data``: zstd when it saves space, raw otherwise."""
    frame = _compressor(level).compress(data)
    if len(frame) <= len(data) * (1 - _MIN_SAVING):
        return bytes((ZSTD,)) + frame
    return bytes((RAW,)) + bytes(data)


def decode_blob(stored: bytes, *, max_size: int = MAX_BLOB_SIZE, what: str = "blob") -> bytes:
    """The payload of a stored blob. Raises BlobCorrupt on anything malformed."""
    if not stored:
        raise BlobCorrupt(f"{what}: empty stored blob (no type byte)")
    kind, payload = stored[0], memoryview(stored)[1:]
    if kind == RAW:
        if len(payload) > max_size:
            raise BlobCorrupt(f"{what}: {len(payload)} bytes, more than the limit {max_size}")
        return bytes(payload)
    if kind != ZSTD:
        raise BlobCorrupt(f"{what}: unknown blob type byte 0x{kind:02x}")
    try:
        size = zstandard.get_frame_parameters(payload).content_size
        if size in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR):
            raise BlobCorrupt(f"{what}: zstd frame without a content size")
        if size > max_size:
            raise BlobCorrupt(f"{what}: frame claims {size} bytes, more than the limit {max_size}")
        return _decompressor().decompress(payload, max_output_size=max_size)
    except zstandard.ZstdError as exc:
        raise BlobCorrupt(f"{what}: bad zstd frame ({exc})") from None


def read_full(reader, view: memoryview) -> int:
    """``readinto`` until ``view`` is full or the reader ends; the bytes read."""
    got = 0
    while got < len(view):
        n = reader.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def verify_into(dest: memoryview, expected_id: str, what: str) -> None:
    if blob_id(dest) != expected_id:
        raise BlobCorrupt(f"{what}: content does not hash to its id")


def read_into(f, dest: memoryview, expected_id: str, *, what: str = "blob") -> None:
    """Decode the stored blob readable from ``f`` straight into ``dest`` (which must be its
    exact size) and verify it there: no intermediate copy of the payload."""
    kind = f.read(1)
    try:
        if kind == bytes((RAW,)):
            got = f.readinto(dest)
            extra = f.read(1)
        elif kind == bytes((ZSTD,)):
            with _decompressor().stream_reader(f, read_across_frames=False) as r:
                got = read_full(r, dest)
                extra = r.read(1)  # past the frame's content: too much data
        else:
            raise BlobCorrupt(f"{what}: unknown or missing blob type byte")
    except zstandard.ZstdError as exc:
        raise BlobCorrupt(f"{what}: bad zstd frame ({exc})") from None
    if got != len(dest) or extra:
        raise BlobCorrupt(f"{what}: size differs from the {len(dest)} bytes expected")
    verify_into(dest, expected_id, what)


def decode_and_verify(stored: bytes, expected_id: str, *, max_size: int = MAX_BLOB_SIZE,
                      where: str = "") -> bytes:
    """Decode a stored blob and check it hashes to ``expected_id``."""
    what = f"blob {expected_id}" + (f" in {where}" if where else "")
    data = decode_blob(stored, max_size=max_size, what=what)
    if blob_id(data) != expected_id:
        raise BlobCorrupt(f"{what}: content does not hash to its id")
    return data
