"""The policies the MILP is measured against: random, Kubernetes ImageLocality, greedy.

Each places one replica at a time, oldest and largest workloads first, on numpy arrays over
all nodes, and is scored by ``account``. Greedy and the completion of the MILP's plan stop
at a ``deadline`` on ``clock`` (``time.perf_counter`` unless a test injects one), leaving
what they have not placed pending: the extender's calls have limits of their own. Pure;
thread-safe (each call owns its arrays).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable

import numpy as np

from .account import account
from .model import Node, Result, Workload
from .prices import Prices

MB = 1 << 20
K8S_MIN, K8S_MAX = 23 * MB, 1000 * MB  # ImageLocality's thresholds (one container)
Clock = Callable[[], float]


class _Cluster:
    """Free GPUs and per-image missing bytes, updated as replicas are placed."""

    def __init__(self, workloads: list[Workload], nodes: list[Node],
                 prices: Prices | None = None, deadline: float = math.inf,
                 clock: Clock = time.perf_counter) -> None:
        self.workloads, self.nodes = workloads, nodes
        self.deadline, self.clock = deadline, clock
        self.stopped = False  # the deadline came before every replica was placed
        self.prices = prices or Prices(nodes, {w.image for w in workloads})
        self.free = self.prices.free.copy()
        self.starts = np.zeros(len(nodes), dtype=np.int64)
        self._missing: dict[str, np.ndarray] = {}
        self._suits: dict[tuple[int, str | None], np.ndarray] = {}

    def missing(self, w: Workload) -> np.ndarray:
        if w.image not in self._missing:
            self._missing[w.image] = self.prices.missing(w)
        return self._missing[w.image]

    def feasible(self, w: Workload) -> np.ndarray:
        return (self.free >= w.gpus) & self._suited(w)

    def _suited(self, w: Workload) -> np.ndarray:
        """Nodes whose GPUs are of ``w``'s model and memory, placements aside."""
        key = (w.gpu_memory, w.gpu_model)
        if key not in self._suits:
            self._suits[key] = self.prices.suits(w)
        return self._suits[key]

    def past_deadline(self) -> bool:
        if not self.stopped and self.clock() > self.deadline:
            self.stopped = True
        return self.stopped

    def place(self, w: Workload, n: int, k: int = 1) -> None:
        self.free[n] -= w.gpus * k
        self.starts[n] += k
        self.missing(w)[n] = 0.0  # the node now holds the image


def order(workloads: list[Workload]) -> list[int]:
    """Oldest first, then the largest (hardest to fit)."""
    return sorted(range(len(workloads)), key=lambda i: (-workloads[i].age,
                                                         -workloads[i].gpus, i))


def _place_all(c: _Cluster, todo: dict[int, int], choose, max_starts: int | None = None,
               batch: bool = False, widest_first: bool = False) -> list[tuple[int, int, int]]:
    """Place ``todo`` replicas per workload, oldest first (or widest first, which packs GPUs
    best). With ``batch``, as many replicas as fit go to the chosen node at once: after the
    first, the image costs nothing there, so a bytes-first rule would choose it again."""
    placed = []
    sequence = order(c.workloads)
    if widest_first:
        sequence.sort(key=lambda i: -c.workloads[i].gpus)
    for i in sequence:
        w = c.workloads[i]
        left = todo.get(i, 0)
        while left > 0 and not c.past_deadline():
            move = _move(c, w, left if batch else 1, choose, max_starts)
            if move is None:
                break
            n, k = move
            c.place(w, n, k)
            placed.append((i, n, k))
            left -= k
    return placed


def _move(c: _Cluster, w: Workload, most: int, choose, max_starts: int | None
          ) -> tuple[int, int] | None:
    """The node ``choose`` picks for ``w`` among those it fits now, and how many of its
    replicas go there (up to ``most``, as many as the node has GPUs and starts for); None
    when it fits nowhere. ``choose(c, w, ok, room)``: ``room`` is how many would go to
    each node."""
    ok = c.feasible(w)
    if max_starts is not None:
        ok &= c.starts < max_starts
    if not ok.any():
        return None
    room = np.minimum(most, c.free // w.gpus)
    if max_starts is not None:
        room = np.minimum(room, max_starts - c.starts)
    n = choose(c, w, ok, room)
    return n, int(room[n])


def _run(name: str, workloads: list[Workload], nodes: list[Node], choose,
         prices: Prices | None = None, batch: bool = False,
         max_starts: int | None = None, deadline: float = math.inf,
         clock: Clock = time.perf_counter) -> Result:
    started = clock()
    c = _Cluster(workloads, nodes, prices, deadline, clock)
    placed = _place_all(c, {i: w.replicas for i, w in enumerate(workloads)}, choose,
                        max_starts, batch=batch)
    note = "time limit: the rest left pending" if c.stopped else ""
    return account(name, workloads, nodes, placed, clock() - started, note)


def _fewest_bytes(c: _Cluster, w: Workload, ok: np.ndarray, room: np.ndarray) -> int:
    """Bytes first, then the tightest fit, then the lowest index."""
    return _least(c, np.where(ok, c.missing(w), np.inf))


def _fewest_bytes_each(c: _Cluster, w: Workload, ok: np.ndarray, room: np.ndarray) -> int:
    """Bytes per replica that goes there first (the fetch shared among them), then the
    tightest fit: under tight load a node missing few bytes but with room for one replica
    cost a fetch for each, where a roomier one shares one among many (the completion of
    the MILP's plan; 5,000x1,000, seed 0: 587 -> 431 GiB at normal load)."""
    return _least(c, np.where(ok, c.missing(w) / np.maximum(room, 1), np.inf))


def _least(c: _Cluster, cost: np.ndarray) -> int:
    best = np.flatnonzero(cost == cost.min())
    return int(best[np.argmin(c.free[best])] if len(best) > 1 else best[0])


def greedy(workloads: list[Workload], nodes: list[Node], prices: Prices | None = None,
           max_starts: int | None = None, *, deadline: float = math.inf,
           clock: Clock = time.perf_counter) -> Result:
    """Each replica where the fewest bytes are missing; ties to the tightest fit. What is
    not placed by ``deadline`` is left pending."""
    return _run("greedy", workloads, nodes, _fewest_bytes, prices, batch=True,
                max_starts=max_starts, deadline=deadline, clock=clock)


def complete(workloads: list[Workload], nodes: list[Node], prices: Prices,
             placed: list[tuple[int, int, int]], todo: dict[int, int],
             max_starts: int | None = None, widest_first: bool | None = True, *,
             deadline: float = math.inf, clock: Clock = time.perf_counter
             ) -> list[tuple[int, int, int]]:
    """``placed`` plus ``todo`` (workload index -> replicas) placed where the fewest bytes
    per replica are missing (``_fewest_bytes_each``; greedy's rule counts bytes per move),
    widest or oldest workloads first; or (``widest_first=None``) cheapest first. What is
    not placed by ``deadline`` is left pending."""
    c = _Cluster(workloads, nodes, prices, deadline, clock)
    for i, n, k in placed:
        c.place(workloads[i], n, k)
    if widest_first is None:
        return placed + _cheapest_first(c, todo, max_starts)
    return placed + _place_all(c, todo, _fewest_bytes_each, max_starts, batch=True,
                               widest_first=widest_first)


def _cheapest_first(c: _Cluster, todo: dict[int, int], max_starts: int | None
                    ) -> list[tuple[int, int, int]]:
    """The cheapest move among all workloads left, again and again, widest first (which
    packs GPUs best), then cheapest: not one workload after another, as under tight load
    the first ones took the nodes the others needed most.
    Lazily priced: a workload keeps the cost it had when last priced, and is priced again
    when it comes to the top, or when a workload of its image lands somewhere (which makes
    that node cheaper for it). A cost that fell otherwise (its node filled and a roomier
    one is cheaper per replica) is found late: a heuristic's order, never an overbooking,
    since every move is priced on the cluster as it is then."""
    placed = []
    left = {i: k for i, k in todo.items() if k > 0}
    by_image: dict[str, list[int]] = {}
    for i in left:
        by_image.setdefault(c.workloads[i].image, []).append(i)
    heap = [(-c.workloads[i].gpus, 0.0, i) for i in sorted(left)]
    while heap and not c.past_deadline():
        _, _, i = heapq.heappop(heap)
        if left.get(i, 0) <= 0:
            continue
        w = c.workloads[i]
        move = _move(c, w, left[i], _fewest_bytes_each, max_starts)
        if move is None:
            continue  # nowhere to go: pending
        n, k = move
        cost = float(c.missing(w)[n]) / k  # bytes per replica of this move
        if heap and (-w.gpus, cost) > heap[0][:2]:
            heapq.heappush(heap, (-w.gpus, cost, i))  # another may be cheaper now
            continue
        c.place(w, n, k)
        placed.append((i, n, k))
        left[i] -= k
        for j in by_image[w.image]:  # the image is on n now: cheaper there for them
            if left[j] > 0:
                heapq.heappush(heap, (-c.workloads[j].gpus, 0.0, j))
    return placed


def random_policy(workloads: list[Workload], nodes: list[Node], seed: int = 0) -> Result:
    rng = np.random.default_rng(seed)
    return _run("random", workloads, nodes,
                lambda c, w, ok, room: int(rng.choice(np.flatnonzero(ok))))


def image_locality(workloads: list[Workload], nodes: list[Node]) -> Result:
    """Kubernetes' ImageLocality score: only whole images count, scaled by how many nodes
    hold them, clamped to [23 MB, 1000 MB]; ties go to the least allocated node."""
    prices = Prices(nodes, {w.image for w in workloads})
    holders: dict[str, int] = {}
    whole: dict[str, np.ndarray] = {}
    for w in workloads:
        arr = prices.missing(w) == 0
        whole[w.image] = arr
        holders[w.image] = int(arr.sum())

    def choose(c: _Cluster, w: Workload, ok: np.ndarray, room: np.ndarray) -> int:
        spread = holders[w.image] / len(nodes)
        total = np.where(whole[w.image], w.image_bytes * spread, 0.0)
        clamped = np.clip(total, K8S_MIN, K8S_MAX)
        score = (clamped - K8S_MIN) * 100 // (K8S_MAX - K8S_MIN)
        score = np.where(ok, score * 1000 + c.free, -1)  # least allocated breaks ties
        return int(np.argmax(score))

    return _run("k8s-imagelocality", workloads, nodes, choose)
