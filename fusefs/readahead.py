"""Read-ahead along an image's data stream, across file boundaries.

An image's chunks are in data-stream order, which is path order, and a workload that starts
(an interpreter importing its modules, a server loading its files) reads mostly forward
through it: one small file after another, each a miss that the kernel's read-ahead (within
one file) never sees coming, so against a remote store the start is a chain of round trips.
As the kernel's read-ahead does within a file, a window opens only when reads show a
forward pattern (each read at most ``gap`` chunks past the one before), doubles each time
the reads use up half of what was queued, up to ``max_bytes``, and closes on a jump, so
random reads fetch nothing extra. ``max_bytes`` is the budget: what is queued never reaches
more than that many stored bytes past the chunk being read. Only reads that missed, or that
reached chunks this read-ahead queued, move the window (the kernel's read-ahead marker):
chunks that hints or the caches brought say nothing about where the reader goes next.

Pure logic, no I/O, no trio: the read handler (trio thread) feeds it the chunk index of
each read and queues the indices it returns.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence

MIN_BYTES = 1 << 20
MAX_BYTES = 8 << 20
GAP = 4


class StreamReadAhead:
    def __init__(self, stored_sizes: Sequence[int], *, min_bytes: int = MIN_BYTES,
                 max_bytes: int = MAX_BYTES, gap: int = GAP) -> None:
        self._ends = list(itertools.accumulate(stored_sizes))  # stream offset after chunk i
        self.min_bytes, self.max_bytes, self.gap = min_bytes, min(max_bytes, 1 << 62), gap
        self._last = -gap - 1  # the chunk read last
        self._queued_to = 0  # chunks below this index were queued (or read) already
        self.window = 0  # bytes; 0 while reads show no forward pattern

    def _offset(self, index: int) -> int:
        """Stream offset where chunk ``index`` starts."""
        return self._ends[index - 1] if index else 0

    def read(self, index: int, missed: bool = True) -> range:
        """A read of chunk ``index`` (``missed``: nobody had asked for it): the chunks to
        queue ahead of it, often none."""
        forward = self._last < index <= max(self._last + self.gap, self._queued_to)
        self._last = index
        if not forward:
            self.window = 0
            self._queued_to = index + 1
            return range(0)
        if not missed and index >= self._queued_to:
            return range(0)  # hints or a cache had it: no news of where the reader goes
        start = max(self._queued_to, index + 1)
        ahead = self._offset(start) - self._ends[index]  # bytes queued past this chunk
        if self.window and ahead >= self.window // 2:
            return range(0)
        self.window = min(max(self.window * 2, self.min_bytes), self.max_bytes)
        # The last chunk that ends within the window past this one.
        stop = bisect.bisect_right(self._ends, self._ends[index] + self.window, lo=start)
        self._queued_to = max(self._queued_to, stop)
        return range(start, stop)
