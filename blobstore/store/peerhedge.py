"""When to hedge a request to a chunk's first owner by asking its second owner too.

A request slower than the first owner's recent p90 (at least ``MIN_HEDGE``, once there are
``HEDGE_SAMPLES`` answers to know it) is hedged, as Spegel does, at most ``HEDGE_SHARE`` of
the requests that have a second owner (The Tail at Scale's budget): a node that is itself
the slow part (every answer waits on its own cores) finds every peer slower than its p90
at once, and hedging them all doubles the load that made them slow (unbounded, node 2's
model read in bench/peers.py's setup took 0.70 s where it took 0.55 s with no hedging,
medians of three). Pure policy; thread-safe (a lock).
"""

from __future__ import annotations

import threading

MIN_HEDGE = 0.02  # seconds: never hedge sooner than this
HEDGE_SAMPLES = 20  # answers from a peer before its p90 is trusted
HEDGE_SHARE = 0.05  # of the requests that have a second owner, at most this many hedged


class HedgePolicy:
    def __init__(self, share: float = HEDGE_SHARE) -> None:
        self.share = share
        self.asked = 0  # requests that had a second owner to hedge to
        self.hedged = 0  # requests that were also sent to the second owner
        self._lock = threading.Lock()

    @staticmethod
    def delay(latencies: list[float]) -> float | None:
        """Seconds after which a request is hedged, from the first owner's sorted recent
        latencies; None while there are too few to know."""
        if len(latencies) < HEDGE_SAMPLES:
            return None
        return max(MIN_HEDGE, latencies[int(len(latencies) * 0.9)])

    def may_hedge(self) -> bool:
        """Counts a request that has a second owner; whether hedges are still within the
        share."""
        with self._lock:
            self.asked += 1
            return self.hedged < self.share * self.asked

    def hedging(self) -> None:
        """A hedge is sent."""
        with self._lock:
            self.hedged += 1
