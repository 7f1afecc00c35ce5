"""Node reports in the store: what a node tells placement, at ``nodes/<node id>.json``.

A report (``blobstore.schema.NodeReport``, the one type its writer and readers share) holds
the node's GPUs (from NVML through pynvml, or given on the command line where there is
none), its disk cache's size and bound, and for each manifest it knows the bytes of that
image's distinct chunks already in its cache. Per manifest rather than per chunk group:
placement prices "bytes still to fetch" per image, and counting each image's own chunks
prices partial images and chunks shared between images exactly, in one number per image.
Pure functions and store calls; thread-safe.
"""

from __future__ import annotations

import json
import re
import time

from ..errors import UsageError
from ..schema import GpuReport, NodeReport
from ..store.base import ObjectStore

PREFIX = "nodes/"
_GPUS_RE = re.compile(r"(\d+)x([A-Za-z0-9_.-]+):(\d+)([GM])")


def parse_gpus(spec: str) -> list[GpuReport]:
    """``8xH200:141G`` as a list of idle GPUs, for nodes without NVML."""
    match = _GPUS_RE.fullmatch(spec.strip())
    if not match:
        raise UsageError(f"invalid --gpus {spec!r}: use COUNTxMODEL:MEMORY, e.g. 8xH200:141G")
    count, model, mem, unit = match.groups()
    total = int(mem) << (30 if unit == "G" else 20)
    return [GpuReport(model, total, total) for _ in range(int(count))]


def build_report(node: str, gpus: list[GpuReport], cache_used: int, cache_limit: int,
                 cached: dict[str, int], peer_url: str | None = None,
                 now: float | None = None) -> NodeReport:
    return NodeReport(node, time.time() if now is None else now, tuple(gpus), cache_used,
                      cache_limit, {k: v for k, v in cached.items() if v > 0}, peer_url)


def write_report(objects: ObjectStore, report: NodeReport) -> None:
    objects.put(f"{PREFIX}{report.node}.json",
                json.dumps(report.as_json(), sort_keys=True).encode())


def read_reports(objects: ObjectStore) -> list[tuple[str, bytes]]:
    """Every report object as ``(key, bytes)``, unparsed."""
    return [(key, objects.get(key)) for key in objects.list(PREFIX) if key.endswith(".json")]


def parse_reports(raw: list[tuple[str, bytes]]
                  ) -> tuple[list[tuple[str, NodeReport]], list[str]]:
    """The ``(name, json bytes)`` reports that parse, as ``(name, report)``, and why each
    other one does not: a report is untrusted input, skipped with a reason, never an error."""
    reports, skipped = [], []
    for name, data in raw:
        try:
            reports.append((name, NodeReport.from_json(json.loads(data), name)))
        except (ValueError, RecursionError) as exc:  # ReportInvalid too
            skipped.append(f"{name}: {exc}")
    return reports, skipped


def peer_urls(objects: ObjectStore, ttl: float = 60.0, now: float | None = None) -> list[str]:
    """The ``peer_url`` of every node whose report is fresher than ``ttl`` seconds
    (``--peers store``); malformed reports are skipped."""
    now = time.time() if now is None else now
    reports, _ = parse_reports(read_reports(objects))
    return [r.peer_url for _, r in reports if r.peer_url and now - r.written_at <= ttl]
