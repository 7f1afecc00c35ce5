"""The placement MILP (scipy.optimize.milp, HiGHS), kept small the way Quincy does.

Classes: each workload is one class whose replicas are an integer count. Arcs
(``arcs.py``): each image's cheapest warm nodes, offered to every class of that image, and
one *rest* arc per class and GPU model standing for all other nodes of that model, so
pruning never makes the problem infeasible.

- Warm arcs are exact: each node's free GPUs bound them, and with ``burst`` the missing
  bytes of an image are charged once per node (a variable per image and node), however
  many replicas of however many workloads land there, as the node's cache makes it.
- Rest arcs are priced at what packing the class onto the cheapest rest nodes would cost,
  and bounded per GPU model by nested capacities: replicas of g GPUs or more can only use
  nodes with at least g free, which keeps big replicas from being promised fragments.
- A pending replica costs more than any image, weighted up to +40% by its GPUs and its
  age, so the solver first places as many replicas as it can (wider and older ones first),
  then saves bytes, and when capacity is short leaves pending the workloads that would cost
  the most to start.

Small models are solved exactly (branch and bound, with every warm node an arc; up to
``EVERY_CELLS`` classes x nodes, every node, cold ones too, so no rest arc stands for any:
when cold nodes were rest arcs, the completion that placed their replicas left some pending
that greedy placed, and a small tight cluster fell back to greedy's plan at up to 6x the
bound; past that size HiGHS no longer finishes the bigger program in 2 s); large ones as
their LP relaxation, which HiGHS solves in a fraction of the time (its MILP spends seconds
in root cuts at 5,000 nodes) and whose solution is nearly integral, as Quincy found for
flows: warm arcs are rounded down. When the first relaxation took under a third of the
time, a second one places what it left over, with its placements started (``_again``), and
the better plan is kept. Up to ``WIDE_CELLS`` classes x nodes, a relaxation with twice the
warm arcs runs beside the first (HiGHS releases the GIL: another core), and its plan is
completed and judged too: under tight load the short lists sent so many replicas to rest
arcs that one seed of 1,000x200 fell back to greedy's 1,963 GiB, where the longer ones
place them for 818. Either way the replicas sent to rest arcs, and any the rounding left
over, are then placed by a greedy rule (fewest missing bytes per replica placed, then
tightest fit; ``baselines.complete``), in several orders, the best plan kept: widest
workloads first, oldest first, and (up to ``CHEAPEST_FIRST_MAX`` workloads) the cheapest
move of any workload first, widest still first, which under tight load keeps a workload
from taking the node that another, later in line, needed more (1,000x200 tight, seed 0:
1,122 -> 776 GiB, two more replicas started). With time left, the best plan is then
consolidated (``improve.py``): replicas that made an image be fetched onto a node for few
of them move to nodes that hold it or will, when that costs less; and then (without
``max_starts``) rehomed (``rehome.py``): an image's replicas move onto a node that holds
more of it, the replicas there moving out to make room, when that fetches less (under tight
load every such node is full; 1,000x200 tight, median of three seeds: 709 -> 390 GiB). A
solver without a solution, or a result worse than plain greedy's (more pending, or as many
and more bytes), returns greedy's: the policy is never worse than its baseline.
``time_limit`` bounds the whole call on ``clock``, greedy's baseline and every completion
included (each leaves what it has not placed by then pending); the ``Prices`` of a report
snapshot may be passed in, built once per snapshot outside the limit (at 10,000 nodes they
were half of it). ``max_starts`` caps new replicas per node.
``lower_bound`` prices rest arcs at a bound instead, so its relaxation's optimum bounds the
bytes of any placement (that leaves at most so many replicas pending): how far from the
best a policy is; ``best_known`` solves the integer program itself for minutes, to say how
much of that distance is the bound's. Pure; thread-safe.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from .account import account
from .arcs import Arcs, build_arcs, fits_matrix
from .baselines import complete, greedy, order
from .improve import consolidate
from .model import Node, Result, Workload
from .prices import Prices
from .rehome import rehome

GIB = float(1 << 30)
EXACT_CELLS = 50_000  # classes x nodes up to which the integer program is solved
ARC_BUDGET = 50_000  # warm arcs in a relaxation: HiGHS solves it in ~0.5 s on one core
EVERY_CELLS = 20_000  # exact programs up to this size have every node an arc, cold ones too
WIDE_CELLS = 1_000_000  # classes x nodes up to which a relaxation with more arcs runs too
WIDE_BUDGET = 2 * ARC_BUDGET
CHEAPEST_FIRST_MAX = 500  # workloads up to which completion also tries cheapest first


class _Model:
    """The program for one round as arrays: variables are [pending | warm | charged | rest |
    used], the last being the GPUs warm replicas take on each node they reach.
    """

    def __init__(self, workloads: list[Workload], prices: Prices, arcs: Arcs, burst: bool,
                 max_starts: int | None, exact: bool) -> None:
        self.w, self.prices, self.arcs, self.max_starts = workloads, prices, arcs, max_starts
        n_cls, n_warm, n_rest = len(workloads), len(arcs.cls), len(arcs.rest_cls)
        # A charge shared by one arc only is that arc's own cost: per replica in the
        # relaxation (where charged = replicas / most), or outright when at most one
        # replica fits. Only the rest get a charge variable and a row.
        pair = arcs.image * len(prices.nodes) + arcs.node
        _, self.pair_of, count = np.unique(pair, return_inverse=True, return_counts=True)
        alone = count[self.pair_of] == 1
        if exact:
            alone &= arcs.most == 1
        self.shared = np.flatnonzero(~alone) if burst else np.empty(0, np.int64)
        charged, self.pair_of = np.unique(self.pair_of[self.shared], return_inverse=True)
        n_charged = len(charged)
        self.used_on, self.arc_row = np.unique(arcs.node, return_inverse=True)
        self.at = np.cumsum([0, n_cls, n_warm, n_charged, n_rest, len(self.used_on)])
        replicas = np.array([w.replicas for w in workloads], np.float64)
        gpus = np.array([w.gpus for w in workloads], np.float64)
        ages = np.array([w.age for w in workloads], np.float64)
        big = max((w.image_bytes for w in workloads), default=0) / GIB + 1.0
        # Count first: every pending replica costs more than any image, and more GPUs and
        # more age add under half again, so two pending replicas always cost more than one.
        pending = 2 * big * (1 + 0.2 * gpus / max(gpus.max(initial=1), 1)
                             + 0.2 * ages / (ages.max(initial=0) + 1.0))
        warm = arcs.miss / GIB
        if burst:
            warm = np.where(alone, warm / arcs.most, 0.0)
        charge = np.zeros(n_charged)
        np.maximum.at(charge, self.pair_of, arcs.miss[self.shared] / GIB)
        self.cost = np.concatenate([pending, warm, charge, arcs.rest_price / GIB,
                                    np.zeros(len(self.used_on))])
        self.hi = np.concatenate([replicas, arcs.most, np.ones(n_charged),
                                  replicas[arcs.rest_cls], prices.free[self.used_on]])
        self.rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.lo: list[np.ndarray] = []
        self.up: list[np.ndarray] = []
        self._class_rows(replicas)
        self._charge_rows()
        self._node_rows(gpus, max_starts)
        self._model_rows(gpus)

    def _add(self, row, col, val, lo, up) -> None:
        base = sum(len(x) for x in self.lo)
        self.rows.append((np.asarray(row) + base, np.asarray(col), np.asarray(val, float)))
        self.lo.append(np.asarray(lo, float))
        self.up.append(np.asarray(up, float))

    def _class_rows(self, replicas: np.ndarray) -> None:
        a, at = self.arcs, self.at
        n_cls = len(self.w)
        row = np.concatenate([np.arange(n_cls), a.cls, a.rest_cls])
        col = np.concatenate([np.arange(n_cls), at[1] + np.arange(len(a.cls)),
                              at[3] + np.arange(len(a.rest_cls))])
        self._add(row, col, np.ones(len(row)), replicas, replicas)

    def _charge_rows(self) -> None:
        """warm replicas on a node <= most x (the image is fetched there)."""
        arc = self.shared
        n = len(arc)
        row = np.arange(n)
        self._add(np.concatenate([row, row]),
                  np.concatenate([self.at[1] + arc, self.at[2] + self.pair_of]),
                  np.concatenate([np.ones(n), -self.arcs.most[arc].astype(float)]),
                  np.full(n, -np.inf), np.zeros(n))

    def _node_rows(self, gpus: np.ndarray, max_starts: int | None) -> None:
        """used = the GPUs of the warm replicas on the node (bounded by its free ones)."""
        a, at = self.arcs, self.at
        n = len(self.used_on)
        col = at[1] + np.arange(len(a.cls))
        self._add(np.concatenate([self.arc_row, np.arange(n)]),
                  np.concatenate([col, at[4] + np.arange(n)]),
                  np.concatenate([gpus[a.cls], -np.ones(n)]), np.zeros(n), np.zeros(n))
        if max_starts is not None:
            self._add(self.arc_row, col, np.ones(len(col)), np.full(n, -np.inf),
                      np.full(n, float(max_starts)))

    def _model_rows(self, gpus: np.ndarray) -> None:
        """Per GPU model and size g: rest replicas of >= g GPUs fit only on nodes with >= g
        free, and every warm replica on such a node, whatever its size, uses that room."""
        a, pr = self.arcs, self.prices
        rest_col = self.at[3] + np.arange(len(a.rest_cls))
        used_col = self.at[4] + np.arange(len(self.used_on))
        free, model = pr.free[self.used_on], pr.model[self.used_on]
        for m in np.unique(a.rest_model):
            for g in np.unique(gpus):
                rest = (a.rest_model == m) & (gpus[a.rest_cls] >= g)
                if not rest.any():
                    continue
                used = (model == m) & (free >= g)
                room = pr.free[(pr.model == m) & (pr.free >= g)].sum()
                col = np.concatenate([rest_col[rest], used_col[used]])
                val = np.concatenate([gpus[a.rest_cls[rest]], np.ones(used.sum())])
                self._add(np.zeros(len(col), np.int64), col, val, [-np.inf], [room])

    def solve(self, exact: bool, time_limit: float):
        n = len(self.cost)
        row, col, val = (np.concatenate(x) for x in zip(*self.rows, strict=True))
        lo, up = np.concatenate(self.lo), np.concatenate(self.up)
        a = coo_array((val, (row, col)), shape=(len(lo), n)).tocsr()
        return milp(self.cost, integrality=np.full(n, 1 if exact else 0),
                    bounds=Bounds(np.zeros(n), self.hi),
                    constraints=LinearConstraint(a, lo, up),
                    options={"time_limit": time_limit, "disp": False, "mip_rel_gap": 0.01})

    def decode(self, x: np.ndarray):
        """Warm arcs rounded down, then fractional ones rounded up, largest fraction first,
        where the class has replicas and the node GPUs to spare; per class, the replicas
        the solution places elsewhere (rest arcs, fractions left), and those it leaves
        pending."""
        a, at = self.arcs, self.at
        value = x[at[1]:at[2]]
        warm = np.floor(value + 1e-6).astype(np.int64)
        pending = np.floor(x[:at[1]] + 1e-6).astype(np.int64)
        replicas = np.array([w.replicas for w in self.w])
        gpus = np.array([w.gpus for w in self.w])
        left = replicas - pending - np.bincount(a.cls, weights=warm, minlength=len(self.w))
        left = left.astype(np.int64)
        free = self.prices.free.copy()
        np.subtract.at(free, a.node, warm * gpus[a.cls])
        starts = np.bincount(a.node, weights=warm, minlength=len(free))
        most_starts = np.inf if self.max_starts is None else self.max_starts
        frac = value - warm
        for i in np.argsort(-frac, kind="stable")[:int((frac > 1e-6).sum())].tolist():
            c, n = a.cls[i], a.node[i]
            if left[c] > 0 and free[n] >= gpus[c] and starts[n] < most_starts:
                warm[i] += 1
                left[c] -= 1
                free[n] -= gpus[c]
                starts[n] += 1
        on = warm > 0
        placed = list(zip(a.cls[on].tolist(), a.node[on].tolist(), warm[on].tolist(),
                          strict=True))
        return placed, dict(enumerate(left.tolist())), dict(enumerate(pending.tolist()))


def solve(workloads: list[Workload], nodes: list[Node], *, burst: bool = True,
          max_starts: int | None = None, time_limit: float = 2.0,
          exact: bool | None = None, prices: Prices | None = None,
          clock=time.perf_counter) -> Result:
    """Place ``workloads`` on ``nodes``; see the module docstring. ``exact``: solve the
    integer program (default: when the model is small), else its LP relaxation.
    ``time_limit`` bounds the whole call, not only the solver. ``prices``: those of
    ``nodes`` (in that order) for at least the workloads' images."""
    started = clock()
    # Its stages stop a little short of the limit: the last plan is still to be accounted
    # for and compared (at 10,000 nodes a round overran 5 s by 10 ms without this).
    deadline = started + time_limit - min(0.1, time_limit / 20)
    if not workloads:
        return Result("milp", [], {}, clock() - started, "nothing to place")
    workloads = [workloads[i] for i in order(workloads)]
    if prices is None:
        prices = Prices(nodes, {w.image for w in workloads})
    if exact is None:
        exact = len(workloads) * len(nodes) <= EXACT_CELLS
    fits = fits_matrix(workloads, prices)
    arcs = build_arcs(workloads, prices, fits,
                      budget=len(workloads) * len(nodes) if exact else ARC_BUDGET,
                      every=exact and len(workloads) * len(nodes) <= EVERY_CELLS)
    model = _Model(workloads, prices, arcs, burst, max_starts, exact)
    wide = None
    if not exact and len(workloads) * len(nodes) <= WIDE_CELLS:
        wide = _Model(workloads, prices, build_arcs(workloads, prices, fits,
                                                    budget=WIDE_BUDGET), burst, max_starts,
                      False)
    with ThreadPoolExecutor(2) as pool:  # HiGHS releases the GIL while it solves
        # What is left of the budget, less what rounding and completing take after it.
        left = deadline - clock()
        limit = max(0.05, left - 0.1 - left / 5)
        baseline = pool.submit(greedy, workloads, nodes, prices, max_starts,
                               deadline=clock() + limit, clock=clock)
        wider = None if wide is None else pool.submit(wide.solve, False, limit)
        res = model.solve(exact, limit)
        fallback = baseline.result()
        wider = None if wider is None else wider.result()
    if res.x is None:
        fallback.policy, fallback.note = "milp", f"solver: {res.message}; greedy used"
        fallback.seconds = clock() - started
        return fallback
    plans = [(model.decode(res.x), ("optimal" if res.status == 0 else
                                    "time limit: best solution found") if exact
              else "LP relaxation, rounded")]
    if wider is not None and wider.x is not None:
        plans.append((wide.decode(wider.x), "LP relaxation with more arcs, rounded"))
    left = deadline - clock()
    if not exact and max_starts is None and left > 2 * (time_limit - left):
        # Time for a second relaxation of what the first left to the greedy rule, with
        # the first's placements started (their images on their nodes, their GPUs taken).
        again = _again(workloads, prices, *plans[0][0], burst, left / 2)
        if again is not None:
            plans.append((again, "LP relaxation, rounded, twice"))
    tries, took, counting = [], 0.0, 0.0  # (result, placements); a try's, an account's time
    # Cheapest first costs ~4x the others (a move re-priced per placement): at 1,000
    # workloads it improved nothing and pushed the 2 s call past its limit.
    orders = (True, False, None) if len(workloads) <= CHEAPEST_FIRST_MAX else (True, False)
    for (placed, elsewhere, pending), note in plans:
        for widest in orders:
            begun = clock()
            if tries and begun + took > deadline:  # the first is owed; the others, if time
                break
            # Each completion stops at the deadline, less what accounting for it takes.
            until = {"deadline": deadline - counting, "clock": clock}
            done = complete(workloads, nodes, prices, placed, elsewhere, max_starts, widest,
                            **until)
            done = complete(workloads, nodes, prices, done, pending, max_starts, widest,
                            **until)
            counted = clock()
            tries.append((account("milp", workloads, nodes, done, 0.0, note), done))
            now = clock()
            took, counting = max(took, now - begun), now - counted
    best, done = min(tries, key=lambda t: (t[0].pending_replicas, t[0].bytes_to_fetch))
    if clock() + counting < deadline:  # the best plan, costliest fetches undone
        better = consolidate(workloads, prices, done, max_starts, deadline - counting,
                             clock=clock)
        tries.append((account("milp", workloads, nodes, better, 0.0,
                              best.note + ", consolidated"), better))
        if max_starts is None and clock() + counting < deadline:
            better = rehome(workloads, prices, better, deadline - counting, clock=clock)
            tries.append((account("milp", workloads, nodes, better, 0.0,
                                  best.note + ", consolidated, rehomed"), better))
    result = min((r for r, _ in tries), key=lambda r: (r.pending_replicas, r.bytes_to_fetch))
    result.seconds = clock() - started
    if (fallback.pending_replicas, fallback.bytes_to_fetch) < (result.pending_replicas,
                                                               result.bytes_to_fetch):
        fallback.policy, fallback.note = "milp", "greedy was better; greedy used"
        fallback.seconds = result.seconds
        return fallback
    return result


def _again(workloads: list[Workload], prices: Prices, placed, elsewhere: dict[int, int],
           pending: dict[int, int], burst: bool, time_limit: float):
    """A second round for the replicas the first left to completion: placements, what is
    still left to completion, and what is left pending; None when there was nothing to do
    or no solution came back."""
    todo = [c for c, k in elsewhere.items() if k > 0]
    if not todo:
        return None
    now = prices.after([(workloads[c].image, n, workloads[c].gpus * k) for c, n, k in placed])
    rest = [replace(workloads[c], replicas=elsewhere[c]) for c in todo]
    model = _Model(rest, now, build_arcs(rest, now, fits_matrix(rest, now),
                                         budget=ARC_BUDGET), burst, None, False)
    res = model.solve(False, time_limit)
    if res.x is None:
        return None
    more, left, waiting = model.decode(res.x)
    pending = dict(pending)
    for c, k in waiting.items():
        pending[todo[c]] = pending.get(todo[c], 0) + k
    return (placed + [(todo[c], n, k) for c, n, k in more],
            {todo[c]: k for c, k in left.items()}, pending)


def _bound_model(workloads: list[Workload], nodes: list[Node], pending, budget: int, *,
                 every: bool, integer: bool = False) -> _Model:
    """The program of ``lower_bound``: rest arcs priced at a bound (none with ``every``),
    replicas left pending costing nothing, at most ``pending`` of them. ``integer``: laid
    out for solving as integers (a fetch is a 0/1 charge wherever two replicas could share
    it, not a share per replica)."""
    workloads = [workloads[i] for i in order(workloads)]
    prices = Prices(nodes, {w.image for w in workloads})
    arcs = build_arcs(workloads, prices, fits_matrix(workloads, prices), budget=budget,
                      bound=True, every=every)
    model = _Model(workloads, prices, arcs, True, None, integer)
    n_cls = model.at[1]
    model.cost[:n_cls] = 0.0
    if isinstance(pending, dict):
        model.hi[:n_cls] = [min(w.replicas, pending.get(w.name, 0)) for w in workloads]
    elif pending <= 0:
        model.hi[:n_cls] = 0  # nothing pending
    else:
        model._add(np.zeros(n_cls, np.int64), np.arange(n_cls), np.ones(n_cls),
                   [-np.inf], [float(pending)])
    return model


def lower_bound(workloads: list[Workload], nodes: list[Node], *,
                pending: int | dict[str, int] = 0, budget: int = 500_000,
                time_limit: float = 60.0) -> int | None:
    """Bytes that no placement leaving at most ``pending`` replicas unplaced can go below:
    the optimum of the LP relaxation with rest arcs priced at a lower bound (``arcs.py``;
    small models have every node an arc, and no rest), replicas left pending costing
    nothing. ``pending`` is a count over all workloads, or per workload (name ->
    replicas): a policy's own choice of who waits under tight load, so that its bytes are
    judged against placements that start the same replicas. None when the relaxation
    cannot place that many (then no placement can), or runs out of time. Slower than
    ``solve``: for judging policies, not for placing."""
    if not workloads:
        return 0
    model = _bound_model(workloads, nodes, pending, budget,
                         every=len(workloads) * len(nodes) <= EXACT_CELLS)
    res = model.solve(False, time_limit)
    return None if res.x is None else max(0, int(res.fun * GIB))


def best_known(workloads: list[Workload], nodes: list[Node], *,
               pending: int | dict[str, int] = 0, time_limit: float = 240.0
               ) -> tuple[int, int] | None:
    """The integer program itself, every node an arc, solved for ``time_limit`` seconds:
    the bytes of the best placement it found that leaves at most ``pending`` replicas
    unplaced (as in ``lower_bound``), and its proof that none fetches less (HiGHS's dual
    bound, at least ``lower_bound``'s). Which side of a policy's gap to ``lower_bound`` is
    the policy's and which the bound's. None without a placement in time. Minutes at
    1,000 nodes: for judging, never for placing."""
    if not workloads:
        return 0, 0
    model = _bound_model(workloads, nodes, pending, 1 << 62, every=True, integer=True)
    res = model.solve(True, time_limit)
    if res.x is None:
        return None
    return int(res.fun * GIB), max(0, int(res.mip_dual_bound * GIB))
