"""Hints: which chunks of an image a workload read, in the order it first read them.

``HintRecorder`` notes each chunk index the first time it is read, with the time since the
recording began; ``save_hints`` merges a recording with what the store already holds for
that manifest and workload (a chunk's place is the mean of its times across runs), so the
order settles over several starts, and writes ``hints/<manifest id>/<workload>``.
``load_hints`` gives the order to prefetch in next time. The restorer records its restores
here; the FUSE daemon can record workload starts the same way. Stored as msgpack:
``{"version": 1, "runs": N, "chunks": [[index, mean seconds], ...]}``. The recorder is
thread-safe (one lock); the rest is pure or one store call.
"""

from __future__ import annotations

import re
import threading
import time

import msgpack

from .base import ObjectStore
from .digest import check_blob_id
from .errors import NotFound

FORMAT_VERSION = 1
PREFIX = "hints/"
START = "start"  # the workload a FUSE mount records and prefetches unless told another
_WORKLOAD_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")


def hints_key(manifest_id: str, workload: str) -> str:
    if not _WORKLOAD_RE.fullmatch(workload):
        raise ValueError(f"invalid workload name for hints: {workload!r}")
    return f"{PREFIX}{check_blob_id(manifest_id)}/{workload}"


class HintRecorder:
    def __init__(self) -> None:
        self._first: dict[int, float] = {}
        self._start = time.monotonic()
        self._lock = threading.Lock()

    def read(self, chunk_index: int) -> None:
        with self._lock:
            if chunk_index not in self._first:
                self._first[chunk_index] = time.monotonic() - self._start

    def recording(self) -> dict[int, float]:
        with self._lock:
            return dict(self._first)


def _decode(raw: bytes) -> tuple[int, dict[int, float]]:
    """(runs, {chunk: mean seconds}) from stored hints; garbage counts as no hints."""
    try:
        doc = msgpack.unpackb(raw, raw=False)
        if doc.get("version") != FORMAT_VERSION:
            return 0, {}
        return int(doc["runs"]), {int(i): float(t) for i, t in doc["chunks"]}
    except (ValueError, KeyError, TypeError, AttributeError, msgpack.ExtraData):
        return 0, {}


def load_hints(objects: ObjectStore, manifest_id: str, workload: str,
               chunk_count: int | None = None) -> list[int]:
    """Chunk indexes in the order to prefetch them; [] when there are none yet."""
    try:
        raw = objects.get(hints_key(manifest_id, workload))
    except NotFound:
        return []
    _, times = _decode(raw)
    order = sorted(times, key=lambda i: (times[i], i))
    return [i for i in order if chunk_count is None or 0 <= i < chunk_count]


def save_hints(objects: ObjectStore, manifest_id: str, workload: str,
               recording: dict[int, float]) -> None:
    """Merge ``recording`` into the stored hints (a running mean per chunk) and write."""
    key = hints_key(manifest_id, workload)
    try:
        runs, times = _decode(objects.get(key))
    except NotFound:
        runs, times = 0, {}
    for i, t in recording.items():
        times[i] = (times[i] * runs + t) / (runs + 1) if i in times else t
    doc = {"version": FORMAT_VERSION, "runs": runs + 1,
           "chunks": [[i, round(t, 6)] for i, t in sorted(times.items(), key=lambda x: x[1])]}
    objects.put(key, msgpack.packb(doc))
