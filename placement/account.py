"""Turning placements into a Result, charged the way a cluster pays for them.

A node fetches an image's missing bytes once: later replicas of any workload with the same
image on that node read its cache. Every policy is scored by this one function, so their
figures compare. Pure; thread-safe.
"""

from __future__ import annotations

from collections import defaultdict

from .model import Assignment, Node, Result, Workload


def account(policy: str, workloads: list[Workload], nodes: list[Node],
            placed: list[tuple[int, int, int]], seconds: float = 0.0, note: str = "") -> Result:
    """``placed``: (workload index, node index, replicas). Raises if capacity is exceeded."""
    used = defaultdict(int)
    count: dict[tuple[int, int], int] = defaultdict(int)
    for w, n, k in placed:
        if k > 0:
            count[(w, n)] += k
            used[n] += k * workloads[w].gpus
    for n, gpus in used.items():
        if gpus > nodes[n].gpus_free:
            raise AssertionError(f"{policy} overfilled node {nodes[n].id}: {gpus} GPUs > "
                                 f"{nodes[n].gpus_free}")
    fetched: set[tuple[int, str]] = set()
    assignments, placed_per = [], defaultdict(int)
    for (w, n), k in sorted(count.items()):
        wl, node = workloads[w], nodes[n]
        if not node.fits(wl):
            raise AssertionError(f"{policy} put {wl.name} on {node.id}, which cannot run it")
        first = (n, wl.image) not in fetched
        fetched.add((n, wl.image))
        assignments.append(Assignment(wl.name, node.id, k, node.missing(wl) if first else 0))
        placed_per[w] += k
    pending = {wl.name: wl.replicas - placed_per[i] for i, wl in enumerate(workloads)
               if wl.replicas > placed_per[i]}
    if any(v < 0 for v in pending.values()):
        raise AssertionError(f"{policy} placed more replicas than asked")
    return Result(policy, assignments, pending, seconds, note)


def per_workload_bytes(result: Result) -> list[int]:
    """Bytes each placed workload made the cluster fetch (for percentiles)."""
    by = defaultdict(int)
    for a in result.assignments:
        by[a.workload] += a.bytes_to_fetch
    return list(by.values())
