"""An image as a file-system tree: inodes, lookups, attributes and spans. No FUSE, no trio.

Inodes are fixed when the tree is built and never recycled: inode = ``base`` + entry index
+ 1, so a single mounted image has the root at inode 1 (FUSE's root) and the daemon gives
each image its own range. The names of a hard-linked inode all resolve to the inode of the
group's first entry. Immutable after construction but for a per-file span index and a
per-directory sorted listing, each filled on first use (a dict write, atomic under the GIL),
so any thread may read it.
"""

from __future__ import annotations

import os
import stat
from typing import NamedTuple

from blobstore.manifest import (
    BLOCK,
    CHAR,
    DIR,
    FIFO,
    FILE,
    SOCKET,
    SYMLINK,
    Entry,
    FileSpans,
    Manifest,
    Span,
)

from .errors import NoSuchInode, NotASymlink

_IFMT = {FILE: stat.S_IFREG, DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK, CHAR: stat.S_IFCHR,
         BLOCK: stat.S_IFBLK, FIFO: stat.S_IFIFO, SOCKET: stat.S_IFSOCK}
BLOCK_SIZE = 4096


class Attrs(NamedTuple):
    """An inode's attributes (a named tuple: built for every entry a listing returns, and
    a tuple is five times cheaper to make than a frozen dataclass)."""

    ino: int
    mode: int  # with the file-type bits
    nlink: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    rdev: int
    blocks: int  # 512-byte blocks, as st_blocks counts them
    ttl: float | None = None  # how long the kernel may cache it; None: the mount's default


class FsTree:
    """The inodes of one image."""

    def __init__(self, manifest: Manifest, base: int = 0, image_id: str = "") -> None:
        self.manifest = manifest
        self.base = base
        self.image_id = image_id  # the manifest id, where the caller knows it
        self.name = f"image {image_id[:12]}" if image_id else "image"  # for logs
        entries = manifest.entries
        self._canonical = list(range(len(entries)))  # entry index -> index of its inode
        self._nlink = [1] * len(entries)
        self._children: dict[int, dict[bytes, int]] = {}
        self._listed: dict[int, list[tuple[bytes, int]]] = {}  # dir index -> sorted children
        self._spans: dict[int, FileSpans] = {}
        self._index_children(entries)

    def _index_children(self, entries: tuple[Entry, ...]) -> None:
        first_of_group: dict[int, int] = {}
        group_size: dict[int, int] = {}
        children, nlink, canonical = self._children, self._nlink, self._canonical
        index_of = self.manifest.index_of_stored
        for i, e in enumerate(entries):
            if e.link_group:
                canonical[i] = first_of_group.setdefault(e.link_group, i)
                group_size[e.link_group] = group_size.get(e.link_group, 0) + 1
            is_dir = e.type == DIR
            if is_dir:
                children[i] = {}
                nlink[i] = 2
            if i:
                parent_path, _, name = e.path.rpartition("/")
                parent = index_of(parent_path)
                children[parent][os.fsencode(name)] = canonical[i]
                if is_dir:
                    nlink[parent] += 1
        if group_size:
            for i, e in enumerate(entries):
                if e.link_group:
                    nlink[i] = group_size[e.link_group]

    # -- inode numbers -----------------------------------------------------------------------

    @property
    def root(self) -> int:
        return self.base + 1

    def contains(self, ino: int) -> bool:
        return 0 <= ino - self.base - 1 < len(self.manifest.entries)

    def index(self, ino: int) -> int:
        i = ino - self.base - 1
        if not 0 <= i < len(self.manifest.entries):
            raise NoSuchInode(ino)
        return i

    def entry(self, ino: int) -> Entry:
        return self.manifest.entries[self.index(ino)]

    # -- what FUSE asks ----------------------------------------------------------------------

    def lookup(self, parent: int, name: bytes) -> int | None:
        """The inode of ``name`` in directory ``parent``, or None."""
        children = self._children.get(self.index(parent))
        if children is None:
            return None
        i = children.get(name)
        return None if i is None else self.base + i + 1

    def is_dir(self, ino: int) -> bool:
        return self.index(ino) in self._children

    def children(self, ino: int) -> list[tuple[bytes, int]]:
        """``(name, inode)`` of a directory's entries, sorted by name: built once per
        directory, so a listing in many ``readdir`` calls stays linear. Do not modify it."""
        i = self.index(ino)
        listed = self._listed.get(i)
        if listed is None:
            listed = self._listed[i] = [(name, self.base + k + 1) for name, k in
                                        sorted(self._children[i].items())]
        return listed

    def attrs(self, ino: int) -> Attrs:
        i = self.index(ino)
        e = self.manifest.entries[i]
        size = e.size if e.type in (FILE, SYMLINK) else (BLOCK_SIZE if e.type == DIR else 0)
        return Attrs(ino, _IFMT[e.type] | e.mode, self._nlink[i], e.uid, e.gid, size,
                     e.mtime_ns, e.rdev, (size + 511) // 512)

    def readlink(self, ino: int) -> bytes:
        e = self.entry(ino)
        if e.type != SYMLINK:
            raise NotASymlink(ino)
        return os.fsencode(e.target)

    def xattrs(self, ino: int) -> tuple[tuple[bytes, bytes], ...]:
        return self.entry(ino).xattrs

    def spans(self, ino: int, offset: int, size: int) -> list[Span]:
        """The chunk pieces that hold ``[offset, offset + size)`` of a file, clipped to EOF."""
        i = self.index(ino)
        index = self._spans.get(i)
        if index is None:
            index = self._spans[i] = FileSpans(self.manifest.entries[i].spans)
        return index.lookup(offset, size)

    @property
    def inode_count(self) -> int:
        return len(self.manifest.entries)
