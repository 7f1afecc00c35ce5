"""A directory on this machine, and a single file, as source trees.

Metadata comes from ``lstat`` and ``listxattr`` without following links; names that are two
links to one inode (same device and inode number) become one node, i.e. a hard link. File
bytes are read later by ``FileData`` and checked against the size seen here, so a file that
changes during a push is an error, not a torn chunk. Single-threaded.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

from blobstore.manifest import BLOCK, CHAR, DIR, FIFO, FILE, SOCKET, SYMLINK

from .errors import SourceError
from .tree import Node, SourceTree, TreeBuilder, newest_mtime

_KINDS = {stat.S_IFDIR: DIR, stat.S_IFREG: FILE, stat.S_IFLNK: SYMLINK, stat.S_IFCHR: CHAR,
          stat.S_IFBLK: BLOCK, stat.S_IFIFO: FIFO, stat.S_IFSOCK: SOCKET}


class FileData:
    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def open(self) -> BinaryIO:
        try:
            return open(self.path, "rb")  # noqa: SIM115 - the caller closes it
        except OSError as exc:
            raise SourceError(f"{self.path}: cannot read ({exc.strerror})") from None


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
        node.size, node.data = st.st_size, FileData(path)
    elif kind == SYMLINK:
        node.target = os.fsdecode(os.readlink(path))
        node.size = len(os.fsencode(node.target))
    elif kind in (CHAR, BLOCK):
        node.rdev = st.st_rdev
    return node


def _lstat(path: str) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror})") from None


def dir_source(root: str) -> SourceTree:
    root = os.path.abspath(root)
    builder = TreeBuilder(node_from_stat(root, _lstat(root)), strict_links=False)
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
