"""``BytesLRU``: blobs' bytes by id in memory, bounded by their total size, least recently
used first out.

Two users: the mount's fetcher keeps decoded chunks in it (``--memory``), and ``thaw
serve`` keeps the stored bytes of chunks it has verified, so a chunk that a hundred nodes
start with is read from disk and decoded to verify it once, not ninety-nine times: bytes in
this process's memory are not what a damaged disk can change under it. An entry larger than
the bound is never kept. Thread-safe: one lock around the dictionary (the fetcher calls it
from its trio thread only, the peer server from its request threads).
"""

from __future__ import annotations

import threading
from collections import OrderedDict


class BytesLRU:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.size = 0  # bytes held
        self.hits = 0

    def get(self, id: str) -> bytes | None:
        """The bytes if they are here (a hit counts as a use), else None."""
        with self._lock:
            data = self._entries.get(id)
            if data is not None:
                self._entries.move_to_end(id)
                self.hits += 1
            return data

    def put(self, id: str, data: bytes) -> None:
        """Keep ``data`` (which the caller has verified against ``id``), evicting the least
        recently used beyond the bound."""
        if len(data) > self.max_bytes:
            return
        with self._lock:
            if id in self._entries:
                return
            self._entries[id] = data
            self.size += len(data)
            while self.size > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self.size -= len(old)

    def __contains__(self, id: str) -> bool:
        return id in self._entries
