"""An in-memory object store: the reference implementation of ``ObjectStore``, which tests
and the fuzz targets build directly (no URL names it: a store by URL outlives a process).

Thread-safe through one lock; the stored bytes are immutable ``bytes`` objects.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from ..errors import NotFound
from .base import ObjectInfo, ObjectStore, check_key, check_prefix


class MemoryStore(ObjectStore):
    def __init__(self, name: str = "", *, clock: Callable[[], float] = time.time) -> None:
        """``clock``: the store's own clock, which stamps each write (tests pass a fake)."""
        self._objects: dict[str, bytes] = {}
        self._mtimes: dict[str, float] = {}
        self.clock = clock
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
            self._mtimes[key] = self.clock()

    def create(self, key: str, data: bytes) -> bool:
        data = bytes(data)
        with self._lock:
            if check_key(key) in self._objects:
                return False
            self._objects[key], self._mtimes[key] = data, self.clock()
            return True

    def size(self, key: str) -> int:
        return len(self.get(key))

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(check_key(key), None)
            self._mtimes.pop(key, None)

    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        with self._lock:
            found = [ObjectInfo(k, len(v), self._mtimes[k]) for k, v in self._objects.items()
                     if k.startswith(prefix)]
        return iter(found)

    def __str__(self) -> str:
        return f"memory://{self._name}"
