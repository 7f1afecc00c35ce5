"""The placement MILP (scipy.optimize.milp, HiGHS), kept small the way Quincy does.

Classes: each workload is one class whose replicas are an integer count. Arcs: for each
class, one arc to each of its ``candidates`` cheapest *warm* nodes (nodes that already hold
part of its image), and one *cold* arc per GPU model it can run on, standing for the group
of nodes of that model: those nodes are identical to the class as far as bytes go, so one
arc stands for all of them and pruning the warm arcs never makes the problem infeasible.

- Warm arcs are exact: each node's free GPUs bound them, and with ``burst`` the missing
  bytes of an image are charged once per node (a binary per image and node), however many
  replicas of however many workloads land there, as the node's cache makes it.
- Cold arcs are priced at the image's size per node-start (amortised over the replicas a
  node can hold) and bounded per GPU model by nested capacities: replicas of g GPUs or more
  can only use nodes with at least g free GPUs, which keeps big replicas from being
  promised fragments.
- A pending replica costs more than any image, weighted up to +40% by its GPUs and its
  age, so the solver first places as many replicas as it can (wider and older ones first),
  then saves bytes, and when capacity is short leaves pending the workloads that would cost
  the most to start.

Cold replicas are then placed by the greedy rule (fewest missing bytes, tightest fit), which
also fills in anything the relaxation over-promised. A solver without a solution in the
time limit, or a result worse than plain greedy's (more pending, or as many and more
bytes), returns greedy's: the policy is never worse than its baseline.
``max_starts`` caps new replicas per node. Pure; thread-safe.
"""

from __future__ import annotations

import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from .account import account
from .baselines import complete, greedy, order
from .model import Node, Result, Workload
from .prices import Prices

GIB = float(1 << 30)


class _Problem:
    """Variables and constraints in COO form."""

    def __init__(self) -> None:
        self.cost: list[float] = []
        self.hi: list[float] = []
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.vals: list[float] = []
        self.b_lo: list[float] = []
        self.b_hi: list[float] = []

    def var(self, cost: float, hi: float) -> int:
        self.cost.append(cost)
        self.hi.append(hi)
        return len(self.cost) - 1

    def row(self, terms: list[tuple[int, float]], lo: float, hi: float) -> None:
        r = len(self.b_lo)
        for col, val in terms:
            self.rows.append(r)
            self.cols.append(col)
            self.vals.append(val)
        self.b_lo.append(lo)
        self.b_hi.append(hi)

    def solve(self, time_limit: float):
        n = len(self.cost)
        a = coo_array((self.vals, (self.rows, self.cols)), shape=(len(self.b_lo), n)).tocsr()
        return milp(np.array(self.cost), integrality=np.ones(n),
                    bounds=Bounds(np.zeros(n), np.array(self.hi)),
                    constraints=LinearConstraint(a, np.array(self.b_lo), np.array(self.b_hi)),
                    options={"time_limit": time_limit, "disp": False,
                             "mip_rel_gap": 0.01})


class _Model:
    """The MILP for one round, and what its variables mean."""

    def __init__(self, workloads: list[Workload], nodes: list[Node], prices: Prices,
                 candidates: int, burst: bool, max_starts: int | None) -> None:
        self.w, self.nodes, self.prices = workloads, nodes, prices
        self.p = _Problem()
        self.warm: list[tuple[int, int, int]] = []  # (var, class, node)
        self.cold: list[tuple[int, int, str]] = []  # (var, class, gpu model)
        big = max((w.image_bytes for w in workloads), default=0) / GIB + 1.0
        oldest = max((w.age for w in workloads), default=0.0) + 1.0
        widest = max((w.gpus for w in workloads), default=1)
        # Count first: every pending replica costs more than any image, and more GPUs and
        # more age add under half again, so two pending replicas always cost more than one.
        self.pending = [self.p.var(2 * big * (1 + 0.2 * w.gpus / widest + 0.2 * w.age / oldest),
                                   w.replicas) for w in workloads]
        self._warm_arcs(candidates, burst)
        self._cold_arcs()
        self._class_rows()
        self._node_rows(max_starts)
        self._model_rows()

    def _warm_arcs(self, candidates: int, burst: bool) -> None:
        charged: dict[tuple[str, int], int] = {}
        for c, w in enumerate(self.w):
            idx, miss = self.prices.warm(w)
            ok = self.prices.fits(w, idx)
            idx, miss = idx[ok], miss[ok]
            if len(idx) > candidates:
                keep = np.argpartition(miss, candidates)[:candidates]
                idx, miss = idx[keep], miss[keep]
            for n, m in zip(idx.tolist(), miss.tolist(), strict=True):
                most = min(w.replicas, self.nodes[n].gpus_free // w.gpus)
                x = self.p.var(0.0 if burst else m / GIB, most)
                self.warm.append((x, c, n))
                if burst:
                    key = (w.image, n)
                    if key not in charged:
                        charged[key] = self.p.var(m / GIB, 1.0)
                    self.p.row([(x, 1.0), (charged[key], -float(most))], -np.inf, 0.0)

    def _cold_arcs(self) -> None:
        pr = self.prices
        for c, w in enumerate(self.w):
            ok = pr.fits(w)
            for model, code in pr.model_code.items():
                sel = ok & (pr.model == code)
                if not sel.any():
                    continue
                per_node = max(1, min(w.replicas, int(pr.free[sel].max()) // w.gpus))
                z = self.p.var(w.image_bytes / GIB / per_node, w.replicas)
                self.cold.append((z, c, model))

    def _class_rows(self) -> None:
        terms = defaultdict(list)
        for x, c, _ in self.warm:
            terms[c].append((x, 1.0))
        for z, c, _ in self.cold:
            terms[c].append((z, 1.0))
        for c, w in enumerate(self.w):
            self.p.row(terms[c] + [(self.pending[c], 1.0)], w.replicas, w.replicas)

    def _node_rows(self, max_starts: int | None) -> None:
        by_node = defaultdict(list)
        for x, c, n in self.warm:
            by_node[n].append((x, c))
        for n, arcs in by_node.items():
            self.p.row([(x, float(self.w[c].gpus)) for x, c in arcs], -np.inf,
                       self.nodes[n].gpus_free)
            if max_starts is not None:
                self.p.row([(x, 1.0) for x, _ in arcs], -np.inf, max_starts)

    def _model_rows(self) -> None:
        """Per GPU model and size g: cold replicas of >= g GPUs fit only on nodes with >= g
        free, and every warm replica on such a node, whatever its size, uses that room."""
        sizes = sorted({w.gpus for w in self.w})
        for model in {n.gpu_model for n in self.nodes}:
            for g in sizes:
                room = sum(n.gpus_free for n in self.nodes
                           if n.gpu_model == model and n.gpus_free >= g)
                terms = [(z, float(self.w[c].gpus)) for z, c, m in self.cold
                         if m == model and self.w[c].gpus >= g]
                if not terms:
                    continue
                terms += [(x, float(self.w[c].gpus)) for x, c, n in self.warm
                          if self.nodes[n].gpu_model == model and self.nodes[n].gpus_free >= g]
                self.p.row(terms, -np.inf, float(room))

    def decode(self, values: np.ndarray):
        """Warm placements as they are; per class, the replicas to place cold, and those the
        relaxation left pending (capacity may remain for them once the rest is placed)."""
        placed = [(c, n, int(round(values[x]))) for x, c, n in self.warm
                  if round(values[x]) > 0]
        cold = defaultdict(int)
        for z, c, _ in self.cold:
            cold[c] += int(round(values[z]))
        pending = {c: int(round(values[p])) for c, p in enumerate(self.pending)}
        return placed, cold, pending


def solve(workloads: list[Workload], nodes: list[Node], *, candidates: int = 8,
          burst: bool = True, max_starts: int | None = None,
          time_limit: float = 1.0) -> Result:
    """Place ``workloads`` on ``nodes``; see the module docstring."""
    started = time.perf_counter()
    workloads = [workloads[i] for i in order(workloads)]
    prices = Prices(nodes, {w.image for w in workloads})
    model = _Model(workloads, nodes, prices, candidates, burst, max_starts)
    with ThreadPoolExecutor(1) as pool:  # HiGHS releases the GIL while it solves
        baseline = pool.submit(greedy, workloads, nodes, prices, max_starts)
        res = model.p.solve(time_limit)
        fallback = baseline.result()
    if res.x is None:
        fallback.policy, fallback.note = "milp", f"solver: {res.message}; greedy used"
        fallback.seconds = time.perf_counter() - started
        return fallback
    warm, cold, pending = model.decode(res.x)
    note = "optimal" if res.status == 0 else "time limit: best solution found"
    tries = []
    for widest in (True, False):
        placed = complete(workloads, nodes, prices, warm, cold, max_starts, widest)
        placed = complete(workloads, nodes, prices, placed, pending, max_starts, widest)
        tries.append(account("milp", workloads, nodes, placed, 0.0, note))
    result = min(tries, key=lambda r: (r.pending_replicas, r.bytes_to_fetch))
    result.seconds = time.perf_counter() - started
    if (fallback.pending_replicas, fallback.bytes_to_fetch) < (result.pending_replicas,
                                                               result.bytes_to_fetch):
        fallback.policy, fallback.note = "milp", "greedy was better; greedy used"
        fallback.seconds = result.seconds
        return fallback
    return result
