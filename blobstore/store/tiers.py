"""Tiers: one stored-blob protocol, and small wrappers that are themselves tiers.

``BlobTier`` is what every tier and every stack of tiers answers: the stored bytes of a blob
by id (``get_stored``, unverified), the blob decoded and verified (``fetch``, ``get``, or
``read_into`` a caller's buffer), ``put_stored``, ``stored_size`` and ``has``. A miss is
``BlobNotFound`` everywhere, wrong bytes ``BlobCorrupt``, a tier that cannot answer
``StoreUnavailable``. The backends are ``blobs.BlobStore`` (an object store's blobs) and
``diskcache.DiskCache``; the wrappers compose them, each overriding a method or two:

- ``ReadThrough(upstream, cache)``: a hit in the cache is served (the cache verified it); a
  miss is fetched from upstream, verified, served, and written to the cache. A failed cache
  read or fill is a warning (once), never a failed read.
- ``Counting(tier, name)``: what the tier served and failed, for ``thaw stats`` and metrics.
- ``Verifying(tier)``: ``get_stored`` re-hashes before it returns (for raw bytes served on
  from an untrusted tier; everything decoded is verified anyway).
- ``FirstHit([tier, ...])``: the first tier that has the blob; a miss or a failure above
  the last moves on to the next.

``node_tiers`` builds the stack a node reads through (the mount, the daemon, the restorer,
``thaw serve``), in one visible place, with the cache peers (``peers.PeerTier``) between
the disk cache and the store. Synchronous and thread-safe: the FUSE fetcher calls tiers from worker
threads; the statistics take a lock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from ..errors import BlobCorrupt, BlobNotFound, StoreUnavailable
from .codec import MAX_BLOB_SIZE, decode_and_verify

log = logging.getLogger(__name__)


class Fetched(NamedTuple):
    data: bytes  # decoded and verified
    stored: bytes  # as the tier holds it (what a cache above stores)


class BlobTier:
    """The stored-blob protocol. Subclasses provide ``get_stored``, ``put_stored`` and
    ``stored_size``; decoding and verification are here, once."""

    def get_stored(self, id: str) -> bytes:
        raise NotImplementedError

    def put_stored(self, id: str, stored: bytes) -> None:
        raise NotImplementedError

    def stored_size(self, id: str) -> int:
        raise NotImplementedError

    def has(self, id: str) -> bool:
        try:
            self.stored_size(id)
            return True
        except BlobNotFound:
            return False

    def fetch(self, id: str, *, max_size: int = MAX_BLOB_SIZE) -> Fetched:
        """The blob decoded and verified, with its stored form."""
        stored = self.get_stored(id)
        return Fetched(decode_and_verify(stored, id, max_size=max_size, where=str(self)),
                       stored)

    def get(self, id: str, *, max_size: int = MAX_BLOB_SIZE) -> bytes:
        return self.fetch(id, max_size=max_size).data

    def fill_lock(self, id: str) -> contextlib.AbstractContextManager:
        """Held while ``id`` is fetched to fill this tier (a cache that processes share
        makes it a lock, so a chunk missed by all of them is read once)."""
        return contextlib.nullcontext()

    def read_into(self, id: str, dest: memoryview) -> None:
        """Decode the blob into ``dest``, which must be exactly its size, verified."""
        data = self.fetch(id, max_size=len(dest)).data
        if len(data) != len(dest):
            raise BlobCorrupt(f"blob {id} in {self}: {len(data)} bytes, expected {len(dest)}")
        dest[:] = data


class WrapperTier(BlobTier):
    """Delegates everything to ``inner``; a wrapper overrides what it changes."""

    def __init__(self, inner: BlobTier) -> None:
        self.inner = inner

    def get_stored(self, id: str) -> bytes:
        return self.inner.get_stored(id)

    def put_stored(self, id: str, stored: bytes) -> None:
        self.inner.put_stored(id, stored)

    def stored_size(self, id: str) -> int:
        return self.inner.stored_size(id)

    def has(self, id: str) -> bool:
        return self.inner.has(id)

    def fetch(self, id: str, *, max_size: int = MAX_BLOB_SIZE) -> Fetched:
        return self.inner.fetch(id, max_size=max_size)

    def read_into(self, id: str, dest: memoryview) -> None:
        self.inner.read_into(id, dest)

    def fill_lock(self, id: str) -> contextlib.AbstractContextManager:
        return self.inner.fill_lock(id)

    def __str__(self) -> str:
        return str(self.inner)


# -- statistics ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TierSnapshot:
    """What one tier served, at one moment: a frozen record."""

    name: str
    chunks: int = 0
    bytes: int = 0  # uncompressed
    stored_bytes: int = 0  # as moved over the wire or read from disk
    errors: int = 0
    latency_ms: dict = field(default_factory=dict)  # p50, p90, p99 of served reads

    def as_dict(self) -> dict:
        return {"chunks": self.chunks, "bytes": self.bytes, "stored_bytes": self.stored_bytes,
                "errors": self.errors, "latency_ms": dict(self.latency_ms)}


RECENT = 64  # blobs ``TierStats.recent`` looks back over


@dataclass
class TierStats:
    """Counters of one tier; thread-safe through its lock."""

    name: str
    chunks: int = 0
    bytes: int = 0
    stored_bytes: int = 0
    errors: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=10_000))
    _recent: deque = field(default_factory=lambda: deque(maxlen=RECENT), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, size: int, stored: int, seconds: float) -> None:
        with self._lock:
            self.chunks += 1
            self.bytes += size
            self.stored_bytes += stored
            self.latencies.append(seconds)
            self._recent.append((seconds, stored))

    def recent(self) -> tuple[float, float] | None:
        """(the least latency, the mean stored size) of the last ``RECENT`` blobs; None
        before ``RECENT // 8`` are seen."""
        with self._lock:
            recent = list(self._recent)
        if len(recent) < RECENT // 8:
            return None
        return min(s for s, _ in recent), sum(n for _, n in recent) / len(recent)

    def error(self) -> None:
        with self._lock:
            self.errors += 1

    def snapshot(self) -> TierSnapshot:
        with self._lock:
            lat = sorted(self.latencies)
            counts = (self.chunks, self.bytes, self.stored_bytes, self.errors)
        return TierSnapshot(self.name, *counts, percentiles(lat))


def percentiles(sorted_seconds: list[float]) -> dict:
    if not sorted_seconds:
        return {}
    n = len(sorted_seconds)
    return {f"p{p}": round(sorted_seconds[min(n - 1, int(n * p / 100))] * 1000, 3)
            for p in (50, 90, 99)}


class Counting(WrapperTier):
    """Counts the blobs a tier serves (a miss is not an error; anything else that fails is)."""

    def __init__(self, inner: BlobTier, name: str) -> None:
        super().__init__(inner)
        self.stats = TierStats(name)

    def fetch(self, id: str, *, max_size: int = MAX_BLOB_SIZE) -> Fetched:
        started = time.monotonic()
        got = self._counted(lambda: self.inner.fetch(id, max_size=max_size))
        self.stats.record(len(got.data), len(got.stored), time.monotonic() - started)
        return got

    def read_into(self, id: str, dest: memoryview) -> None:
        started = time.monotonic()
        self._counted(lambda: self.inner.read_into(id, dest))
        self.stats.record(len(dest), len(dest), time.monotonic() - started)

    def _counted(self, call):
        try:
            return call()
        except BlobNotFound:
            raise
        except Exception:
            self.stats.error()
            raise


class Verifying(WrapperTier):
    """Stored bytes from ``inner`` are re-hashed before they are handed on."""

    def get_stored(self, id: str) -> bytes:
        return self.inner.fetch(id).stored


class ReadThrough(BlobTier):
    """``cache`` in front of ``upstream``: a miss is fetched, verified and cached."""

    def __init__(self, upstream: BlobTier, cache: BlobTier) -> None:
        self.upstream, self.cache = upstream, cache
        self._warned: set[str] = set()

    def _warn_once(self, what: str, exc: Exception) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("%s (further such warnings suppressed)", exc)

    def fetch(self, id: str, *, max_size: int = MAX_BLOB_SIZE) -> Fetched:
        try:
            return self.cache.fetch(id, max_size=max_size)
        except BlobNotFound:
            pass
        except StoreUnavailable as exc:
            self._warn_once("cache-read", exc)
        return self._fetch_locked(id, max_size)

    def read_into(self, id: str, dest: memoryview) -> None:
        """A cache hit costs one read into ``dest`` and one hash; a miss is fetched,
        verified, cached and copied once."""
        try:
            return self.cache.read_into(id, dest)
        except BlobNotFound:
            pass
        except StoreUnavailable as exc:
            self._warn_once("cache-read", exc)
        dest[:] = self._fetch_locked(id, len(dest), exact=True).data

    def _fetch_locked(self, id: str, max_size: int, exact: bool = False) -> Fetched:
        """A miss, under the cache's fill lock: fetched from upstream and cached (``exact``:
        only if it is ``max_size`` bytes, else BlobCorrupt)."""
        with self.cache.fill_lock(id):
            try:  # another process may have filled it while this one waited for the lock
                got = self.cache.fetch(id, max_size=max_size)
            except (BlobNotFound, StoreUnavailable):
                got = None
            if got is None:
                got = self.upstream.fetch(id, max_size=max_size)
                if not exact or len(got.data) == max_size:
                    self._fill(id, got.stored)
        if exact and len(got.data) != max_size:
            raise BlobCorrupt(f"blob {id} in {self.upstream}: {len(got.data)} bytes, "
                              f"expected {max_size}")
        return got

    def _fill(self, id: str, stored: bytes) -> None:
        try:
            self.cache.put_stored(id, stored)
        except StoreUnavailable as exc:
            self._warn_once("cache-fill", exc)

    def get_stored(self, id: str) -> bytes:
        try:
            return self.cache.get_stored(id)
        except BlobNotFound:
            return self.fetch(id).stored

    def put_stored(self, id: str, stored: bytes) -> None:
        self.upstream.put_stored(id, stored)
        self._fill(id, stored)

    def stored_size(self, id: str) -> int:
        try:
            return self.cache.stored_size(id)
        except BlobNotFound:
            return self.upstream.stored_size(id)

    def __str__(self) -> str:
        return f"{self.cache} over {self.upstream}"


class FirstHit(BlobTier):
    """The first of ``tiers`` that has the blob; the last one's error if none has."""

    def __init__(self, tiers: list[BlobTier]) -> None:
        self.tiers = tiers

    def fetch(self, id: str, *, max_size: int = MAX_BLOB_SIZE) -> Fetched:
        for tier in self.tiers[:-1]:
            try:
                return tier.fetch(id, max_size=max_size)
            except (BlobNotFound, StoreUnavailable, BlobCorrupt):
                continue
        return self.tiers[-1].fetch(id, max_size=max_size)

    def get_stored(self, id: str) -> bytes:
        return self.fetch(id).stored

    def stored_size(self, id: str) -> int:
        return self.tiers[-1].stored_size(id)

    def has(self, id: str) -> bool:
        return self.tiers[-1].has(id)

    def put_stored(self, id: str, stored: bytes) -> None:
        self.tiers[-1].put_stored(id, stored)

    def __str__(self) -> str:
        return " then ".join(str(t) for t in self.tiers)


# -- the stack a node reads through ----------------------------------------------------------


class NodeTiers(NamedTuple):
    stack: BlobTier  # what readers call
    disk: Counting | None  # the node's disk cache, counted (None: no cache)
    store: Counting  # the store, counted
    peer: Counting | None = None  # the cache peers, counted (None: no peers)


def node_tiers(store: BlobTier, cache: BlobTier | None,
               peers: BlobTier | None = None) -> NodeTiers:
    """Memory (the caller's) -> disk cache -> the chunk's owner among the cache peers ->
    store: ``ReadThrough(FirstHit([peers, store]), disk)``; a miss everywhere above the
    store, or a peer that fails, falls through to the store."""
    counted_store = Counting(store, "store")
    counted_peers = None if peers is None else Counting(peers, "peer")
    upstream = counted_store if counted_peers is None else FirstHit(
        [counted_peers, counted_store])
    if cache is None:
        return NodeTiers(upstream, None, counted_store, counted_peers)
    disk = Counting(cache, "disk")
    return NodeTiers(ReadThrough(upstream, disk), disk, counted_store, counted_peers)
