"""How many fetches to keep in flight against the store: sized by its measured latency.

Fetches in flight are what hides a store's latency: 20 ms away, one fetch at a time moves a
chunk per round trip, and thirty-two overlap them. Against a store that answers at once (a
directory on the node) they hide nothing, and on a few cores each thread more is one more
contender for the GIL: at 32 in flight the daemon spent more CPU handing the GIL between
threads and waking them than hashing and copying (``perf`` of ``bench/datapath.py``'s cold
row). So the limit follows Little's law: enough fetches to carry ``TARGET`` bytes a second
across the store's latency, ``ceil(TARGET * latency / stored chunk size)``, within ``[low,
high]``. The latency is the least of the store's recent fetches (``TierStats.recent``):
what the GIL and busy cores add to the others is not the store's, and counting it would
raise the limit that caused it. A store not yet measured gets ``high``. The same latency
sizes the stream read-ahead's first window (``stream_window``). Pure logic.
"""

from __future__ import annotations

import math

TARGET = 1 << 30  # bytes a second the fetches in flight should be able to carry
READ_RATE = 128 << 20  # bytes a second a starting workload reads along the data stream
WINDOW = (0, 1 << 20)  # a stream read-ahead's first window, at least and at most
EVERY = 16  # fetches between two looks at the store's latency


def in_flight(latency: float, mean_stored: float, *, low: int, high: int,
              target: int = TARGET) -> int:
    """Fetches to keep in flight against a store with this latency (seconds) and stored
    chunk size (bytes)."""
    return min(high, max(low, math.ceil(target * latency / max(mean_stored, 1.0))))


def stream_window(latency: float, *, low: int = WINDOW[0], high: int = WINDOW[1]) -> int:
    """The first window of a stream read-ahead (``readahead``) against a store with this
    latency: what a reader consumes while one fetch waits, within ``[low, high]``. Against
    a near store a wider one only fetches what nothing reads (``bench/coldstart.py``)."""
    return min(high, max(low, int(READ_RATE * latency)))
