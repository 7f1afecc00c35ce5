"""What a mount reports, as frozen records: bytes of its images, what each tier served,
hits, latencies. ``MountStats.as_json`` is the one place the record becomes the `thaw stats
--json` document (whose keys scripts read: they do not change), and ``metrics.py`` the one
place it becomes Prometheus metrics.

Collected on the trio thread from the fetcher's and the tiers' counters; the Prometheus
exporter reads the record published once a second, never the live counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from blobstore.tiers import NodeTiers, TierSnapshot


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


@dataclass(frozen=True, slots=True)
class MountStats:
    images: dict  # manifest id -> bytes of its files
    fetcher: FetcherStats
    disk: TierSnapshot
    store: TierSnapshot
    hinted_chunks: int = 0  # queued for prefetch from earlier starts' hints
    readdir_requests: int = 0  # pages of names the kernel asked for (not from its cache)
    peer: TierSnapshot | None = None  # None: no cache peers
    peers: dict = field(default_factory=dict)  # per peer URL: chunks, bytes, errors, skipped
    mount: str = "image"  # "image" (`thaw mount`) or "daemon" (every image of a store)

    @classmethod
    def collect(cls, images: dict[str, int], tiers: NodeTiers, fetcher_stats: FetcherStats,
                hinted: int = 0, mount: str = "image") -> MountStats:
        disk = tiers.disk.stats.snapshot() if tiers.disk else TierSnapshot("disk")
        peer = tiers.peer.stats.snapshot() if tiers.peer else None
        per_peer = tiers.peer.inner.peer_stats() if tiers.peer else {}
        return cls(dict(images), fetcher_stats, disk, tiers.store.stats.snapshot(), hinted,
                   peer=peer, peers=per_peer, mount=mount)

    def as_json(self) -> dict:
        f, store, disk = self.fetcher, self.store.as_dict(), self.disk.as_dict()
        return {
            "mount": self.mount,
            "manifest": next(iter(self.images)) if len(self.images) == 1 else None,
            "images": sorted(self.images),
            "image_bytes": sum(self.images.values()),
            "fetched_bytes": store["bytes"],
            "fetched_stored_bytes": store["stored_bytes"],
            "tiers": {"memory": {"chunks": f.memory_hits, "bytes": f.memory_bytes},
                      "disk": disk, **({"peer": self.peer.as_dict()} if self.peer else {}),
                      "store": store},
            "peers": dict(self.peers),
            "cache_hits": f.memory_hits + disk["chunks"],
            "coalesced_waits": f.waited,
            "fetch_latency_ms": dict(f.fetch_latency_ms),
            "demand_fetches": f.demand_fetches,
            "prefetches": f.prefetches,
            "prefetched_bytes": f.prefetched_bytes,
            "prefetched_unread_bytes": f.prefetched_unread_bytes,
            "prefetch_queued": f.prefetch_queued,
            "hinted_chunks": self.hinted_chunks,
            "readdir_requests": self.readdir_requests,
            "retries": f.retries,
            "errors": f.errors,
        }
