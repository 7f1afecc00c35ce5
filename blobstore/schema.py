"""The node report, as one frozen type that its writer and every reader use.

A node daemon writes ``nodes/<node id>.json`` every few seconds (``ops.nodereport``); the
extender, ``thaw place`` and ``--peers store`` read it. The document:
``{"version": 1, "node", "peer_url", "written_at" (unix seconds), "gpus": [{"model",
"memory_total", "memory_free"}], "cache": {"bytes_used", "bytes_limit"}, "cached":
{manifest id: bytes of it on the node}}``. ``NodeReport.from_json`` checks every field a
reader uses and says which one is wrong (``ReportInvalid``); a report is untrusted input.
To add a field: add it here, give it a default, and the writer and every reader see it.

Pure, imports nothing (not even ``blobstore.errors``), so that placement, which reasons
about plain data and imports none of thaw's packages, may import this one module
(``docs/architecture.md``'s import rules). Immutable; thread-safe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

FORMAT_VERSION = 1


class ReportInvalid(ValueError):
    """A node report that cannot be used; the message names the field."""


@dataclass(frozen=True)
class GpuReport:
    model: str
    memory_total: int  # bytes
    memory_free: int  # bytes

    def as_json(self) -> dict:
        return {"model": self.model, "memory_total": self.memory_total,
                "memory_free": self.memory_free}


@dataclass(frozen=True)
class NodeReport:
    node: str
    written_at: float  # unix seconds, by the writer's clock
    gpus: tuple[GpuReport, ...] = ()
    cache_used: int = 0
    cache_limit: int = 0
    cached: dict[str, int] = field(default_factory=dict)  # manifest id -> bytes on the node
    peer_url: str | None = None

    def as_json(self) -> dict:
        return {"version": FORMAT_VERSION, "node": self.node, "peer_url": self.peer_url,
                "written_at": self.written_at, "gpus": [g.as_json() for g in self.gpus],
                "cache": {"bytes_used": self.cache_used, "bytes_limit": self.cache_limit},
                "cached": {k: v for k, v in sorted(self.cached.items()) if v > 0}}

    @classmethod
    def from_json(cls, doc: object, where: str = "report") -> NodeReport:
        """A decoded report document, checked; ReportInvalid names what is wrong."""
        if not isinstance(doc, dict):
            raise ReportInvalid(f"{where}: not a JSON object")
        if doc.get("version") != FORMAT_VERSION:
            raise ReportInvalid(f"{where}: report version {doc.get('version')!r}, expected "
                                f"{FORMAT_VERSION}")
        node, gpus, cache = doc.get("node"), doc.get("gpus"), doc.get("cache") or {}
        if not isinstance(node, str) or not node:
            raise ReportInvalid(f"{where}: missing field 'node'")
        if not isinstance(gpus, list) or not all(isinstance(g, dict) for g in gpus):
            raise ReportInvalid(f"{where}: field 'gpus' must be a list of objects")
        peer = doc.get("peer_url")
        if not isinstance(cache, dict) or not isinstance(doc.get("cached") or {}, dict) \
                or not isinstance(peer, str | None):
            raise ReportInvalid(f"{where}: field 'cache', 'cached' or 'peer_url' is malformed")
        try:
            return cls(node, _number(doc.get("written_at", 0)),
                       tuple(GpuReport(str(g["model"]), _count(g["memory_total"]),
                                       _count(g["memory_free"])) for g in gpus),
                       _count(cache.get("bytes_used", 0)), _count(cache.get("bytes_limit", 0)),
                       {str(k): _count(v) for k, v in (doc.get("cached") or {}).items()},
                       peer or None)
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ReportInvalid(f"{where}: malformed field ({exc!r})") from None


def _number(x: object) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise ValueError(f"{x!r} is not a finite number")
    return float(x)


def _count(x: object) -> int:
    value = _number(x)
    if value < 0 or value != int(value):
        raise ValueError(f"{x!r} is not a count")
    return int(value)
