"""Errors of the indexer: bad input named precisely, for a person to fix."""

from __future__ import annotations

from blobstore.errors import ThawError


class SourceError(ThawError):
    """The source (directory, tar, OCI image, file) is unreadable, malformed or hostile."""

    exit_code = 2


class ExportError(ThawError):
    """The tree could not be written out (destination exists, no space, permission)."""
