"""Hints: which chunks of an image a workload read, in the order it first read them.

``HintRecorder`` notes each chunk index the first time it is read, with the time since the
recording began; ``save_hints`` merges a recording with what the store already holds for
that manifest and workload (a chunk's place is the mean of its times across runs), so the
order settles over several starts, and writes ``hints/<manifest id>/<workload>``.
``load_hints`` gives the order to prefetch in next time. The restorer records its restores
here; the FUSE daemon can record workload starts the same way. Stored as msgpack:
``{"version": 1, "runs": N, "chunks": [[index, mean seconds], ...]}``; hints a start left
in the same order are not rewritten. The recorder is thread-safe (one lock); the rest is
pure or one store call.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

import msgpack

from ..errors import NotFound
from ..store.base import ObjectStore
from ..store.digest import check_blob_id

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


@dataclass(frozen=True)
class HintList:
    """The stored hints of one image and workload: per chunk index, the mean seconds after
    a start when it was first read, over ``runs`` starts. The one type that the recorders
    (the mount's learners, the restorer) write and every prefetcher reads."""

    runs: int = 0
    times: dict[int, float] = field(default_factory=dict)

    def order(self, chunk_count: int | None = None) -> list[int]:
        """Chunk indexes in the order to prefetch them (within ``chunk_count``)."""
        order = sorted(self.times, key=lambda i: (self.times[i], i))
        return [i for i in order if chunk_count is None or 0 <= i < chunk_count]

    def merged(self, recording: dict[int, float]) -> HintList:
        """These hints with one more start's ``recording`` (a running mean per chunk)."""
        times, runs = dict(self.times), self.runs
        for i, t in recording.items():
            times[i] = (times[i] * runs + t) / (runs + 1) if i in times else t
        return HintList(runs + 1, times)

    def encode(self) -> bytes:
        return msgpack.packb({"version": FORMAT_VERSION, "runs": self.runs, "chunks": [
            [i, round(t, 6)] for i, t in sorted(self.times.items(), key=lambda x: x[1])]})

    @classmethod
    def decode(cls, raw: bytes) -> HintList:
        """Stored hints; garbage counts as none (they only order prefetches)."""
        try:
            doc = msgpack.unpackb(raw, raw=False)
            if doc.get("version") != FORMAT_VERSION:
                return cls()
            return cls(int(doc["runs"]), {int(i): float(t) for i, t in doc["chunks"]})
        except (ValueError, KeyError, TypeError, AttributeError, msgpack.ExtraData):
            return cls()


def read_hints(objects: ObjectStore, manifest_id: str, workload: str) -> HintList:
    try:
        return HintList.decode(objects.get(hints_key(manifest_id, workload)))
    except NotFound:
        return HintList()


def load_hints(objects: ObjectStore, manifest_id: str, workload: str,
               chunk_count: int | None = None) -> list[int]:
    """Chunk indexes in the order to prefetch them; [] when there are none yet."""
    return read_hints(objects, manifest_id, workload).order(chunk_count)


def save_hints(objects: ObjectStore, manifest_id: str, workload: str,
               recording: dict[int, float], stored: HintList | None = None) -> bool:
    """Merge ``recording`` into the stored hints (a running mean per chunk) and write them;
    ``stored``: those hints as read before the start (a GET saved), else read now. Hints
    whose order the recording leaves as it was are not rewritten: a start that repeats the
    last one costs no PUT. Whether they were written."""
    if stored is None:
        stored = read_hints(objects, manifest_id, workload)
    merged = stored.merged(recording)
    if stored.runs and merged.order() == stored.order():
        return False
    objects.put(hints_key(manifest_id, workload), merged.encode())
    return True
