"""Tar archives (plain, gzip, zstd, xz) as source trees, and tar layers applied onto one.

Every member is checked before it is used: its path (no ``..``, not absolute), its type,
its size against the archive (a truncated archive is refused, not read short), duplicates,
links that escape. Member data is read later, through ``TarData``, from the same seekable
file: tarfile objects are not thread-safe, so the data stream reads one member at a time.
Extended attributes come from PAX ``SCHILY.xattr.*`` (GNU tar, podman) and
``LIBARCHIVE.xattr.*`` records; mtimes from the PAX ``mtime`` record to the nanosecond.
"""

from __future__ import annotations

import base64
import os
import tarfile
from decimal import Decimal, InvalidOperation
from typing import BinaryIO
from urllib.parse import unquote_to_bytes

from blobstore.image.manifest import BLOCK, CHAR, DIR, FIFO, FILE, SYMLINK

from .errors import SourceError
from .tree import Node, TreeBuilder, normalize

MAX_MEMBER_SIZE = 1 << 40  # 1 TiB: anything larger is a corrupt or hostile header
_TYPES = {tarfile.DIRTYPE: DIR, tarfile.SYMTYPE: SYMLINK, tarfile.CHRTYPE: CHAR,
          tarfile.BLKTYPE: BLOCK, tarfile.FIFOTYPE: FIFO}


class TarData:
    """The bytes of one regular member."""

    __slots__ = ("tf", "member")

    def __init__(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.tf, self.member = tf, member

    def open(self) -> BinaryIO:
        f = self.tf.extractfile(self.member)
        assert f is not None
        return f  # type: ignore[return-value]


def open_tarfile(f: BinaryIO, name: str) -> tuple[tarfile.TarFile, list[tarfile.TarInfo]]:
    """Open an uncompressed, seekable tar and read all its headers."""
    try:
        tf = tarfile.open(fileobj=f, mode="r:", errorlevel=2)
        return tf, tf.getmembers()
    except (tarfile.TarError, EOFError, UnicodeError, OSError) as exc:
        # OSError: a header whose size points past any real file makes tarfile seek there
        raise SourceError(f"{name}: not a readable tar archive ({exc})") from None


def is_tar(f: BinaryIO) -> bool:
    pos = f.tell()
    try:
        head = f.read(tarfile.BLOCKSIZE)
        if len(head) < tarfile.BLOCKSIZE:
            return False
        tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
        return True
    except tarfile.HeaderError:
        return False
    finally:
        f.seek(pos)


def _mtime_ns(m: tarfile.TarInfo) -> int:
    text = m.pax_headers.get("mtime")
    try:
        if text is not None:
            return int(Decimal(text) * 1_000_000_000)
    except InvalidOperation:
        pass
    return int(m.mtime) * 1_000_000_000


def _xattrs(m: tarfile.TarInfo) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for key, value in m.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            out[key[13:].encode("utf-8", "surrogateescape")] = value.encode(
                "utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            name = unquote_to_bytes(key[17:])
            out[name] = base64.b64decode(value + "=" * (-len(value) % 4))
    return out


def _node(m: tarfile.TarInfo, where: str) -> Node:
    node = Node(FILE, m.mode & 0o7777, m.uid, m.gid, _mtime_ns(m), xattrs=_xattrs(m))
    if m.isreg():
        node.size = m.size
    else:
        node.type = _TYPES[m.type]
    if node.type == SYMLINK:
        node.target = m.linkname
        node.size = len(os.fsencode(m.linkname))
    if node.type in (CHAR, BLOCK):
        node.rdev = os.makedev(m.devmajor, m.devminor)
    return node


def _check_member(m: tarfile.TarInfo, archive_size: int, where: str) -> None:
    if not (m.isreg() or m.islnk() or m.type in _TYPES):
        raise SourceError(f"{where}: unsupported tar member type {m.type!r}")
    if m.size < 0 or m.size > MAX_MEMBER_SIZE:
        raise SourceError(f"{where}: absurd size {m.size} in its header; the archive is corrupt")
    if m.isreg() and not m.issparse() and m.offset_data + m.size > archive_size:
        raise SourceError(f"{where}: data ends past the end of the archive; it is truncated")


def apply_tar(tf: tarfile.TarFile, members: list[tarfile.TarInfo], builder: TreeBuilder,
              name: str, *, layer: bool) -> None:
    """Add the members to ``builder``; for a layer, whiteouts first, as the OCI spec says."""
    f = tf.fileobj
    size = f.seek(0, os.SEEK_END)  # type: ignore[union-attr]
    builder.new_layer()
    checked = []
    for m in members:
        where = f"{name}: entry {m.name!r}"
        _check_member(m, size, where)
        path = normalize(m.name, where)
        if layer and builder.whiteout(path, where):
            continue
        checked.append((m, path, where))
    for m, path, where in checked:
        if m.islnk():
            builder.add_hardlink(path, normalize(m.linkname, where), where)
            continue
        node = _node(m, where)
        if m.isreg():
            node.data = TarData(tf, m)
        builder.add(path, node, where)
