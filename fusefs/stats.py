"""What a mount reports: bytes of its images, bytes fetched per tier, hits, latencies.

Built on the trio thread from the fetcher's and the tiers' counters; the Prometheus
exporter reads a snapshot published once a second, never the live counters.
"""

from __future__ import annotations

from blobstore.tiers import NodeTiers, TierSnapshot

from .fetch import ChunkFetcher


def stats_doc(images: dict[str, int], tiers: NodeTiers, fetcher: ChunkFetcher,
              hinted: int = 0) -> dict:
    """``hinted``: chunks queued for prefetch from hints of earlier starts."""
    f = fetcher.statistics()
    store = tiers.store.stats.snapshot().as_dict()
    disk = tiers.disk.stats.snapshot().as_dict() if tiers.disk else \
        TierSnapshot("disk").as_dict()
    return {
        "manifest": next(iter(images)) if len(images) == 1 else None,
        "images": sorted(images),
        "image_bytes": sum(images.values()),
        "fetched_bytes": store["bytes"],
        "fetched_stored_bytes": store["stored_bytes"],
        "tiers": {"memory": {"chunks": f["memory_hits"], "bytes": f["memory_bytes"]},
                  "disk": disk, "store": store},
        "cache_hits": f["memory_hits"] + disk["chunks"],
        "coalesced_waits": f["waited"],
        "fetch_latency_ms": f["fetch_latency_ms"],
        "demand_fetches": f["demand_fetches"],
        "prefetches": f["prefetches"],
        "hinted_chunks": hinted,
        "retries": f["retries"],
        "errors": f["errors"],
    }
