"""What a mount reports, as frozen records: the fetcher's own counters (``FetcherStats``)
and the `thaw stats --json` document (``MountStats``: bytes of its images, what each tier
served, hits, latencies), which the daemon writes and ``thaw stats``, ``thaw warm`` and the
Prometheus exporter (``metrics.py``) read.

Collected on the trio thread from the fetcher's and the tiers' counters; the Prometheus
exporter reads the record published once a second, never the live counters.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields

from blobstore.store.tiers import NodeTiers, TierSnapshot


@dataclass(slots=True)
class FetcherCounters:
    """The fetcher's running counts (trio thread only); ``FetcherStats`` is a moment of them."""

    memory_hits: int = 0
    memory_bytes: int = 0
    waited: int = 0
    demand_fetches: int = 0
    prefetches: int = 0
    prefetched_bytes: int = 0
    errors: int = 0
    retries: int = 0
    wait_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class FetcherStats:
    """The memory tier and the fetcher's own counters."""

    memory_hits: int = 0
    memory_bytes: int = 0  # served from memory
    waited: int = 0  # reads that waited for a fetch already in flight
    demand_fetches: int = 0
    prefetches: int = 0
    prefetched_bytes: int = 0  # of the chunks prefetched (their size, not stored size)
    errors: int = 0
    retries: int = 0
    memory_cached_bytes: int = 0  # held now
    prefetched_unread_bytes: int = 0  # prefetched and not read since: the waste
    prefetch_queued: int = 0  # chunks waiting for a prefetch worker
    fetch_latency_ms: dict = field(default_factory=dict)
    fetch_limit: int = 0  # fetches in flight against the store at most, by its latency
    wait_seconds: float = 0.0  # reads waiting on a chunk's fetch, summed over the reads


@dataclass(frozen=True)
class MountStats:
    """The `thaw stats --json` document, one field per key (their names are what scripts
    read: they do not change). The daemon collects it (``collect``), ``thaw stats`` and
    ``thaw warm`` read it back (``from_json``), and Prometheus reads its fields."""

    mount: str  # "image" (`thaw mount`) or "daemon" (every image of a store)
    manifest: str | None  # the image's id when the mount serves one image
    images: list  # manifest ids served, sorted
    image_bytes: int
    fetched_bytes: int  # from the store, uncompressed
    fetched_stored_bytes: int  # from the store, as stored (over the wire)
    tiers: dict  # tier -> {"chunks", "bytes", ...}: memory, disk, peer (with peers), store
    peers: dict  # per peer URL: chunks, bytes, errors, skipped
    cache_hits: int
    coalesced_waits: int
    fetch_latency_ms: dict
    demand_fetches: int
    prefetches: int
    prefetched_bytes: int
    prefetched_unread_bytes: int
    prefetch_queued: int
    hinted_chunks: int
    readdir_requests: int
    retries: int
    errors: int
    passthrough: str = "off"  # "on", or "off: why"
    passthrough_opens: int = 0  # opens the kernel serves from a backing file
    passthrough_files: int = 0  # files ready to be passed through (made or verified)
    fetch_limit: int = 0  # fetches in flight against the store at most (its latency sets it)
    fuse_requests: dict = field(default_factory=dict)  # by handler; lookup_missing: negative
    read_wait_seconds: float = 0.0  # reads waiting on chunks' fetches, summed over reads

    @classmethod
    def collect(cls, images: dict[str, int], tiers: NodeTiers, f: FetcherStats,
                hinted: int = 0, mount: str = "image", readdir_requests: int = 0,
                passthrough: str = "off", passthrough_opens: int = 0,
                passthrough_files: int = 0) -> MountStats:
        """From the fetcher's record and the tiers' counters, now."""
        disk = (tiers.disk.stats.snapshot() if tiers.disk else TierSnapshot("disk")).as_dict()
        store = tiers.store.stats.snapshot().as_dict()
        peer = {"peer": tiers.peer.stats.snapshot().as_dict()} if tiers.peer else {}
        return cls(
            mount=mount, manifest=next(iter(images)) if len(images) == 1 else None,
            images=sorted(images), image_bytes=sum(images.values()),
            fetched_bytes=store["bytes"], fetched_stored_bytes=store["stored_bytes"],
            tiers={"memory": {"chunks": f.memory_hits, "bytes": f.memory_bytes},
                   "disk": disk, **peer, "store": store},
            peers=tiers.peer.inner.peer_stats() if tiers.peer else {},
            cache_hits=f.memory_hits + disk["chunks"], coalesced_waits=f.waited,
            fetch_latency_ms=dict(f.fetch_latency_ms), demand_fetches=f.demand_fetches,
            prefetches=f.prefetches, prefetched_bytes=f.prefetched_bytes,
            prefetched_unread_bytes=f.prefetched_unread_bytes,
            prefetch_queued=f.prefetch_queued, hinted_chunks=hinted,
            readdir_requests=readdir_requests, retries=f.retries, errors=f.errors,
            passthrough=passthrough, passthrough_opens=passthrough_opens,
            passthrough_files=passthrough_files, fetch_limit=f.fetch_limit,
            read_wait_seconds=round(f.wait_seconds, 3))

    def as_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, doc: object) -> MountStats:
        """The document a mount wrote; ValueError if it is not one."""
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        if not isinstance(doc, dict) or not required <= set(doc) or not set(doc) <= names:
            raise ValueError("not a thaw mount's statistics")
        return cls(**doc)
