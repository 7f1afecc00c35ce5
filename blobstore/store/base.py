"""The object-store interface every backend implements, and its key rules.

A backend is a flat map from keys (``blobs/ab/<id>``, ``refs/NAME/TAG``, ...) to bytes, with
atomic, idempotent writes. Blob semantics (ids, encoding, verification) live above it in
``blobs.py``, so a backend only moves bytes and maps its library's errors to ours.

Implementations are synchronous and thread-safe: one instance is shared by every worker
thread of a push or a mount.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import NotFound

# Keys are relative slash paths of plain components: no empty, '.' or '..' parts, no
# backslashes or control characters, so they map safely onto a directory and an S3 prefix.
_KEY_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+@=-]*")


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid store key, else raise ValueError."""
    parts = key.split("/") if isinstance(key, str) else [""]
    if not all(_KEY_PART.fullmatch(p) for p in parts) or len(key) > 1024:
        raise ValueError(f"invalid store key {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key followed by a slash."""
    if prefix:
        check_key(prefix.rstrip("/"))
        if not prefix.endswith("/"):
            raise ValueError(f"a listing prefix ends with '/': {prefix!r}")
    return prefix


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object: its key, size, and last-modified time by the store's own clock
    (seconds since the epoch), which is what a collector's grace period must be measured
    against, never the local clock."""

    key: str
    size: int
    mtime: float


class ObjectStore(ABC):
    """A key/value store of immutable-once-written objects (refs are simply overwritten).

    Raises ``NotFound`` for a missing key, ``StoreUnavailable`` when it cannot answer,
    ``StoreConfigError`` when it is misconfigured. ``str(store)`` names the store.
    """

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write the object atomically: readers see the old bytes or the new, never a part."""

    @abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Write the object only if no object has the key (S3's ``If-None-Match: *``, an
        exclusive link in a directory): True if this call wrote it, False if it existed.
        Of any number of racing creates of one key, exactly one returns True. A retried
        create may find its own first attempt and return False: a caller that must know
        compares the bytes (a lock names its holder)."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The object's size in bytes; NotFound if it does not exist."""

    def has(self, key: str) -> bool:
        """Whether the object exists."""
        try:
            self.size(key)
            return True
        except NotFound:
            return False

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing one is not an error."""

    def delete_many(self, keys: list[str]) -> None:
        """Remove the objects, missing ones included; a store with a batch call uses it."""
        for key in keys:
            self.delete(key)

    @abstractmethod
    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (empty or ending with '/'), in no particular order."""

    def list_sizes(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """``(key, size)`` under ``prefix``."""
        return ((o.key, o.size) for o in self.list_info(prefix))

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix``."""
        return (key for key, _ in self.list_sizes(prefix))

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """Set up, ahead of the first call, what calls need (a client, its imports): a
        long-running process calls it as it starts, so its first request does not wait
        for that. Blocking; thread-safe."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the store is not used afterwards."""

    @abstractmethod
    def __str__(self) -> str:
        """The store's URL, for messages."""
