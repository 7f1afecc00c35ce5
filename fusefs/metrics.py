"""Prometheus metrics of a mount, served from a thread by prometheus_client.

The collector reads the last record the trio thread published (a frozen ``MountStats``
swapped in whole), never the live counters, so the exporter's thread shares nothing
mutable with trio. The metric names and labels are kept as they were.
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

from .errors import MountError
from .stats import MountStats


class SnapshotCollector:
    def __init__(self) -> None:
        self.snapshot: MountStats | None = None

    def collect(self):
        if self.snapshot is None:
            return
        s = self.snapshot
        yield GaugeMetricFamily("thaw_image_bytes", "Bytes of the mounted images",
                                value=s.image_bytes)
        fetched = CounterMetricFamily("thaw_fetched_bytes", "Bytes fetched from the store",
                                      labels=["form"])
        fetched.add_metric(["uncompressed"], s.fetched_bytes)
        fetched.add_metric(["stored"], s.fetched_stored_bytes)
        yield fetched
        chunks = CounterMetricFamily("thaw_tier_chunks", "Chunks served per tier", labels=["tier"])
        data = CounterMetricFamily("thaw_tier_bytes", "Bytes served per tier", labels=["tier"])
        for tier, t in s.tiers.items():
            chunks.add_metric([tier], t["chunks"])
            data.add_metric([tier], t["bytes"])
        yield chunks
        yield data
        if s.peers:
            families = {k: CounterMetricFamily(f"thaw_peer_{k}", f"{k} from each cache peer",
                                               labels=["peer"])
                        for k in ("chunks", "bytes", "errors")}
            for url, p in s.peers.items():
                for k, family in families.items():
                    family.add_metric([url], p[k])
            yield from families.values()
        for name in ("demand_fetches", "prefetches", "retries", "errors", "coalesced_waits"):
            yield CounterMetricFamily(f"thaw_{name}", name.replace("_", " "),
                                      value=getattr(s, name))
        yield CounterMetricFamily("thaw_passthrough_opens", "Opens the kernel served from a "
                                  "backing file", value=s.passthrough_opens)
        yield GaugeMetricFamily("thaw_passthrough_files", "Files ready to be passed through",
                                value=s.passthrough_files)
        requests = CounterMetricFamily("thaw_fuse_requests", "Requests the kernel sent, by "
                                       "handler (lookup_missing: misses it may now answer)",
                                       labels=["op"])
        for op, n in s.fuse_requests.items():
            requests.add_metric([op], n)
        yield requests
        yield CounterMetricFamily("thaw_prefetched_bytes", "Bytes of chunks prefetched",
                                  value=s.prefetched_bytes)
        yield GaugeMetricFamily("thaw_prefetched_unread_bytes", "Bytes prefetched and not "
                                "read since (the waste)", value=s.prefetched_unread_bytes)
        yield GaugeMetricFamily("thaw_hinted_chunks", "Chunks queued from earlier starts' hints",
                                value=s.hinted_chunks)
        lat = GaugeMetricFamily("thaw_fetch_latency_seconds", "Demand fetch latency",
                                labels=["quantile"])
        for q, ms in s.fetch_latency_ms.items():
            lat.add_metric([f"0.{q[1:]}"], ms / 1000)
        yield lat


def start_metrics(addr: str, collector: SnapshotCollector) -> None:
    """Serve ``/metrics`` on ``HOST:PORT`` from a daemon thread."""
    from prometheus_client import start_http_server

    host, _, port = addr.rpartition(":")
    if not port.isdigit():
        raise MountError(f"--metrics wants HOST:PORT, not {addr!r}")
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    except OSError as exc:
        raise MountError(f"cannot serve metrics on {addr}: {exc.strerror}") from None
