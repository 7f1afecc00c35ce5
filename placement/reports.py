"""Node reports as placement sees them: what each node's GPUs and cache look like now.

The report is ``blobstore.schema.NodeReport``, the one type its writer and readers share;
the command line parses it (``blobstore.ops.nodereport.parse_reports``) and passes it in, so
placement imports none of thaw's packages and reads only its fields. ``cached`` is per
manifest: the bytes of that image's distinct chunks present in the node's disk cache, so a
partial image and chunks shared with other images are both priced exactly for every image
the node reports. A GPU is free when at least 90% of its memory is free. Reports older than
the TTL are ignored.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from .model import Node

DEFAULT_TTL = 30.0
FREE_FRACTION = 0.9


def node_from(report: Any) -> Node:
    """A node from a parsed report (a ``NodeReport``)."""
    free = [g for g in report.gpus if g.memory_free >= FREE_FRACTION * g.memory_total]
    models = {g.model for g in report.gpus}
    return Node(report.node, models.pop() if len(models) == 1 else "mixed", len(free),
                min((g.memory_free for g in free), default=0), dict(report.cached),
                report.cache_used, report.cache_limit)


def fresh_nodes(reports: Iterable[tuple[str, Any]], *, ttl: float = DEFAULT_TTL,
                now: float | None = None) -> tuple[list[Node], list[str]]:
    """Nodes from the ``(name, parsed report)`` pairs written within ``ttl``; and what was
    skipped, with the reason."""
    now = time.time() if now is None else now
    nodes, skipped = [], []
    for name, report in reports:
        age = now - report.written_at
        if age > ttl:
            skipped.append(f"{name}: stale ({age:.0f}s old, TTL {ttl:.0f}s)")
            continue
        nodes.append(node_from(report))
    return nodes, skipped
