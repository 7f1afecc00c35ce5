"""The store's view the extender answers from, kept so that no request waits on the store.

``StoreView.nodes()`` is the last snapshot of the node reports; one older than ``refresh``
seconds is read again by the first caller to find it so, in a thread of its own, while
every request goes on with the last one (only the very first snapshot is waited for). A
snapshot's ``Prices`` are built once, by whoever plans first with it (the planning thread),
not inside a placement's time limit: at 10,000 nodes they were half of a 5 s limit.
``image(ref)`` resolves an image (manifest id, bytes) in a pool thread, waiting at most
``wait`` seconds: a store that is slow answers the request as if the image were unknown
(scores 0, every node passes), and the answer is kept for the next one. The scheduler
gives an extender's ``/filter`` and ``/prioritize`` 2 s (``httpTimeout`` in
``docker/k8s/scheduler-config.yaml``). Thread-safe (a lock; store reads outside it).
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .model import Node
from .prices import Prices

log = logging.getLogger(__name__)
IMAGE_TTL = 30.0  # seconds a resolved tag is believed
WAIT = 1.0  # seconds a request waits for an image to be resolved


@dataclass
class Snapshot:
    nodes: dict[str, Node]
    at: float
    _prices: Prices | None = field(default=None, repr=False)
    _images: frozenset = field(default=frozenset(), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def prices(self, images: set[str]) -> Prices:
        """The prices of at least ``images``, over ``nodes`` in their order: built once,
        and again only when an image is asked about that they lack (every image the
        reports name took 7.9 s at 10,000 nodes, the 2,000 asked about 2.6 s)."""
        with self._lock:
            if self._prices is None or not images <= self._images:
                self._images = self._images | images
                self._prices = Prices(list(self.nodes.values()), set(self._images))
            return self._prices


class StoreView:
    def __init__(self, reports: Callable[[], dict[str, Node]],
                 resolve: Callable[[str], tuple[str, int]], *, refresh: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, wait: float = WAIT) -> None:
        self._reports, self._resolve, self.refresh, self._clock = reports, resolve, refresh, clock
        self.wait = wait
        self._snap = Snapshot({}, -math.inf)
        self._reading = False
        self._images: dict[str, tuple[float, tuple[str, int]]] = {}
        self._resolving: dict[str, concurrent.futures.Future] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(4, "thaw-resolve")
        self._lock = threading.Lock()

    def snapshot(self) -> Snapshot:
        with self._lock:
            snap = self._snap
            due = self._clock() - snap.at >= self.refresh and not self._reading
            self._reading = self._reading or due
        if due and snap.at == -math.inf:
            self._read()  # nothing to answer from yet
        elif due:
            threading.Thread(target=self._read, daemon=True, name="thaw-reports").start()
        with self._lock:
            return self._snap

    def nodes(self) -> dict[str, Node]:
        return self.snapshot().nodes

    def _read(self) -> None:
        try:
            nodes = self._reports()
        except Exception as exc:  # noqa: BLE001 - keep the last view, say why
            log.warning("node reports not read, using the last ones: %s", exc)
            nodes = None
        with self._lock:
            self._snap = Snapshot(self._snap.nodes if nodes is None else nodes, self._clock())
            self._reading = False

    def image(self, ref: str) -> tuple[str, int]:
        """(manifest id, bytes) of ``ref``; what resolving raises, or TimeoutError when it
        takes longer than ``wait`` (it goes on, and its answer is kept)."""
        with self._lock:
            hit = self._images.get(ref)
            if hit and self._clock() - hit[0] < IMAGE_TTL:
                return hit[1]
            future = self._resolving.get(ref)
            if future is None:
                future = self._resolving[ref] = self._pool.submit(self._keep, ref)
        try:
            return future.result(timeout=self.wait)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"image {ref[:200]} not resolved within {self.wait:g}s "
                               "(the store is slow); asked again next time") from None

    def _keep(self, ref: str) -> tuple[str, int]:
        try:
            got = self._resolve(ref)
            with self._lock:
                self._images[ref] = (self._clock(), got)
            return got
        finally:
            with self._lock:
                self._resolving.pop(ref, None)
