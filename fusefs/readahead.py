"""Read-ahead along an image's data stream, across file boundaries.

An image's chunks are in data-stream order, which is path order, and a workload that starts
(an interpreter importing its modules, a server loading its files) reads mostly forward
through it, one small file after another, each a miss that the kernel's read-ahead (within
one file) never sees coming: against a remote store the start is a chain of round trips.
Such reads interleave a few forward streams (a package's modules, the libraries they load,
the standard library), so, as ZFS's zfetch does, several streams are tracked at once
(``streams``, least recently used replaced). A read at most ``gap`` chunks past a stream's
last read (or inside what it queued) continues that stream: its window opens at
``min_bytes`` and doubles each time the reads use up half of what was queued, up to
``max_bytes``, the budget: nothing is queued more than that many stored bytes past the chunk
being read. Any other read starts a new stream; if it missed at the start of a file, its
neighbours are queued at once, since the next file in the stream is the likeliest next
read: ``around`` bytes times the share of such neighbours read lately (``useful``; of the
last ``PROBES`` queued and not yet read, the oldest counts as never read), so a start that
reads whole packages gets them and one that picks a file here and there soon gets few. A
read in the middle of a file only moves a stream whose queued chunks it reached: random
access to a big file fetches nothing extra, and a file read through is the kernel's and the
per-file read-ahead's business. Only reads that missed, or that reached chunks a stream
queued, move it: chunks that hints or the caches brought say nothing about where the
reader goes next.

Read-ahead buys time only where a fetch waits: the read handler sets ``min_bytes`` and
``around`` from the store's measured latency (``inflight.stream_window``: what a reader
takes while one fetch waits), under a chunk for a directory store, so nothing, and 1 MiB
for a store 20 ms away. Measured (``bench/coldstart.py``, ``bench/inference.py``): with a
fixed 1 MiB window and 256 KiB around, ``python3`` from a directory store (``make demo``)
fetched 1.19 bytes it never read per byte read, 0.06 now. At 20 ms the sentence-transformers
start (6,000 reads) takes 25.7 s with nothing around a first miss, 21.6 s with 256 KiB and
19.9 s with 1 MiB, while ``import numpy`` from a Debian image is no faster with any of them
and fetches 0.33, 0.71 and 1.25 bytes never read per byte read: hence ``useful``, with which
the one takes 21 to 23 s and the other fetches 0.87.

Pure logic, no I/O, no trio: the read handler (trio thread) feeds it the chunk index of
each read and queues the indices it returns.
"""

from __future__ import annotations

import bisect
import itertools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

STREAMS = 8
GAP = 8
USEFUL, LEARN, PROBES = 0.5, 0.05, 64  # how the neighbours of a first miss are sized
MIN_BYTES = 1 << 20
MAX_BYTES = 8 << 20


@dataclass
class _Stream:
    last: int  # the chunk read last
    queued_to: int  # chunks below this were queued (or read) already
    window: int = 0  # bytes; 0 until a second read continues the stream


class StreamReadAhead:
    def __init__(self, stored_sizes: Sequence[int], *, streams: int = STREAMS,
                 gap: int = GAP, around: int = 0, min_bytes: int = MIN_BYTES,
                 max_bytes: int = MAX_BYTES) -> None:
        self._ends = list(itertools.accumulate(stored_sizes))  # stream offset after chunk i
        self.streams, self.gap, self.around = streams, gap, min(around, max_bytes)
        self.useful = USEFUL  # the share of a first miss's neighbours read, lately
        self._probes: OrderedDict[int, None] = OrderedDict()  # such neighbours, not read yet
        self.min_bytes, self.max_bytes = min(min_bytes, max_bytes), max_bytes
        self._streams: list[_Stream] = []  # most recently used first

    def _offset(self, index: int) -> int:
        """Stream offset where chunk ``index`` starts."""
        return self._ends[index - 1] if index else 0

    def _upto(self, index: int, start: int, nbytes: int) -> int:
        """The end of the chunks from ``start`` that end within ``nbytes`` past ``index``."""
        return bisect.bisect_right(self._ends, self._ends[index] + nbytes, lo=start)

    def read(self, index: int, missed: bool = True, file_start: bool = True) -> range:
        """A read of chunk ``index`` (``missed``: nobody had asked for it; ``file_start``:
        at offset 0 of its file): the chunks to queue ahead of it, often none."""
        if index in self._probes:  # a first miss's neighbour read: the guess was right
            del self._probes[index]
            self.useful += (1 - self.useful) * LEARN
        for k, s in enumerate(self._streams):
            reach = max(s.last + self.gap, s.queued_to) if file_start else s.queued_to - 1
            if s.last < index <= reach:
                del self._streams[k]
                self._streams.insert(0, s)
                return self._continue(s, index, missed)
        if not file_start:
            return range(0)  # inside a file: the file's own read-ahead has it
        s = _Stream(index, index + 1)
        self._streams.insert(0, s)
        del self._streams[self.streams:]
        if not missed:
            return range(0)
        s.queued_to = self._upto(index, index + 1, int(self.around * self.useful))
        for i in range(index + 1, s.queued_to):
            self._probes[i] = None
        while len(self._probes) > PROBES:  # the oldest never read: a wrong guess
            self._probes.popitem(last=False)
            self.useful *= 1 - LEARN
        return range(index + 1, s.queued_to)

    def _continue(self, s: _Stream, index: int, missed: bool) -> range:
        s.last = index
        if not missed and index >= s.queued_to:
            return range(0)  # hints or a cache had it: no news of where the reader goes
        start = max(s.queued_to, index + 1)
        ahead = self._offset(start) - self._ends[index]  # bytes queued past this chunk
        if s.window and ahead >= s.window // 2:
            return range(0)
        s.window = min(max(s.window * 2, self.min_bytes), self.max_bytes)
        s.queued_to = max(s.queued_to, self._upto(index, start, s.window))
        return range(start, s.queued_to)
