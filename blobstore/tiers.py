"""Composing tiers: a read-through disk cache in front of a store, with counters.

``ReadThroughCache(upstream, cache)``: a hit in the cache is served (the cache verified it);
a miss is fetched from the upstream store, verified, served, and written to the cache. A
failed cache read or fill is a warning, never a failed read. Each tier counts what it served
in a ``TierStats``. Synchronous and thread-safe: the FUSE fetcher calls it from worker
threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .blobs import BlobStore
from .codec import MAX_BLOB_SIZE, decode_and_verify
from .diskcache import DiskCache
from .errors import BlobCorrupt, BlobNotFound, StoreUnavailable

log = logging.getLogger(__name__)


@dataclass
class TierStats:
    """What one tier served; thread-safe through its lock."""

    name: str
    chunks: int = 0
    bytes: int = 0  # uncompressed
    stored_bytes: int = 0  # as moved over the wire or read from disk
    errors: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=10_000))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, size: int, stored: int, seconds: float) -> None:
        with self._lock:
            self.chunks += 1
            self.bytes += size
            self.stored_bytes += stored
            self.latencies.append(seconds)

    def error(self) -> None:
        with self._lock:
            self.errors += 1

    def snapshot(self) -> dict:
        with self._lock:
            lat = sorted(self.latencies)
            doc = {"chunks": self.chunks, "bytes": self.bytes,
                   "stored_bytes": self.stored_bytes, "errors": self.errors}
        doc["latency_ms"] = percentiles(lat)
        return doc


def percentiles(sorted_seconds: list[float]) -> dict:
    if not sorted_seconds:
        return {}
    n = len(sorted_seconds)
    return {f"p{p}": round(sorted_seconds[min(n - 1, int(n * p / 100))] * 1000, 3)
            for p in (50, 90, 99)}


class ReadThroughCache:
    def __init__(self, upstream: BlobStore, cache: DiskCache | None) -> None:
        self.upstream = upstream
        self.cache = cache
        self.cache_stats = TierStats("disk")
        self.upstream_stats = TierStats("store")
        self._warned: set[str] = set()

    def _warn_once(self, what: str, exc: Exception) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("%s (further such warnings suppressed)", exc)

    def _from_cache(self, read, size: int | None = None):
        """``read(cache)`` counted as a disk hit; None on a miss or a broken cache."""
        if self.cache is None:
            return None
        started = time.monotonic()
        try:
            result = read(self.cache)
        except BlobNotFound:
            return None
        except StoreUnavailable as exc:
            self.cache_stats.error()
            self._warn_once("cache-read", exc)
            return None
        if result is not None and result is not False:
            n = size if size is not None else len(result)
            self.cache_stats.record(n, n, time.monotonic() - started)
        return result

    def get(self, id: str, *, max_size: int = MAX_BLOB_SIZE) -> bytes:
        """The blob, verified, from the nearest tier that has it."""
        data = self._from_cache(lambda cache: cache.get(id, max_size=max_size))
        return data if data is not None else self._fetch(id, max_size)

    def get_into(self, id: str, dest: memoryview) -> None:
        """The blob decoded straight into ``dest`` (its exact size), verified there. A disk
        cache hit costs one read into ``dest`` and one hash; a miss is fetched, verified,
        cached and copied once."""
        if self._from_cache(lambda cache: cache.get_into(id, dest), len(dest)):
            return
        data = self._fetch(id, len(dest))
        if len(data) != len(dest):
            raise BlobCorrupt(f"blob {id} in {self.upstream}: {len(data)} bytes, expected "
                              f"{len(dest)}")
        dest[:] = data

    def _fetch(self, id: str, max_size: int) -> bytes:
        started = time.monotonic()
        try:
            stored = self.upstream.get_stored(id)
            data = decode_and_verify(stored, id, max_size=max_size, where=str(self.upstream))
        except Exception:
            self.upstream_stats.error()
            raise
        self.upstream_stats.record(len(data), len(stored), time.monotonic() - started)
        if self.cache is not None:
            try:
                self.cache.put_stored(id, stored)
            except StoreUnavailable as exc:
                self._warn_once("cache-fill", exc)
        return data
