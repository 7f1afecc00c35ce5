"""Local search after ``consolidate``: move an image's replicas onto a node that holds more
of the image, making room there by moving other replicas out.

Under tight load every node that holds an image is full, so neither the relaxation's
rounding nor ``consolidate`` (which moves replicas only into free GPUs) can take a replica
to where its image is: the plan fetches a 40 GB image onto an empty node while twenty nodes
hold it, each running replicas whose images are small or held elsewhere too. ``rehome``
visits the (image, node) pairs that cost the most and, for each, the nodes that would cost
less for that image (``CANDIDATES`` of them, cheapest first, then those with the most free
GPUs: a node that holds the image already costs nothing, and hundreds may). A candidate
that lacks room is emptied enough by moving its other replicas, widest first, each to the
node where its image costs least (the node being vacated included, and nodes this move
already pays for); a replica that fits nowhere else stays, and narrower ones are tried.
The best candidate is taken when what the move fetches, less the fetches it ends, is less
than the pair's cost; then the pairs are visited again, until none improves or
``deadline``.

Every move keeps each node's GPUs, GPU memory and model within bounds and places every
replica it moves, so the plan's pending count is unchanged and its bytes only go down. It
does not track ``max_starts`` (replicas started per node): ``milp.solve`` runs it only
without that cap. 1,000 x 200 under tight load (``bench/placement.py``, three seeds): 658,
401 and 818 GiB before it, 452, 260 and 576 after, in under 0.2 s each; the integer
program solved for 240 s found 339 and 249 GiB for the first two. Pure; stops at
``deadline`` on ``clock`` (``time.perf_counter``).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict

import numpy as np

from .model import Workload
from .prices import Prices

CANDIDATES = 256  # nodes tried for each (image, node) pair, cheapest and emptiest first


class _Plan:
    """Replicas per (class, node), per image and node, and free GPUs, kept in step."""

    def __init__(self, workloads: list[Workload], prices: Prices,
                 placed: list[tuple[int, int, int]]) -> None:
        self.gpus = np.array([w.gpus for w in workloads], np.int64)
        self.image = [w.image for w in workloads]
        self.free = prices.free.astype(np.int64).copy()
        self.on: dict[tuple[int, int], int] = defaultdict(int)
        self.classes: dict[int, set[int]] = defaultdict(set)  # node -> classes on it
        first: dict[str, int] = {}
        for c, w in enumerate(workloads):
            first.setdefault(w.image, c)
        self.missing = {img: prices.missing(workloads[c]).astype(np.float64)
                        for img, c in first.items()}
        self.held = {img: np.zeros(len(self.free), np.int64) for img in first}
        self.fits = [prices.suits(w) for w in workloads]
        self._prices: dict[str, np.ndarray] = {}  # price(img), until img next moves
        for c, n, k in placed:
            self.move(c, None, n, k)

    def move(self, c: int, src: int | None, dst: int, k: int = 1) -> None:
        self._prices.pop(self.image[c], None)
        for node, sign in ((src, -1), (dst, 1)):
            if node is None:
                continue
            self.on[(c, node)] += sign * k
            self.held[self.image[c]][node] += sign * k
            self.free[node] -= sign * k * self.gpus[c]
            if self.on[(c, node)]:
                self.classes[node].add(c)
            else:
                self.classes[node].discard(c)
                del self.on[(c, node)]

    def price(self, img: str) -> np.ndarray:
        """What one more replica of ``img`` costs on each node: nothing where it is (the
        caller must not change it)."""
        got = self._prices.get(img)
        if got is None:
            got = self._prices[img] = np.where(self.held[img] > 0, 0.0, self.missing[img])
        return got

    def leaving_saves(self, m: int, img: str) -> float:
        """The most that moving every other image's replicas off node ``m`` could save."""
        return sum(float(self.missing[j][m]) for j in {self.image[c] for c in self.classes[m]}
                   if j != img)

    def charged(self) -> list[tuple[float, str, int]]:
        """(cost, image, node) of every fetch the plan makes, dearest first."""
        return sorted(((float(self.missing[img][n]), img, int(n)) for img, h in self.held.items()
                       for n in np.flatnonzero(h) if self.missing[img][n] > 0), reverse=True)

    def placed(self) -> list[tuple[int, int, int]]:
        return [(c, n, k) for (c, n), k in self.on.items() if k > 0]


def rehome(workloads: list[Workload], prices: Prices, placed: list[tuple[int, int, int]],
           deadline: float = float("inf"), clock=time.perf_counter
           ) -> list[tuple[int, int, int]]:
    plan = _Plan(workloads, prices, placed)
    improved = True
    while improved and clock() < deadline:
        improved = False
        for cost, img, n in plan.charged():
            if clock() > deadline:
                break
            if not plan.held[img][n]:
                continue  # moved by an earlier step of this pass
            best = _best_move(plan, img, n, cost, deadline, clock)
            if best is not None:
                group, m, evictions = best
                for c, dst in evictions:
                    plan.move(c, m, dst)
                for c, k in group:
                    plan.move(c, n, m, k)
                improved = True
    return plan.placed()


def _best_move(plan: _Plan, img: str, n: int, cost: float, deadline: float,
               clock=time.perf_counter):
    """The cheapest way to take every replica of ``img`` off node ``n`` to one other node,
    if it costs less than ``cost``: (the replicas, that node, the replicas moved out of it
    to make room, with where each goes); None when there is none."""
    group = [(c, plan.on[(c, n)]) for c in plan.classes[n] if plan.image[c] == img]
    need = int(sum(plan.gpus[c] * k for c, k in group))
    ok = np.logical_and.reduce([plan.fits[c] for c, _ in group])
    ok[n] = False
    price = plan.price(img)
    cands = np.flatnonzero(ok & (price < cost))
    best, best_delta = None, 0.0
    ranked = cands[np.lexsort((-plan.free[cands], price[cands]))]  # room first among ties
    for m in ranked[:CANDIDATES].tolist():
        if clock() > deadline:
            break
        delta = price[m] - cost
        evictions: list[tuple[int, int]] = []
        short = need - int(plan.free[m])
        if short > 0 and delta - plan.leaving_saves(m, img) >= best_delta - 1e-6:
            continue  # even if every move out were free and saved all it could, no better
        if short > 0:
            room = _make_room(plan, img, n, m, need, short)
            if room is None:
                continue
            evictions, extra = room
            delta += extra
        if delta < best_delta - 1e-6:
            best, best_delta = (group, m, evictions), delta
    return best


def _make_room(plan: _Plan, img: str, n: int, m: int, need: int, short: int):
    """Move replicas of other images off node ``m`` until ``short`` GPUs are free there,
    each to where its image costs least (node ``n`` counted as vacated): (the moves, what
    they fetch less what they stop fetching on ``m``); None if the room cannot be made."""
    room = plan.free.copy()
    room[n] += need
    paid: set[tuple[str, int]] = set()  # (image, node) this move already fetches
    moves, extra, gone = [], 0.0, Counter()
    others = sorted((c for c in plan.classes[m] if plan.image[c] != img),
                    key=lambda c: -plan.gpus[c])
    for c in others:
        j, g = plan.image[c], int(plan.gpus[c])
        for _ in range(plan.on[(c, m)]):
            if short <= 0:
                break
            ok = plan.fits[c] & (room >= g)
            ok[m] = False
            if not ok.any():
                break  # nowhere for this one: narrower replicas may still make the room
            price = plan.price(j)
            if any(jj == j for jj, _ in paid):
                price = price.copy()
                for jj, d in paid:
                    if jj == j:
                        price[d] = 0.0
            dst = int(np.argmin(np.where(ok, price, np.inf)))
            extra += price[dst]
            paid.add((j, dst))
            room[dst] -= g
            short -= g
            gone[j] += 1
            moves.append((c, dst))
        if short <= 0:
            break
    if short > 0:
        return None
    # An image all of whose replicas leave m is no longer fetched there.
    extra -= sum(plan.missing[j][m] for j, k in gone.items() if plan.held[j][m] == k)
    return moves, extra
