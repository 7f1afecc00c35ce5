"""Errors of mounting, said so a person can act on them."""

from __future__ import annotations

from blobstore.errors import ThawError


class MountError(ThawError):
    """The mount point, /dev/fuse or the mount itself is not usable."""

    exit_code = 2
