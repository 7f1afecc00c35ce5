"""A directory on this machine, and a single file, as source trees.

Metadata comes from ``lstat`` and ``listxattr`` without following links; names that are two
links to one inode (same device and inode number) become one node, i.e. a hard link. File
bytes are read later by ``FileData`` and checked against the size seen here, so a file that
changes during a push is an error, not a torn chunk. A sparse file is read by its data
extents (``SEEK_DATA``/``SEEK_HOLE``): holes become zeros without being read. A file whose
size is 0 but which reads bytes (``/proc``, ``/sys``) is pushed empty with a warning.
Symlinks are kept verbatim, as every source keeps them (``TreeBuilder``). Single-threaded.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import stat
from typing import BinaryIO

from blobstore.image.manifest import BLOCK, CHAR, DIR, FIFO, FILE, SOCKET, SYMLINK

from .errors import SourceError
from .tree import Node, SourceTree, TreeBuilder, newest_mtime

log = logging.getLogger(__name__)
_ZEROS = memoryview(bytes(1 << 20))
_KINDS = {stat.S_IFDIR: DIR, stat.S_IFREG: FILE, stat.S_IFLNK: SYMLINK, stat.S_IFCHR: CHAR,
          stat.S_IFBLK: BLOCK, stat.S_IFIFO: FIFO, stat.S_IFSOCK: SOCKET}


class FileData:
    __slots__ = ("path", "sparse")

    def __init__(self, path: str, sparse: bool = False) -> None:
        self.path, self.sparse = path, sparse

    def open(self) -> BinaryIO:
        try:
            f = open(self.path, "rb", buffering=0)  # noqa: SIM115 - the caller closes it
        except OSError as exc:
            raise SourceError(f"{self.path}: cannot read ({exc.strerror})") from None
        return SparseReader(f) if self.sparse else f  # type: ignore[return-value]


class SparseReader(io.RawIOBase):
    """A file read by its data extents: holes are zeros that are never read from disk."""

    def __init__(self, f: BinaryIO) -> None:
        self._f, self._fd, self._pos = f, f.fileno(), 0
        self._data_start = self._data_end = 0  # the current extent: [start, end)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        view = memoryview(b).cast("B")
        if self._pos >= self._data_end and not self._next_extent():
            return 0
        if self._pos < self._data_start:  # in a hole
            n = min(len(view), self._data_start - self._pos, len(_ZEROS))
            view[:n] = _ZEROS[:n]
        else:
            n = os.preadv(self._fd, [view[:self._data_end - self._pos]], self._pos)
            if n == 0:
                return 0
        self._pos += n
        return n

    def _next_extent(self) -> bool:
        """Find the next data extent from ``_pos``; False at the end of the file."""
        size = os.fstat(self._fd).st_size
        if self._pos >= size:
            return False
        try:
            self._data_start = os.lseek(self._fd, self._pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            self._data_start = size  # a hole to the end of the file
        self._data_end = os.lseek(self._fd, self._data_start, os.SEEK_HOLE) \
            if self._data_start < size else size
        return True

    def close(self) -> None:
        self._f.close()
        super().close()


def _xattrs(path: str) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
        return {os.fsencode(n): os.getxattr(path, n, follow_symlinks=False) for n in names}
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENODATA):
            return {}
        raise SourceError(f"{path}: cannot read extended attributes ({exc.strerror})") from None


def node_from_stat(path: str, st: os.stat_result) -> Node:
    kind = _KINDS.get(stat.S_IFMT(st.st_mode))
    if kind is None:
        raise SourceError(f"{path}: unsupported file type {oct(stat.S_IFMT(st.st_mode))}")
    node = Node(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns,
                xattrs=_xattrs(path))
    if kind == FILE:
        node.size = st.st_size
        node.data = FileData(path, sparse=st.st_blocks * 512 < st.st_size)
        if not st.st_size and _reads_bytes(path):
            log.warning("%s: its size is 0 but it reads bytes (a /proc or /sys file?); "
                        "pushed empty", path)
    elif kind == SYMLINK:
        node.target = os.fsdecode(os.readlink(path))
        node.size = len(os.fsencode(node.target))
    elif kind in (CHAR, BLOCK):
        node.rdev = st.st_rdev
    return node


def _reads_bytes(path: str) -> bool:
    try:
        with open(path, "rb", buffering=0) as f:
            return bool(f.read(1))
    except OSError:
        return False  # unreadable: the push reads nothing of it anyway


def _lstat(path: str) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror})") from None


def dir_source(root: str) -> SourceTree:
    root = os.path.abspath(root)
    builder = TreeBuilder(node_from_stat(root, _lstat(root)))
    inodes: dict[tuple[int, int], str] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            names = sorted(os.listdir(os.path.join(root, rel)))
        except OSError as exc:
            raise SourceError(f"{os.path.join(root, rel)}: cannot list ({exc.strerror})") from None
        for name in names:
            sub = f"{rel}/{name}" if rel else name
            full = os.path.join(root, sub)
            st = _lstat(full)
            key = (st.st_dev, st.st_ino)
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1 and key in inodes:
                builder.add_hardlink(sub, inodes[key], full)
                continue
            inodes.setdefault(key, sub)
            builder.add(sub, node_from_stat(full, st), full)
            if stat.S_ISDIR(st.st_mode):
                stack.append(sub)
    return SourceTree(builder.nodes, "dir", newest_mtime(builder.nodes))


def file_source(path: str) -> SourceTree:
    """One file (model weights, say) as an image holding just that file."""
    st = _lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(f"{path}: not a regular file")
    root = Node(DIR, 0o755, 0, 0, st.st_mtime_ns)
    builder = TreeBuilder(root)
    builder.add(os.path.basename(path), node_from_stat(path, st), path)
    return SourceTree(builder.nodes, "file", st.st_mtime_ns, kind="file")
