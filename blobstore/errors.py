"""Error kinds of thaw's stores, and the base every user-facing error of thaw derives from.

Each backend turns its library's exceptions into these inside its own module, so nothing
above a backend ever sees boto3 or OSError. Three kinds matter to callers:

- ``NotFound`` (``BlobNotFound``, ``RefNotFound``): the object is absent; try the next tier.
- ``BlobCorrupt``: bytes that do not hash to their id; never served, never cached.
- ``StoreUnavailable``: the store cannot answer now (network, full disk, I/O); retry, then
  give up with this message.

``StoreConfigError`` is bad configuration (unknown scheme, missing bucket, bad credentials),
raised as early as possible. This module imports nothing of ours.
"""

from __future__ import annotations


class ThawError(Exception):
    """An error meant for a person: its message is one sentence, printed without traceback."""

    exit_code = 1


class StoreError(ThawError):
    """Something went wrong in a store; the message names the store."""


class NotFound(StoreError):
    """The key does not exist in the store."""


class BlobNotFound(NotFound):
    """A blob is absent from the store."""


class RefNotFound(NotFound):
    """No tag of that name exists in the store."""

    exit_code = 2


class BlobCorrupt(StoreError):
    """A blob's bytes do not decode or do not hash to its id."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or cannot take the write now (transient or environmental)."""

    exit_code = 3


class StoreConfigError(StoreError):
    """The store is misconfigured: unknown URL, missing bucket, bad credentials."""

    exit_code = 2


class ManifestInvalid(ThawError):
    """A manifest does not decode or breaks one of its invariants (untrusted input)."""


class EntryNotFound(ThawError):
    """A path that is not in the image."""

    exit_code = 2


class UsageError(ThawError):
    """A command was given arguments it cannot use."""

    exit_code = 2
