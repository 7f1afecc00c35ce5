"""Local search after a placement: empty the nodes where an image is fetched for few
replicas, moving those replicas to nodes that already hold the image, or will.

A plan pays an image's missing bytes once per node it lands on. Rounding the relaxation and
completing it greedily leave some images fetched onto a node for a replica or two that would
fit where the same image is already going. ``consolidate`` visits the (image, node) pairs
that cost the most, and moves every replica of that image off the node when the nodes that
take them (already paying for the image first, then the cheapest others) cost less than the
fetch it saves. Every move keeps GPUs, GPU memory, model and ``max_starts`` within bounds,
and never leaves a replica unplaced, so the plan's pending count is unchanged and its bytes
only go down. Pure; stops at ``deadline`` on ``clock`` (``time.perf_counter``).
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from .model import Workload
from .prices import Prices


def consolidate(workloads: list[Workload], prices: Prices, placed: list[tuple[int, int, int]],
                max_starts: int | None = None, deadline: float = float("inf"),
                clock=time.perf_counter
                ) -> list[tuple[int, int, int]]:
    free = prices.free.astype(np.int64).copy()
    starts = np.zeros(len(free), np.int64)
    on: dict[tuple[int, int], int] = defaultdict(int)  # (class, node) -> replicas
    images: dict[str, list[int]] = defaultdict(list)
    for c, w in enumerate(workloads):
        images[w.image].append(c)
    missing = {img: prices.missing(workloads[cls[0]]).astype(np.float64)
               for img, cls in images.items()}
    holders: dict[str, np.ndarray] = {img: np.zeros(len(free), np.int64) for img in images}
    for c, n, k in placed:
        free[n] -= workloads[c].gpus * k
        starts[n] += k
        on[(c, n)] += k
        holders[workloads[c].image][n] += k
    fits = {c: prices.suits(w) for c, w in enumerate(workloads)}
    pairs = sorted(((missing[img][n], img, n) for img, h in holders.items()
                    for n in np.flatnonzero(h).tolist() if missing[img][n] > 0), reverse=True)
    for saving, img, n in pairs:
        if clock() > deadline:
            break
        members = [(c, on[(c, n)]) for c in images[img] if on.get((c, n), 0)]
        moves = _relocate(workloads, members, n, free, starts, holders[img], missing[img],
                          fits, max_starts, saving)
        if moves is None:
            continue
        for c, k in members:
            free[n] += workloads[c].gpus * k
            starts[n] -= k
            holders[img][n] -= k
            del on[(c, n)]
        for c, m, k in moves:
            free[m] -= workloads[c].gpus * k
            starts[m] += k
            holders[img][m] += k
            on[(c, m)] += k
    return [(c, n, k) for (c, n), k in on.items() if k > 0]


def _relocate(workloads, members, away: int, free, starts, held, missing, fits,
              max_starts, saving: float) -> list[tuple[int, int, int]] | None:
    """Where ``members`` (class, replicas) could go instead of node ``away``, for less
    than ``saving`` in new fetches; None when not."""
    free, starts, held = free.copy(), starts.copy(), held.copy()
    moves, cost = [], 0.0
    for c, k in sorted(members, key=lambda m: -workloads[m[0]].gpus):
        g = workloads[c].gpus
        while k > 0:
            ok = fits[c] & (free >= g)
            ok[away] = False
            if max_starts is not None:
                ok &= starts < max_starts
            if not ok.any():
                return None
            price = np.where(held > 0, 0.0, missing)  # already paying for the image: free
            n = int(np.argmin(np.where(ok, price * 64 + (free - g), np.inf)))
            cost += price[n]
            if cost >= saving:
                return None
            take = min(k, int(free[n] // g))
            if max_starts is not None:
                take = min(take, int(max_starts - starts[n]))
            free[n] -= take * g
            starts[n] += take
            held[n] += take
            moves.append((c, n, take))
            k -= take
    return moves
