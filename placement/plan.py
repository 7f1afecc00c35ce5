"""Joint placement of the pods a scheduler extender has seen pending: the MILP over all of
them at once, turned into one node per pod.

kube-scheduler asks about one pod at a time; placed one at a time, the first pod of a burst
takes the node whose cache holds the second's image as readily as its own. The extender
keeps the GPU pods it has been asked about (``PendingPods``), and every few seconds plans
them together: pods of the same image and shape are one workload (its replicas, oldest
pod's age), ``milp.solve`` places them, and its assignments are handed out oldest pod
first. ``Plan`` then answers, per pod and node, what the scheduler's calls need: the planned
node, and the GPUs the plan keeps on a node for other pods. Pure; ``PendingPods`` and
``Plan`` are not locked (the extender holds its lock around them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import Node, Workload


@dataclass(frozen=True)
class PendingPod:
    uid: str
    image: str  # manifest id
    image_bytes: int
    gpus: int
    gpu_memory: int = 0


@dataclass
class PendingPods:
    """The pods asked about in the last ``forget`` seconds (a pod the scheduler has bound
    is not asked about again; one it retries is, within its backoff, 10 s at most)."""

    forget: float = 30.0
    pods: dict[str, tuple[PendingPod, float, float]] = field(default_factory=dict)

    def seen(self, pod: PendingPod, now: float) -> None:
        first = self.pods[pod.uid][1] if pod.uid in self.pods else now
        self.pods[pod.uid] = (pod, first, now)

    def current(self, now: float) -> list[tuple[PendingPod, float]]:
        """(pod, first seen) of those seen within ``forget``; the rest are dropped."""
        self.pods = {u: v for u, v in self.pods.items() if now - v[2] <= self.forget}
        return [(pod, first) for pod, first, _ in self.pods.values()]


@dataclass
class Plan:
    node_of: dict[str, str] = field(default_factory=dict)  # pod uid -> node
    gpus_on: dict[str, int] = field(default_factory=dict)  # node -> GPUs planned there
    gpus_of: dict[str, int] = field(default_factory=dict)  # pod uid -> its GPUs
    at: float = -1e18
    note: str = ""

    def kept_for_others(self, uid: str, node: str) -> int:
        """GPUs the plan gives other pods on ``node``."""
        mine = self.gpus_of.get(uid, 0) if self.node_of.get(uid) == node else 0
        return self.gpus_on.get(node, 0) - mine


def plan_pods(pods: list[tuple[PendingPod, float]], nodes: list[Node], now: float, *,
              time_limit: float = 2.0, prices=None) -> Plan:
    """One node per pod that the MILP places (pods it leaves pending are not in the plan).
    ``prices``: the report snapshot's (``view.Snapshot.prices``), built outside the limit."""
    groups: dict[tuple, list[tuple[float, str]]] = {}
    for pod, first in pods:
        key = (pod.image, pod.image_bytes, pod.gpus, pod.gpu_memory)
        groups.setdefault(key, []).append((first, pod.uid))
    keys = sorted(groups)
    workloads = []
    for i, key in enumerate(keys):
        members = sorted(groups[key])  # oldest first: they get the plan's first nodes
        groups[key] = members
        image, size, gpus, memory = key
        workloads.append(Workload(f"g{i}", image, size, len(members), gpus, memory,
                                  age=max(0.0, now - members[0][0])))
    plan = Plan(at=now)
    if not workloads or not nodes:
        return plan
    from .milp import solve  # scipy: only the extender's planning thread pays its import

    result = solve(workloads, nodes, time_limit=time_limit, prices=prices)
    plan.note = result.note
    queues = {f"g{i}": [uid for _, uid in groups[key]] for i, key in enumerate(keys)}
    gpus = {f"g{i}": key[2] for i, key in enumerate(keys)}
    for a in sorted(result.assignments, key=lambda a: (a.workload, a.node)):
        for _ in range(a.replicas):
            uid = queues[a.workload].pop(0)
            plan.node_of[uid] = a.node
            plan.gpus_of[uid] = gpus[a.workload]
            plan.gpus_on[a.node] = plan.gpus_on.get(a.node, 0) + gpus[a.workload]
    return plan
