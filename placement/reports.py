"""Node reports, read as JSON: what each node's GPUs and cache look like now.

The format (written by ``blobstore.nodereport``, read here without importing it):
``{"version": 1, "node", "peer_url", "written_at" (unix seconds), "gpus": [{"model",
"memory_total", "memory_free"}], "cache": {"bytes_used", "bytes_limit"}, "cached":
{manifest id: bytes of it on the node}}``. ``cached`` is per manifest: the bytes of that
image's distinct chunks present in the node's disk cache, so a partial image and chunks
shared with other images are both priced exactly for every image the node reports. A GPU
is free when at least 90% of its memory is free. Reports older than the TTL are ignored.
"""

from __future__ import annotations

import json
import time

from .model import Node, PlacementInputError

FORMAT_VERSION = 1
DEFAULT_TTL = 30.0
FREE_FRACTION = 0.9


def node_from_report(doc: object, where: str = "report") -> Node:
    if not isinstance(doc, dict):
        raise PlacementInputError(f"{where}: not a JSON object")
    if doc.get("version") != FORMAT_VERSION:
        raise PlacementInputError(f"{where}: report version {doc.get('version')!r}, "
                                  f"expected {FORMAT_VERSION}")
    node, gpus = doc.get("node"), doc.get("gpus")
    if not isinstance(node, str) or not node:
        raise PlacementInputError(f"{where}: missing field 'node'")
    if not isinstance(gpus, list) or not all(isinstance(g, dict) for g in gpus):
        raise PlacementInputError(f"{where}: field 'gpus' must be a list of objects")
    try:
        free = [g for g in gpus if g["memory_free"] >= FREE_FRACTION * g["memory_total"]]
        models = {str(g["model"]) for g in gpus}
        cached = {str(k): int(v) for k, v in (doc.get("cached") or {}).items()}
        cache = doc.get("cache") or {}
        return Node(node, models.pop() if len(models) == 1 else "mixed", len(free),
                    int(min((g["memory_free"] for g in free), default=0)), cached,
                    int(cache.get("bytes_used", 0)), int(cache.get("bytes_limit", 0)))
    except (KeyError, TypeError, ValueError) as exc:
        raise PlacementInputError(f"{where}: malformed field ({exc!r})") from None


def fresh_nodes(reports: list[tuple[str, bytes]], *, ttl: float = DEFAULT_TTL,
                now: float | None = None) -> tuple[list[Node], list[str]]:
    """Nodes from ``(name, json bytes)`` reports written within ``ttl``; and what was
    skipped, with the reason."""
    now = time.time() if now is None else now
    nodes, skipped = [], []
    for name, raw in reports:
        try:
            doc = json.loads(raw)
            node = node_from_report(doc, name)
            written = float(doc.get("written_at", 0))
        except (ValueError, PlacementInputError) as exc:
            skipped.append(f"{name}: {exc}")
            continue
        if now - written > ttl:
            skipped.append(f"{name}: stale ({now - written:.0f}s old, TTL {ttl:.0f}s)")
            continue
        nodes.append(node)
    return nodes, skipped
