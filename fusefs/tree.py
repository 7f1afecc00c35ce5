"""An image as a file-system tree: inodes, lookups, attributes and spans. No FUSE, no trio.

Built on a ``DirManifest`` (format 2): a directory is decoded the first time it is looked
up or listed, so a tree is ready at once whatever the image's size. Inode = ``base`` +
entry number + 1, fixed by the manifest and never recycled: a single mounted image has the
root at inode 1 (FUSE's root) and the daemon gives each image its own range. The names of
a hard-linked inode all resolve to the inode of the group's first entry. Immutable but for
caches filled on first use (a decoded directory and its listing, kept by the manifest up to
its bound; a per-file span index; each one assignment, atomic under the GIL), so any thread
may read it.
"""

from __future__ import annotations

import bisect
import os
import stat
from typing import NamedTuple

from blobstore.image.dirmanifest import DirManifest, as_dir_manifest
from blobstore.image.manifest import (
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

from .errors import NoSuchInode, NotADirectory, NotASymlink

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

    def __init__(self, manifest: DirManifest | Manifest, base: int = 0,
                 image_id: str = "") -> None:
        """``manifest``: a format-1 ``Manifest`` (decoded already) is laid out as format 2."""
        if isinstance(manifest, Manifest):
            manifest = as_dir_manifest(manifest)
        self.manifest = manifest
        self.base = base
        self.image_id = image_id  # the manifest id, where the caller knows it
        self.name = f"image {image_id[:12]}" if image_id else "image"  # for logs
        self._count = manifest.entry_count
        self._spans: dict[int, FileSpans] = {}

    # -- inode numbers -----------------------------------------------------------------------

    @property
    def root(self) -> int:
        return self.base + 1

    def contains(self, ino: int) -> bool:
        return 0 <= ino - self.base - 1 < self._count

    def index(self, ino: int) -> int:
        i = ino - self.base - 1
        if not 0 <= i < self._count:
            raise NoSuchInode(ino)
        return i

    def entry(self, ino: int) -> Entry:
        return self.manifest.entry(self.index(ino))

    def _inode(self, k: int) -> int:
        """The inode of entry ``k``: its hard-link group's first entry's."""
        return self.base + self.manifest.head(k) + 1

    # -- what FUSE asks ----------------------------------------------------------------------

    def lookup(self, parent: int, name: bytes) -> int | None:
        """The inode of ``name`` in directory ``parent``, or None."""
        listing = self.manifest.listing(self.index(parent))
        if listing is None:
            return None
        first, section = listing
        j = bisect.bisect_left(section.names, name)
        if j == len(section.names) or section.names[j] != name:
            return None
        return self._inode(first + j)

    def listing_cost(self, ino: int, decode: bool = False) -> int:
        """Bytes of ``ino``'s listing still to decode before ``lookup`` or ``children`` in
        it answers: 0 once decoded or for a non-directory. ``decode``: decode it now."""
        return self.manifest.listing_cost(self.index(ino), decode)

    def is_dir(self, ino: int) -> bool:
        return self.entry(ino).type == DIR

    def children(self, ino: int) -> list[tuple[bytes, int]]:
        """``(name, inode)`` of a directory's entries, sorted by name: built once per
        directory, so a listing in many ``readdir`` calls stays linear. Do not modify it.
        Raises NotADirectory for a non-directory."""
        listing = self.manifest.listing(self.index(ino))
        if listing is None:
            raise NotADirectory(ino)
        first, section = listing
        listed = section.listed  # kept with the decoded directory, dropped with it
        if listed is None or listed[0] != self.base:
            listed = section.listed = (self.base, [(name, self._inode(k)) for k, name in
                                                   enumerate(section.names, first)])
        return listed[1]

    def attrs(self, ino: int) -> Attrs:
        i = self.index(ino)
        e = self.manifest.entry(i)
        size = e.size if e.type in (FILE, SYMLINK) else (BLOCK_SIZE if e.type == DIR else 0)
        nlink = 2 + self.manifest.subdirs(i) if e.type == DIR else self.manifest.links(i)
        return Attrs(ino, _IFMT[e.type] | e.mode, nlink, e.uid, e.gid, size,
                     e.mtime_ns, e.rdev, (size + 511) // 512)

    def readlink(self, ino: int) -> bytes:
        e = self.entry(ino)
        if e.type != SYMLINK:
            raise NotASymlink(ino)
        return os.fsencode(e.target)

    def xattrs(self, ino: int) -> tuple[tuple[bytes, bytes], ...]:
        return self.entry(ino).xattrs

    def carries_xattrs(self) -> bool:
        """Whether any entry of the image has one (the answer for every getxattr if not)."""
        return self.manifest.has_xattrs

    def spans(self, ino: int, offset: int, size: int) -> list[Span]:
        """The chunk pieces that hold ``[offset, offset + size)`` of a file, clipped to EOF."""
        i = self.index(ino)
        index = self._spans.get(i)
        if index is None:
            index = self._spans[i] = FileSpans(self.manifest.entry(i).spans)
        return index.lookup(offset, size)

    @property
    def inode_count(self) -> int:
        return self._count

    def file_inodes(self, min_size: int, first: int = 0, stop: int | None = None
                    ) -> list[int]:
        """The regular files of ``min_size`` bytes or more among entries ``first`` to
        ``stop`` (all by default), one inode per hard-link group; decodes each entry (call
        it in a worker thread on a large image)."""
        out = []
        for k in range(first, self._count if stop is None else min(stop, self._count)):
            if self.manifest.head(k) != k:
                continue
            entry = self.manifest.entry(k)
            if entry.type == FILE and entry.size >= min_size:
                out.append(self.base + k + 1)
        return out
