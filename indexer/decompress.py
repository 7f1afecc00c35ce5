"""Make a possibly compressed archive seekable: plain files are used in place, gzip, zstd
and xz are decompressed into a temporary file (random access to members needs it).

Decompression streams through a reader that yields at most ``_BLOCK`` bytes a step, so
memory stays bounded whatever the ratio (a 364 KB zstd file may hold 10 GiB of zeros).
Runs of zeros are written as holes, so a bomb of zeros costs no temporary space either; the
temporary file lives in the caller's ``tmpdir`` (``$TMPDIR`` by default), and running out
of room there is a ``TempSpaceError`` that says so. Truncated or corrupt streams raise
SourceError naming the file. Single-threaded.
"""

from __future__ import annotations

import errno
import gzip
import io
import lzma
import os
import struct
import tempfile
import zlib
from typing import BinaryIO

import zstandard

from blobstore.errors import ThawError

from .errors import SourceError

_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"\xfd7zXZ\x00": "xz"}
_BLOCK = 1 << 20
_ZSTD_MAGIC = 0xFD2FB528


class TempSpaceError(ThawError):
    """No room left for a decompressed copy in the temporary directory."""

    exit_code = 3


def sniff(f: BinaryIO) -> str:
    """'gzip', 'zstd', 'xz' or 'plain', from the first bytes; the position is kept."""
    pos = f.tell()
    head = f.read(6)
    f.seek(pos)
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    return "plain"


def zstd_is_complete(f: BinaryIO) -> bool:
    """Whether every zstd frame in ``f`` (from its position) is whole, by walking frame and
    block headers (RFC 8878) without decompressing: python-zstandard's stream reader ends
    quietly on a truncated frame."""
    while head := f.read(4):
        if len(head) < 4:
            return False
        magic = struct.unpack("<I", head)[0]
        if magic & 0xFFFFFFF0 == 0x184D2A50:  # a skippable frame
            size = f.read(4)
            if len(size) < 4 or not _skip(f, struct.unpack("<I", size)[0]):
                return False
            continue
        if magic != _ZSTD_MAGIC or not _walk_frame(f):
            return False
    return True


def _skip(f: BinaryIO, n: int) -> bool:
    """Seek ``n`` bytes forward; False if that passes the end."""
    pos = f.tell()
    end = f.seek(0, os.SEEK_END)
    if pos + n > end:
        return False
    f.seek(pos + n)
    return True


def _walk_frame(f: BinaryIO) -> bool:
    fhd = f.read(1)
    if not fhd:
        return False
    d = fhd[0]
    single = bool(d & 0x20)
    fcs = (1 if single else 0, 2, 4, 8)[d >> 6]
    header = (0 if single else 1) + (0, 1, 2, 4)[d & 3] + fcs
    if not _skip(f, header):
        return False
    while True:
        b = f.read(3)
        if len(b) < 3:
            return False
        bh = int.from_bytes(b, "little")
        kind, size = (bh >> 1) & 3, bh >> 3
        if kind == 3 or not _skip(f, 1 if kind == 1 else size):
            return False
        if bh & 1:  # the last block
            return _skip(f, 4 if d & 4 else 0)


def _reader(src: BinaryIO, kind: str):
    if kind == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True,
                                                                 closefd=False)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=src, mode="rb")
    return lzma.LZMAFile(src, mode="rb")


def _copy_sparse(reader, dst: BinaryIO) -> None:
    """Copy ``reader`` to ``dst`` a block at a time, leaving holes where blocks are zeros."""
    while block := reader.read(_BLOCK):
        if block.count(0) == len(block):
            dst.seek(len(block), os.SEEK_CUR)
        else:
            dst.write(block)
    dst.truncate()  # a trailing hole still counts in the size


def _copy_stream(src: BinaryIO, dst: BinaryIO, kind: str, name: str) -> None:
    start = src.tell()
    try:
        with _reader(src, kind) as reader:
            _copy_sparse(reader, dst)
    except (EOFError, OSError, zlib.error, lzma.LZMAError, zstandard.ZstdError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # a real I/O error (full disk), not bad data
        raise SourceError(f"{name}: corrupt or truncated {kind} data ({exc})") from None
    if kind == "zstd":
        src.seek(start)
        if not zstd_is_complete(src):
            raise SourceError(f"{name}: zstd data is truncated; the file is incomplete")


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
    except OSError as exc:
        out.close()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            where = tmpdir or tempfile.gettempdir()
            raise TempSpaceError(
                f"{name}: no space left in {where} to unpack its {kind} data; free some, or "
                "point TMPDIR at a larger disk") from None
        raise SourceError(f"{name}: cannot read ({exc.strerror or exc})") from None
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
