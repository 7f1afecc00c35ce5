"""Make a possibly compressed archive seekable: plain files are used in place, gzip, zstd
and xz are decompressed into a temporary file (random access to members needs it).

Truncated or corrupt streams raise SourceError naming the file. Single-threaded.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import tempfile
import zlib
from typing import BinaryIO

import zstandard

from .errors import SourceError

_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"\xfd7zXZ\x00": "xz"}
_BLOCK = 1 << 20


def sniff(f: BinaryIO) -> str:
    """'gzip', 'zstd', 'xz' or 'plain', from the first bytes; the position is kept."""
    pos = f.tell()
    head = f.read(6)
    f.seek(pos)
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    return "plain"


def _copy_zstd(src: BinaryIO, dst: BinaryIO, name: str) -> None:
    dctx = zstandard.ZstdDecompressor()
    dobj, pending = dctx.decompressobj(), b""
    while True:
        block = pending or src.read(_BLOCK)
        pending = b""
        if not block:
            break
        dst.write(dobj.decompress(block))
        if dobj.eof:  # another frame may follow
            pending, dobj = dobj.unused_data, dctx.decompressobj()
            if not pending:
                nxt = src.read(_BLOCK)
                if not nxt:
                    return
                pending = nxt
    if not dobj.eof:
        raise SourceError(f"{name}: zstd data is truncated; the file is incomplete")


def _copy_stream(src: BinaryIO, dst: BinaryIO, kind: str, name: str) -> None:
    try:
        if kind == "zstd":
            _copy_zstd(src, dst, name)
            return
        opener = gzip.GzipFile if kind == "gzip" else lzma.LZMAFile
        with opener(fileobj=src, mode="rb") as z:
            while block := z.read(_BLOCK):
                dst.write(block)
    except (EOFError, OSError, zlib.error, lzma.LZMAError, zstandard.ZstdError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # a real I/O error (full disk), not bad data
        raise SourceError(f"{name}: corrupt or truncated {kind} data ({exc})") from None


def seekable(f: BinaryIO, name: str, tmpdir: str | None = None) -> tuple[BinaryIO, str]:
    """A seekable, uncompressed view of ``f``, and the compression it had.

    A decompressed copy is an unlinked temporary file: it vanishes when closed.
    """
    kind = sniff(f)
    if kind == "plain":
        return f, kind
    out = tempfile.TemporaryFile(dir=tmpdir, prefix="thaw-")
    try:
        _copy_stream(f, out, kind, name)
        out.seek(0)
    except BaseException:
        out.close()
        raise
    return out, kind


class FileSlice(io.RawIOBase):
    """A read-only, seekable window ``[start, start + size)`` of a seekable file."""

    def __init__(self, f: BinaryIO, start: int, size: int) -> None:
        self._f, self._start, self._size, self._pos = f, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b) -> int:  # type: ignore[override]
        n = max(0, min(len(b), self._size - self._pos))
        if n == 0:
            return 0
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(memoryview(b)[:n])
        self._pos += got or 0
        return got or 0
