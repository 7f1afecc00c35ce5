"""The stored bytes of recently verified blobs, in memory: what ``thaw serve`` answers
repeated requests from.

A chunk that a hundred nodes start with is asked of its owner ninety-nine times; without
this, each answer reads the disk cache again and decodes and hashes the blob again to
verify it. ``RecentStored`` keeps the stored bytes of what the tiers below verified, up to
``max_bytes`` (least recently used first out), so an entry is verified once on its way in
and served from memory after: bytes in this process's memory are not what a damaged disk
can change under it. Thread-safe: one lock around the LRU.
"""

from __future__ import annotations

import threading
from collections import OrderedDict


class RecentStored:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lru: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.size = 0
        self.hits = 0

    def cached(self, id: str) -> bytes | None:
        """The stored bytes if they are here (a hit counts as a use), else None."""
        with self._lock:
            stored = self._lru.get(id)
            if stored is not None:
                self._lru.move_to_end(id)
                self.hits += 1
            return stored

    def keep(self, id: str, stored: bytes) -> None:
        """Remember ``stored``, which the caller has verified against ``id``."""
        if len(stored) > self.max_bytes:
            return
        with self._lock:
            if id in self._lru:
                return
            self._lru[id] = stored
            self.size += len(stored)
            while self.size > self.max_bytes:
                _, old = self._lru.popitem(last=False)
                self.size -= len(old)
