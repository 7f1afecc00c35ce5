"""Write an image out as a real tree with all its metadata (the full-pull baseline), or one
file's bytes to a stream.

The tree is written under a hidden temporary name beside the destination and renamed into
place at the end, so a failed export (a missing chunk, a full disk) leaves nothing behind.
Every entry is made through directory file descriptors with ``O_NOFOLLOW`` (``_Writer``):
symlinks are data, kept verbatim, and never followed while the tree is written.
Per file: bytes, then owner, then mode (chown clears setuid bits), then xattrs (a write or
chown clears security.capability), then times; directories get their mode and times last,
deepest first, as GNU tar does. Chunks are fetched ahead in parallel by
``blobstore.image.images.fetch_in_order``; files are written by the calling thread.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from typing import BinaryIO

from blobstore.image.images import chunk_order, fetch_in_order, iter_file_bytes
from blobstore.image.manifest import BLOCK, CHAR, DIR, FIFO, FILE, SOCKET, SYMLINK, Entry, Manifest
from blobstore.store.blobs import BlobStore

from .errors import ExportError

log = logging.getLogger(__name__)
_NODE_TYPES = {CHAR: stat.S_IFCHR, BLOCK: stat.S_IFBLK, FIFO: stat.S_IFIFO,
               SOCKET: stat.S_IFSOCK}


_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FDS = 64  # directories kept open; entries come in path order, so few are in use


class _Writer:
    """Creates entries under ``root`` by directory file descriptors, never by path: each
    parent is opened from the root a component at a time with ``O_NOFOLLOW``, files are
    created with ``O_EXCL | O_NOFOLLOW``, and metadata is set through a descriptor or a
    call that does not follow the last component. A symlink in the tree (an entry, or one
    put there meanwhile) is never followed while the tree is written, so no write lands
    outside it."""

    def __init__(self, root: str) -> None:
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
        self.as_root = os.geteuid() == 0
        self.first_of_group: dict[int, str] = {}
        self.warned: set[str] = set()
        self._dirs: dict[str, int] = {}

    def close(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()
        os.close(self.root_fd)

    def dir_fd(self, path: str) -> int:
        """An open descriptor of the directory ``path`` ('' is the root)."""
        if not path:
            return self.root_fd
        fd = self._dirs.pop(path, None)
        if fd is None:
            parent, _, name = path.rpartition("/")
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW,
                         dir_fd=self.dir_fd(parent))
            if len(self._dirs) >= _DIR_FDS:
                os.close(self._dirs.pop(next(iter(self._dirs))))
        self._dirs[path] = fd  # the most recently used last
        return fd

    def at(self, path: str) -> tuple[int, str]:
        """(the descriptor of the directory ``path`` is in, its last component). The
        descriptor is the cache's: use it before the next call."""
        parent, _, name = path.rpartition("/")
        return self.dir_fd(parent), name

    def warn_once(self, what: str, msg: str) -> None:
        if what not in self.warned:
            self.warned.add(what)
            log.warning(msg)

    def create(self, e: Entry) -> bool:
        """Make the entry; False when it is a further name of a hard-linked inode."""
        if not e.path:
            return True  # the root: made by the caller
        if e.link_group and e.link_group in self.first_of_group:
            src_fd, src = self.at(self.first_of_group[e.link_group])
            src_fd = os.dup(src_fd)  # held while the other directory is found
            try:
                pfd, name = self.at(e.path)
                os.link(src, name, src_dir_fd=src_fd, dst_dir_fd=pfd, follow_symlinks=False)
            finally:
                os.close(src_fd)
            return False
        pfd, name = self.at(e.path)
        if e.link_group:
            self.first_of_group[e.link_group] = e.path
        if e.type == DIR:
            os.mkdir(name, 0o700, dir_fd=pfd)
        elif e.type == SYMLINK:
            os.symlink(e.target, name, dir_fd=pfd)
        elif e.type == FILE:
            os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | _NOFOLLOW, 0o600,
                             dir_fd=pfd))
        else:
            if not self.as_root and e.type in (CHAR, BLOCK):
                self.warn_once("mknod", "not root: device nodes are left out")
                return False
            os.mknod(name, 0o600 | _NODE_TYPES[e.type], e.rdev, dir_fd=pfd)
        return True

    def open_file(self, e: Entry) -> BinaryIO:
        pfd, name = self.at(e.path)
        return os.fdopen(os.open(name, os.O_WRONLY | _NOFOLLOW, dir_fd=pfd), "wb")

    def finish(self, e: Entry) -> None:
        """Owner, mode, xattrs and times, in the order that keeps each of them: through a
        descriptor of the entry itself where it can be opened without side effects (a
        regular file, a directory), else relative to its parent, never following it."""
        if e.type in (FILE, DIR):
            if e.path:
                pfd, name = self.at(e.path)
                flags = os.O_RDONLY | _NOFOLLOW | (os.O_DIRECTORY if e.type == DIR else 0)
                fd = os.open(name, flags, dir_fd=pfd)
            else:
                fd = os.dup(self.root_fd)
            try:
                self._finish(e, fd)
            finally:
                os.close(fd)
        else:
            pfd, name = self.at(e.path)
            self._finish(e, name, pfd)

    def _finish(self, e: Entry, fd_or_name: int | str, dir_fd: int | None = None) -> None:
        """Through the entry's descriptor, or its ``name`` in ``dir_fd``, not followed."""
        at = {} if dir_fd is None else {"dir_fd": dir_fd, "follow_symlinks": False}
        if self.as_root:
            os.chown(fd_or_name, e.uid, e.gid, **at)
        else:
            self.warn_once("chown", "not root: files are owned by the exporting user")
        if e.type != SYMLINK:  # a special file here: made by this writer, never a link
            os.chmod(fd_or_name, e.mode, **({} if dir_fd is None else {"dir_fd": dir_fd}))
        # setxattr takes no directory: a special file or link is named through /proc
        xattr_at = (fd_or_name if dir_fd is None
                    else f"/proc/self/fd/{dir_fd}/{fd_or_name}")
        for xname, value in e.xattrs:
            try:
                os.setxattr(xattr_at, xname, value, follow_symlinks=dir_fd is None)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise
                self.warn_once(f"xattr {xname!r}",
                               f"cannot set xattr {xname!r}: {exc.strerror}")
        os.utime(fd_or_name, ns=(e.mtime_ns, e.mtime_ns), **at)


def _write_files(w: _Writer, files: list[Entry], blobs: BlobStore, manifest: Manifest,
                 jobs: int, on_bytes: Callable[[int], None] | None) -> None:
    chunks = fetch_in_order(blobs, manifest, chunk_order(files), jobs=jobs)
    out: BinaryIO | None = None
    current: Entry | None = None
    try:
        for e, piece in iter_file_bytes(files, chunks):
            if e is not current:
                if out is not None:
                    out.close()
                current, out = e, w.open_file(e)
            out.write(piece)  # type: ignore[union-attr]
            if on_bytes:
                on_bytes(len(piece))
    finally:
        if out is not None:
            out.close()
        chunks.close()


def _fill(root: str, manifest: Manifest, blobs: BlobStore, jobs: int,
          on_bytes: Callable[[int], None] | None) -> None:
    os.mkdir(root, 0o700)
    w = _Writer(root)
    try:
        made = [e for e in manifest.entries if w.create(e)]
        data_files = [e for e in made if e.type == FILE and e.size]
        _write_files(w, data_files, blobs, manifest, jobs, on_bytes)
        for e in made:
            if e.type != DIR:
                w.finish(e)
        for e in reversed([e for e in made if e.type == DIR]):
            w.finish(e)
    finally:
        w.close()


def export_tree(manifest: Manifest, blobs: BlobStore, dest: str, *, jobs: int = 8,
                on_bytes: Callable[[int], None] | None = None) -> None:
    """Write the image to ``dest`` (which must not exist, or be an empty directory)."""
    dest = os.path.abspath(dest)
    if os.path.lexists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        raise ExportError(f"{dest} exists and is not an empty directory; choose a new one")
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        raise ExportError(f"{parent}: no such directory")
    tmp = os.path.join(parent, f".{os.path.basename(dest)}.thaw-partial-{uuid.uuid4().hex[:8]}")
    try:
        _fill(tmp, manifest, blobs, jobs, on_bytes)
        if os.path.isdir(dest):
            os.rmdir(dest)
        os.rename(tmp, dest)
        root = manifest.entries[0]
        os.utime(dest, ns=(root.mtime_ns, root.mtime_ns))  # a rename may touch it
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            reason = ("no space left on the device" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                      else exc.strerror or str(exc))
            raise ExportError(f"cannot export to {dest}: {reason}; nothing was left behind"
                              ) from None
        raise


def write_file(manifest: Manifest, blobs: BlobStore, path: str, out: BinaryIO, *,
               jobs: int = 8) -> int:
    """Write the bytes of the regular file ``path`` of the image to ``out``."""
    e = manifest.entry(path)  # EntryNotFound names the path
    if e.type == SYMLINK:
        raise ExportError(f"{path!r} is a symlink to {e.target!r}; cat that path instead")
    if e.type != FILE:
        raise ExportError(f"{path!r} is not a regular file")
    chunks = fetch_in_order(blobs, manifest, chunk_order([e]), jobs=jobs)
    written = 0
    try:
        for _, piece in iter_file_bytes([e], chunks):
            out.write(piece)
            written += len(piece)
    finally:
        chunks.close()
    return written
