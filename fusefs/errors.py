"""Errors of mounting, said so a person can act on them, and the named errors of the file
system's lookups, which the FUSE boundary (``ops.fuse_errors``) maps to errno values by
name. Lookups never use ``KeyError`` as their protocol: an unexpected ``KeyError`` in a
handler is a bug, logged with its traceback and answered EIO, never a silent ENOENT."""

from __future__ import annotations

import errno

from blobstore.errors import ThawError


class MountError(ThawError):
    """The mount point, /dev/fuse or the mount itself is not usable."""

    exit_code = 2


class FsError(Exception):
    """A request the file system answers with ``errno``; not a bug, not logged."""

    errno = errno.EIO


class NoSuchInode(FsError):
    """An inode number this mount never gave out (or a stale one)."""

    errno = errno.ENOENT


class NotASymlink(FsError):
    """readlink of something that is not a symbolic link."""

    errno = errno.EINVAL


class NotADirectory(FsError):
    """A listing of something that is not a directory."""

    errno = errno.ENOTDIR


class NoSuchHandle(FsError):
    """A file handle that was never opened here, or is already released."""

    errno = errno.EBADF


class BadWorkload(FsError):
    """A ``thaw warm`` request naming a workload that is not a valid hints name."""

    errno = errno.EINVAL
