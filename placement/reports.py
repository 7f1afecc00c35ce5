"""Node reports as placement sees them: what each node's GPUs and cache look like now.

The report is ``blobstore.schema.NodeReport``, the one type its writer and readers share
(the one module of thaw's packages placement imports: it is pure). ``cached`` is per
manifest: the bytes of that image's distinct chunks present in the node's disk cache, so a
partial image and chunks shared with other images are both priced exactly for every image
the node reports. A GPU is free when at least 90% of its memory is free. Reports older than
the TTL are ignored.
"""

from __future__ import annotations

import json
import time

from blobstore.schema import NodeReport, ReportInvalid

from .model import Node, PlacementInputError

DEFAULT_TTL = 30.0
FREE_FRACTION = 0.9


def node_from_report(doc: object, where: str = "report") -> Node:
    try:
        report = NodeReport.from_json(doc, where)
    except ReportInvalid as exc:
        raise PlacementInputError(str(exc)) from None
    return node_from(report)


def node_from(report: NodeReport) -> Node:
    free = [g for g in report.gpus if g.memory_free >= FREE_FRACTION * g.memory_total]
    models = {g.model for g in report.gpus}
    return Node(report.node, models.pop() if len(models) == 1 else "mixed", len(free),
                min((g.memory_free for g in free), default=0), dict(report.cached),
                report.cache_used, report.cache_limit)


def fresh_nodes(reports: list[tuple[str, bytes]], *, ttl: float = DEFAULT_TTL,
                now: float | None = None) -> tuple[list[Node], list[str]]:
    """Nodes from ``(name, json bytes)`` reports written within ``ttl``; and what was
    skipped, with the reason."""
    now = time.time() if now is None else now
    nodes, skipped = [], []
    for name, raw in reports:
        try:
            report = NodeReport.from_json(json.loads(raw), name)
        except (ValueError, RecursionError) as exc:  # ReportInvalid too
            skipped.append(f"{name}: {exc}")
            continue
        node, written = node_from(report), report.written_at
        if now - written > ttl:
            skipped.append(f"{name}: stale ({now - written:.0f}s old, TTL {ttl:.0f}s)")
            continue
        nodes.append(node)
    return nodes, skipped
