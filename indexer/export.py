"""Write an image out as a real tree with all its metadata (the full-pull baseline), or one
file's bytes to a stream.

The tree is written under a hidden temporary name beside the destination and renamed into
place at the end, so a failed export (a missing chunk, a full disk) leaves nothing behind.
Per file: bytes, then owner, then mode (chown clears setuid bits), then xattrs (a write or
chown clears security.capability), then times; directories get their mode and times last,
deepest first, as GNU tar does. Chunks are fetched ahead in parallel by
``blobstore.images.fetch_in_order``; files are written by the calling thread.
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

from blobstore.blobs import BlobStore
from blobstore.images import chunk_order, fetch_in_order, iter_file_bytes
from blobstore.manifest import BLOCK, CHAR, DIR, FIFO, FILE, SOCKET, SYMLINK, Entry, Manifest

from .errors import ExportError

log = logging.getLogger(__name__)
_NODE_TYPES = {CHAR: stat.S_IFCHR, BLOCK: stat.S_IFBLK, FIFO: stat.S_IFIFO,
               SOCKET: stat.S_IFSOCK}


class _Writer:
    def __init__(self, root: str) -> None:
        self.root = root
        self.as_root = os.geteuid() == 0
        self.first_of_group: dict[int, str] = {}
        self.warned: set[str] = set()

    def path(self, e: Entry) -> str:
        return os.path.join(self.root, e.path) if e.path else self.root

    def warn_once(self, what: str, msg: str) -> None:
        if what not in self.warned:
            self.warned.add(what)
            log.warning(msg)

    def create(self, e: Entry) -> bool:
        """Make the entry; False when it is a further name of a hard-linked inode."""
        p = self.path(e)
        if e.link_group and e.link_group in self.first_of_group:
            os.link(self.first_of_group[e.link_group], p, follow_symlinks=False)
            return False
        if e.link_group:
            self.first_of_group[e.link_group] = p
        if e.type == DIR:
            if e.path:
                os.mkdir(p, 0o700)
        elif e.type == SYMLINK:
            os.symlink(e.target, p)
        elif e.type != FILE:
            if not self.as_root and e.type in (CHAR, BLOCK):
                self.warn_once("mknod", "not root: device nodes are left out")
                return False
            os.mknod(p, 0o600 | _NODE_TYPES[e.type], e.rdev)
        return True

    def finish(self, e: Entry) -> None:
        """Owner, mode, xattrs and times, in the order that keeps each of them."""
        p, link = self.path(e), e.type == SYMLINK
        if self.as_root:
            os.chown(p, e.uid, e.gid, follow_symlinks=False)
        else:
            self.warn_once("chown", "not root: files are owned by the exporting user")
        if not link:
            os.chmod(p, e.mode)
        for name, value in e.xattrs:
            try:
                os.setxattr(p, name, value, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise
                self.warn_once(f"xattr {name!r}", f"cannot set xattr {name!r}: {exc.strerror}")
        os.utime(p, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)


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
                current, out = e, open(w.path(e), "r+b")  # noqa: SIM115
            out.write(piece)  # type: ignore[union-attr]
            if on_bytes:
                on_bytes(len(piece))
    finally:
        if out is not None:
            out.close()
        chunks.close()


def _fill(root: str, manifest: Manifest, blobs: BlobStore, jobs: int,
          on_bytes: Callable[[int], None] | None) -> None:
    w = _Writer(root)
    os.mkdir(root, 0o700)
    made = []
    for e in manifest.entries:
        if w.create(e):
            made.append(e)
            if e.type == FILE:
                os.close(os.open(w.path(e), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    data_files = [e for e in made if e.type == FILE and e.size]
    _write_files(w, data_files, blobs, manifest, jobs, on_bytes)
    for e in made:
        if e.type != DIR:
            w.finish(e)
    for e in reversed([e for e in made if e.type == DIR]):
        w.finish(e)


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
    try:
        e = manifest.entry(path)
    except KeyError:
        raise ExportError(f"no {path!r} in the image") from None
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
