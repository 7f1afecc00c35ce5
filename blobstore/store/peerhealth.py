"""How each cache peer has been answering: a circuit breaker and the latencies hedging needs.

A peer that fails ``trip`` times in a row is skipped for ``cool_down`` seconds; then one
request probes it (half-open), and a success closes the breaker again. A peer that served
wrong bytes is skipped at once. A 404 is an answer, not a failure. Thread-safe (a lock).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

TRIP = 3  # failures in a row before a peer is skipped
COOL_DOWN = 30.0  # seconds a tripped peer is skipped before one request probes it


@dataclass
class PeerHealth:
    failures: int = 0  # in a row
    skip_until: float = 0.0
    chunks: int = 0
    bytes: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # of recent answers, seconds


class HealthBook:
    def __init__(self, *, trip: int = TRIP, cool_down: float = COOL_DOWN,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.trip, self.cool_down, self._clock = trip, cool_down, clock
        self.peers: dict[str, PeerHealth] = {}
        self._lock = threading.Lock()

    def usable(self, peer: str) -> bool:
        """Whether to ask ``peer`` now; past a tripped peer's cool-down, this request
        probes it and the next ones wait another cool-down unless it answers."""
        with self._lock:
            h = self.peers.setdefault(peer, PeerHealth())
            if h.failures < self.trip:
                return True
            if self._clock() >= h.skip_until:
                h.skip_until = self._clock() + self.cool_down
                return True
            return False

    def answered(self, peer: str, size: int = 0, seconds: float | None = None) -> None:
        """``peer`` answered: with a blob of ``size`` stored bytes in ``seconds``, or that it
        has none (size 0, no latency)."""
        with self._lock:
            h = self.peers.setdefault(peer, PeerHealth())
            h.failures = 0
            if seconds is not None:
                h.chunks, h.bytes = h.chunks + 1, h.bytes + size
                h.latencies = (h.latencies + [seconds])[-1000:]

    def failed(self, peer: str) -> None:
        with self._lock:
            h = self.peers.setdefault(peer, PeerHealth())
            h.failures += 1
            h.errors += 1
            if h.failures >= self.trip:
                h.skip_until = self._clock() + self.cool_down

    def distrust(self, peer: str) -> None:
        """``peer`` served wrong bytes: a failure, and skipped now, not at the third."""
        with self._lock:
            h = self.peers.setdefault(peer, PeerHealth())
            h.errors += 1
            h.failures = max(h.failures + 1, self.trip)
            h.skip_until = self._clock() + self.cool_down

    def latencies(self, peer: str) -> list[float]:
        with self._lock:
            return sorted(self.peers.get(peer, PeerHealth()).latencies)

    def stats(self) -> dict[str, dict]:
        with self._lock:
            return {p: {"chunks": h.chunks, "bytes": h.bytes, "errors": h.errors,
                        "skipped": h.failures >= self.trip}
                    for p, h in sorted(self.peers.items())}
