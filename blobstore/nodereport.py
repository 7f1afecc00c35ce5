"""Node reports: what a node tells placement, written to ``nodes/<node id>.json``.

A report holds the node's GPUs (from NVML through pynvml, or given on the command line where
there is none), its disk cache's size and bound, and for each manifest it knows the bytes of
that image's distinct chunks already in its cache. Per manifest rather than per chunk group:
placement prices "bytes still to fetch" per image, and counting each image's own chunks
prices partial images and chunks shared between images exactly, in one number per image.
The format is read, without importing this module, by ``placement.reports``. Pure functions
and one store write; thread-safe.
"""

from __future__ import annotations

import json
import re
import time

from .base import ObjectStore
from .errors import UsageError

FORMAT_VERSION = 1
PREFIX = "nodes/"
_GPUS_RE = re.compile(r"(\d+)x([A-Za-z0-9_.-]+):(\d+)([GM])")


def parse_gpus(spec: str) -> list[dict]:
    """``8xH200:141G`` as a list of idle GPUs, for nodes without NVML."""
    match = _GPUS_RE.fullmatch(spec.strip())
    if not match:
        raise UsageError(f"invalid --gpus {spec!r}: use COUNTxMODEL:MEMORY, e.g. 8xH200:141G")
    count, model, mem, unit = match.groups()
    total = int(mem) << (30 if unit == "G" else 20)
    return [{"model": model, "memory_total": total, "memory_free": total}
            for _ in range(int(count))]


def build_report(node: str, gpus: list[dict], cache_used: int, cache_limit: int,
                 cached: dict[str, int], peer_url: str | None = None,
                 now: float | None = None) -> dict:
    return {"version": FORMAT_VERSION, "node": node, "peer_url": peer_url,
            "written_at": time.time() if now is None else now, "gpus": gpus,
            "cache": {"bytes_used": cache_used, "bytes_limit": cache_limit},
            "cached": {k: v for k, v in sorted(cached.items()) if v > 0}}


def write_report(objects: ObjectStore, report: dict) -> None:
    objects.put(f"{PREFIX}{report['node']}.json",
                json.dumps(report, sort_keys=True).encode())


def read_reports(objects: ObjectStore) -> list[tuple[str, bytes]]:
    """Every report object as ``(key, bytes)``, unparsed (placement parses them)."""
    return [(key, objects.get(key)) for key in objects.list(PREFIX) if key.endswith(".json")]


def peer_urls(objects: ObjectStore, ttl: float = 60.0, now: float | None = None) -> list[str]:
    """The ``peer_url`` of every node whose report is fresher than ``ttl`` seconds
    (``--peers store``); malformed reports are skipped."""
    now = time.time() if now is None else now
    urls = []
    for _, raw in read_reports(objects):
        try:
            doc = json.loads(raw)
            url, written = doc.get("peer_url"), float(doc.get("written_at", 0))
        except (ValueError, AttributeError, TypeError):
            continue
        if isinstance(url, str) and url and now - written <= ttl:
            urls.append(url)
    return urls
