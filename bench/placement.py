#!/usr/bin/env python3
"""Placement policies on simulated clusters: pending replicas, bytes to fetch, time.

Clusters from ``placement.simulate`` (Zipf popularity, 1-40 GB images of shared layers,
8-GPU nodes with LRU caches holding partial images), at 100x50, 1,000x200 and 5,000x1,000
(nodes x workloads), normal and tight load, several seeds; medians over seeds. Every policy
is charged the same way (an image's missing bytes once per node). In every cell, a lower
bound on the bytes of any placement that leaves only the replicas pending that the MILP
left (``placement.milp.lower_bound``) shows how much any policy could still save, and the
MILP's ratio to it. Then how the MILP's time grows from 100 to 10,000 nodes. With
``--exact SECONDS``, instead: the integer program itself solved for that long at 1,000x200
under tight load (``placement.milp.best_known``): how much of the MILP's distance to the
bound is the policy's (a better placement exists) and how much the bound's (none does).
Usage: python bench/placement.py [--seeds N] [--exact SECONDS] [--only scaling]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import numpy as np
from common import table

from placement.account import per_workload_bytes
from placement.baselines import greedy, image_locality, random_policy
from placement.milp import best_known, lower_bound, solve
from placement.prices import Prices
from placement.simulate import make_cluster

POLICIES = {"random": random_policy, "k8s-imagelocality": image_locality, "greedy": greedy,
            "milp": solve}
SIZES = [(100, 50), (1000, 200), (5000, 1000)]
GIB = 1 << 30


def run(nodes: int, workloads: int, load: str, seeds: int
        ) -> tuple[list[list[str]], list[str]]:
    """The cell's rows (one per policy, then the bound) and its MILP-against-bound row."""
    stats: dict[str, list[tuple[float, ...]]] = {p: [] for p in POLICIES}
    bounds, gaps = [], []
    for seed in range(seeds):
        work, cluster = make_cluster(nodes, workloads, load=load, seed=seed)
        for name, policy in POLICIES.items():
            start = time.perf_counter()
            r = policy(work, cluster)
            seconds = time.perf_counter() - start
            p99 = float(np.percentile(per_workload_bytes(r), 99)) if r.assignments else 0.0
            started = sum(w.replicas for w in work) - r.pending_replicas
            stats[name].append((r.pending_replicas, r.bytes_to_fetch, p99, seconds,
                                r.bytes_to_fetch / max(1, started)))
            if name == "milp":
                chosen = r
        # No placement that leaves only the replicas the MILP left waiting fetches less.
        bound = lower_bound(work, cluster, pending=chosen.pending)
        bounds.append(bound)
        gaps.append(chosen.bytes_to_fetch / bound if bound else
                    float("inf") if chosen.bytes_to_fetch else 1.0)
    rows = []
    greedy_bytes = statistics.median(s[1] for s in stats["greedy"])
    greedy_each = statistics.median(s[4] for s in stats["greedy"])
    for name, s in stats.items():
        med = [statistics.median(x[i] for x in s) for i in range(5)]
        ratio = f"{med[1] / greedy_bytes:.2f}" if greedy_bytes else "-"
        each = f"{med[4] / greedy_each:.2f}" if greedy_each else "-"
        rows.append([f"{nodes}x{workloads}", load, name, int(med[0]),
                     f"{med[1] / GIB:,.0f}", f"{med[2] / GIB:.1f}", f"{med[3]:.2f}", ratio,
                     each])
    cell = f"{nodes}x{workloads}"
    if None in bounds:
        return rows, [cell, load, "", "", "", "-", "-"]
    bound = statistics.median(bounds)
    pending = int(statistics.median(s[0] for s in stats["milp"]))
    rows.append([cell, load, "(lower bound)", pending, f"{bound / GIB:,.0f}", "", "",
                 f"{bound / greedy_bytes:.2f}" if greedy_bytes else "-", ""])
    milp_bytes = statistics.median(s[1] for s in stats["milp"])
    return rows, [cell, load, pending, f"{bound / GIB:,.1f}", f"{milp_bytes / GIB:,.1f}",
                  f"{statistics.median(gaps):.2f}", f"{max(gaps):.2f}"]


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def scaling(rounds: int = 3) -> list[list[str]]:
    """Each call under its limit: greedy and the MILP, ``rounds`` rounds each, with the
    report snapshot's prices built once, outside the limit (as the extender does)."""
    rows = []
    for nodes in (100, 1000, 5000, 10000):
        work, cluster = make_cluster(nodes, nodes // 5, load="normal", seed=0)
        # The limits: the extender's replan (min(2, every / 2): 2 s by default); 5 s at
        # 10,000 nodes.
        limit = 5.0 if nodes > 5000 else 2.0
        built, prices = _timed(partial(Prices, cluster, {w.image for w in work}))
        times: dict[str, list[float]] = {"greedy": [], "milp": []}
        for _ in range(rounds):
            took, _g = _timed(partial(greedy, work, cluster, prices,
                                      deadline=time.perf_counter() + limit))
            times["greedy"].append(took)
            took, r = _timed(partial(solve, work, cluster, time_limit=limit, prices=prices))
            times["milp"].append(took)
        worst = max(max(t) for t in times.values())
        rows.append([nodes, nodes // 5, f"{limit:g}", f"{built:.2f}",
                     *(f"{statistics.median(t):.2f} / {max(t):.2f}" for t in times.values()),
                     "yes" if worst <= limit else "NO", r.note])
    return rows


def exact(seconds: float, seeds: int) -> list[list[str]]:
    rows = []
    for seed in range(seeds):
        work, cluster = make_cluster(1000, 200, load="tight", seed=seed)
        r = solve(work, cluster)
        bound = lower_bound(work, cluster, pending=r.pending)
        known = best_known(work, cluster, pending=r.pending, time_limit=seconds)
        if known is None or not bound:
            rows.append(["1000x200", "tight", seed, f"{r.bytes_to_fetch / GIB:,.0f}",
                         f"{(bound or 0) / GIB:,.0f}", "-", "-", "-", "-"])
            continue
        found, proof = known
        rows.append(["1000x200", "tight", seed, f"{r.bytes_to_fetch / GIB:,.0f}",
                     f"{bound / GIB:,.0f}", f"{found / GIB:,.0f}", f"{proof / GIB:,.0f}",
                     f"{r.bytes_to_fetch / found:.2f}", f"{found / bound:.2f}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--only", choices=("scaling",), help="only the time-against-limits table")
    ap.add_argument("--exact", type=float, metavar="SECONDS",
                    help="instead of the tables: solve the integer program for this long at "
                         "1,000x200 tight, per seed")
    args = ap.parse_args()
    if args.exact:
        print(f"\nthe integer program, every node an arc, solved for {args.exact:.0f} s "
              "(HiGHS), against the MILP policy's plan and the lower bound; the same "
              "replicas left pending as the policy left\n")
        print(table(["nodes x workloads", "load", "seed", "milp policy (GiB)", "bound (GiB)",
                     "best placement found (GiB)", "its dual bound (GiB)",
                     "policy / best found", "best found / bound"],
                    exact(args.exact, args.seeds)))
        return
    if args.only == "scaling":
        print(table(["nodes", "workloads", "limit (s)", "prices, once per snapshot (s)",
                     "greedy (s)", "milp (s)", "within the limit", "milp status"], scaling()))
        return
    rows, gaps = [], []
    for nodes, workloads in SIZES:
        for load in ("normal", "tight"):
            cell, gap = run(nodes, workloads, load, args.seeds)
            rows += cell
            gaps.append(gap)
    print(f"\nmedians over {args.seeds} seeds; bytes in GiB, charged once per (node, image)\n")
    print(table(["nodes x workloads", "load", "policy", "pending replicas", "bytes (GiB)",
                 "p99 per workload (GiB)", "time (s)", "bytes / greedy",
                 "bytes per started replica / greedy"], rows))
    print("\nthe MILP against the lower bound: no placement that leaves only the replicas "
          "the MILP left pending fetches less (goal: 1.15x)\n")
    print(table(["nodes x workloads", "load", "milp pending (median)", "bound (GiB)",
                 "milp (GiB)", "milp / bound (median)", "milp / bound (worst seed)"], gaps))
    print("\ntime as the cluster grows (workloads = nodes / 5, normal load, seed 0; median / "
          "worst of 3 rounds; each call under its limit, the report snapshot's prices built "
          "once before them)\n")
    print(table(["nodes", "workloads", "limit (s)", "prices, once per snapshot (s)",
                 "greedy (s)", "milp (s)", "within the limit", "milp status"], scaling()))


if __name__ == "__main__":
    main()
