#!/usr/bin/env python3
"""Placement policies on simulated clusters: pending replicas, bytes to fetch, time.

Clusters from ``placement.simulate`` (Zipf popularity, 1-40 GB images of shared layers,
8-GPU nodes with LRU caches holding partial images), at 100x50, 1,000x200 and 5,000x1,000
(nodes x workloads), normal and tight load, several seeds; medians over seeds. Every policy
is charged the same way (an image's missing bytes once per node). Where every replica can
be placed, a lower bound on the bytes of any placement (``placement.milp.lower_bound``)
shows how much any policy could still save. Then how the MILP's time grows from 100 to
10,000 nodes. Usage: python bench/placement.py [--seeds N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from common import table

from placement.account import per_workload_bytes
from placement.baselines import greedy, image_locality, random_policy
from placement.milp import lower_bound, solve
from placement.simulate import make_cluster

POLICIES = {"random": random_policy, "k8s-imagelocality": image_locality, "greedy": greedy,
            "milp": solve}
SIZES = [(100, 50), (1000, 200), (5000, 1000)]
GIB = 1 << 30


def run(nodes: int, workloads: int, load: str, seeds: int) -> list[list[str]]:
    stats: dict[str, list[tuple[float, ...]]] = {p: [] for p in POLICIES}
    bounds = []
    for seed in range(seeds):
        work, cluster = make_cluster(nodes, workloads, load=load, seed=seed)
        bounds.append(lower_bound(work, cluster))
        for name, policy in POLICIES.items():
            start = time.perf_counter()
            r = policy(work, cluster)
            seconds = time.perf_counter() - start
            p99 = float(np.percentile(per_workload_bytes(r), 99)) if r.assignments else 0.0
            started = sum(w.replicas for w in work) - r.pending_replicas
            stats[name].append((r.pending_replicas, r.bytes_to_fetch, p99, seconds,
                                r.bytes_to_fetch / max(1, started)))
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
    if None not in bounds:  # every replica can be placed: no placement fetches less
        bound = statistics.median(bounds)
        rows.append([f"{nodes}x{workloads}", load, "(lower bound)", 0, f"{bound / GIB:,.0f}",
                     "", "", f"{bound / greedy_bytes:.2f}" if greedy_bytes else "-", ""])
    return rows


def scaling() -> list[list[str]]:
    rows = []
    for nodes in (100, 1000, 5000, 10000):
        work, cluster = make_cluster(nodes, nodes // 5, load="normal", seed=0)
        times = {}
        for name in ("greedy", "milp"):
            start = time.perf_counter()
            # The goals: 5,000 nodes under 2 s (the default limit), 10,000 under 5 s.
            limit = 5.0 if nodes > 5000 else 2.0
            r = solve(work, cluster, time_limit=limit) if name == "milp" else greedy(
                work, cluster)
            times[name] = time.perf_counter() - start
        rows.append([nodes, nodes // 5, f"{times['greedy']:.2f}", f"{times['milp']:.2f}",
                     r.note])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for nodes, workloads in SIZES:
        for load in ("normal", "tight"):
            rows += run(nodes, workloads, load, args.seeds)
    print(f"\nmedians over {args.seeds} seeds; bytes in GiB, charged once per (node, image)\n")
    print(table(["nodes x workloads", "load", "policy", "pending replicas", "bytes (GiB)",
                 "p99 per workload (GiB)", "time (s)", "bytes / greedy",
                 "bytes per started replica / greedy"], rows))
    print("\nMILP time as the cluster grows (workloads = nodes / 5, normal load, seed 0, "
          "time limit 2 s, 5 s at 10,000 nodes)\n")
    print(table(["nodes", "workloads", "greedy (s)", "milp (s)", "milp status"], scaling()))


if __name__ == "__main__":
    main()
