"""An in-memory object store, for tests and as a reference implementation.

Thread-safe through one lock; the stored bytes are immutable ``bytes`` objects.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from .base import ObjectStore, check_key, check_prefix
from .errors import NotFound


class MemoryStore(ObjectStore):
    def __init__(self, name: str = "") -> None:
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._name = name

    def get(self, key: str) -> bytes:
        with self._lock:
            try:
                return self._objects[check_key(key)]
            except KeyError:
                raise NotFound(f"{key} not found in {self}") from None

    def put(self, key: str, data: bytes) -> None:
        data = bytes(data)
        with self._lock:
            self._objects[check_key(key)] = data

    def size(self, key: str) -> int:
        return len(self.get(key))

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(check_key(key), None)

    def list_sizes(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        check_prefix(prefix)
        with self._lock:
            found = [(k, len(v)) for k, v in self._objects.items() if k.startswith(prefix)]
        return iter(found)

    def __str__(self) -> str:
        return f"memory://{self._name}"
