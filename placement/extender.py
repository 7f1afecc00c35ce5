"""A Kubernetes scheduler extender that favours nodes whose thaw caches hold a pod's image.

The protocol is ``k8s.io/kube-scheduler/extender/v1`` (Go types without JSON tags, so the
keys are the capitalised field names), served at the root so that the scheduler's
``urlPrefix`` is ``http://HOST:PORT``:

- ``POST /filter`` takes ``ExtenderArgs`` (``Pod``, and ``Nodes`` (a NodeList) or
  ``NodeNames``) and answers ``ExtenderFilterResult`` (``Nodes``/``NodeNames``,
  ``FailedNodes``, ``FailedAndUnresolvableNodes``, ``Error``): a node whose fresh thaw
  report shows fewer free GPUs than the pod's ``nvidia.com/gpu`` limits or requests
  fails; a node with no fresh report passes (thaw knows nothing against it).
- ``POST /prioritize`` answers a ``HostPriorityList`` (``[{"Host", "Score"}]``): 0-10, the
  share of the pod's image already in the node's disk cache, by bytes
  (``cached[manifest] / image bytes`` from the node reports), so a node that holds the
  image scores 10 and one that holds none 0. Kubernetes' own ImageLocality sees whole images
  of ``Node.status.images`` only (at most 50 per node); this sees every image thaw has
  served, partially cached ones at their share.

A pod names its thaw image with the annotation ``thaw.dev/image`` (``NAME:TAG`` or a
manifest id), and the memory each GPU needs with ``thaw.dev/gpu-memory`` (``40G``); a pod
without them is passed through with scores 0. The body's shape is checked once, at the
edge (``extenderargs.parse``); these methods take the checked record.

GPU pods are also placed jointly (``plan.py``): the extender remembers the pods it is asked
about, and ``replan`` (every ``replan`` seconds, from a thread the command starts) places
them together with the MILP. While that plan is fresh (``stale`` seconds), a pod in it gets
10 on its planned node and at most 9 elsewhere, and ``filter`` fails a node whose free GPUs,
less those the plan keeps there for other pods, are too few for this one (when its own
planned node is a candidate, so it always has somewhere to go). A pod not in the plan, or
any pod when the plan is stale, is scored on its own. The scoring is pure
(``filter_nodes``, ``scores``); ``Extender`` adds the store's view: node reports read at
most every ``refresh`` seconds, refs and image sizes cached. The HTTP server is
``extenderhttp.py``; the store's reports and images come in from ``cli.py``, so this
package stays numpy and scipy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .extenderargs import ANNOTATION, ExtenderArgs, pod_gpu_memory, pod_gpus
from .model import Node
from .plan import PendingPod, PendingPods, Plan, plan_pods
from .view import StoreView

log = logging.getLogger(__name__)
MAX_BODY = 16 << 20
MAX_SCORE = 10


def filter_nodes(names: list[str], gpus: int, nodes: dict[str, Node],
                 gpu_memory: int = 0) -> dict[str, str]:
    """The nodes that fail, with why (the rest pass: a node without a fresh report too)."""
    failed = {}
    for name in names:
        node = nodes.get(name)
        if not gpus or node is None:
            continue
        if node.gpus_free < gpus:
            failed[name] = f"thaw: {node.gpus_free} free GPUs reported, the pod needs {gpus}"
        elif gpu_memory and node.gpu_memory < gpu_memory:
            failed[name] = (f"thaw: {node.gpu_memory >> 20} MiB free per GPU, the pod needs "
                            f"{gpu_memory >> 20} MiB")
    return failed


def scores(names: list[str], image: str | None, image_bytes: int,
           nodes: dict[str, Node]) -> list[dict]:
    """``HostPriorityList``: the share of the image cached on each node, 0-10."""
    out = []
    for name in names:
        node = nodes.get(name)
        cached = node.cached.get(image, 0) if node is not None and image else 0
        share = min(1.0, cached / image_bytes) if image_bytes else 0.0
        out.append({"Host": name, "Score": round(MAX_SCORE * share)})
    return out


class Extender:
    """Answers ``filter`` and ``prioritize`` from the store's view (``view.StoreView``:
    node reports and images, never waited on for long), and keeps the joint plan."""

    def __init__(self, reports: Callable[[], dict[str, Node]],
                 resolve: Callable[[str], tuple[str, int]], refresh: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, replan: float = 5.0) -> None:
        self.view = StoreView(reports, resolve, refresh=refresh, clock=clock)
        self._clock = clock
        self._lock = threading.Lock()
        self.replan_every, self.stale = replan, 3 * replan
        self.pending = PendingPods()
        self.plan = Plan()

    def nodes(self) -> dict[str, Node]:
        return self.view.nodes()

    def image(self, ref: str) -> tuple[str, int]:
        return self.view.image(ref)

    def _note(self, args: ExtenderArgs) -> PendingPod | None:
        """Remember a GPU pod with a thaw image (for the joint plan); None for others."""
        ref, gpus = args.annotation(ANNOTATION), pod_gpus(args)
        if not ref or not gpus or self.replan_every <= 0:  # (0: no joint plan, keep none)
            return None
        try:
            mid, size = self.image(ref)
        except Exception:  # noqa: BLE001 - an unknown image: scored on its own, said there
            return None
        seen = PendingPod(args.uid(), mid, size, gpus, pod_gpu_memory(args))
        with self._lock:
            self.pending.seen(seen, self._clock())
        return seen

    def replan(self, time_limit: float = 2.0) -> Plan:
        """Place every pod asked about lately, together; the plan that ``filter`` and
        ``prioritize`` follow until it is ``stale``. ``time_limit`` bounds the placement;
        the snapshot's prices are built before it, once per snapshot."""
        snap = self.view.snapshot()
        with self._lock:
            pods = self.pending.current(self._clock())
        prices = snap.prices({p.image for p, _ in pods}) if pods and snap.nodes else None
        plan = plan_pods(pods, list(snap.nodes.values()), self._clock(),
                         time_limit=time_limit, prices=prices)
        with self._lock:
            self.plan = plan
        if pods:
            log.info("joint plan: %d of %d pending GPU pods placed (%s)", len(plan.node_of),
                     len(pods), plan.note)
        return plan

    def _fresh_plan(self) -> Plan | None:
        with self._lock:
            return self.plan if self._clock() - self.plan.at <= self.stale else None

    def filter(self, args: ExtenderArgs) -> dict:
        """``ExtenderFilterResult``. A pod whose values thaw cannot use (a GPU count that is
        no number) passes every node, with the reason in ``Error``."""
        names = list(args.names)
        try:
            gpus, nodes = pod_gpus(args), self.nodes()
            failed = filter_nodes(names, gpus, nodes, pod_gpu_memory(args))
            if self._note(args) is not None:
                failed.update(self._kept(args.uid(), gpus, names, nodes, failed))
            error = ""
        except ValueError as exc:
            failed, error = {}, str(exc)
        keep = [n for n in names if n not in failed]
        result = {"FailedNodes": failed, "FailedAndUnresolvableNodes": {}, "Error": error}
        if args.node_list is not None:
            items = [item for item, name in zip(args.node_list["items"], names, strict=True)
                     if name in keep]
            return {"Nodes": {**args.node_list, "items": items}, "NodeNames": None, **result}
        return {"Nodes": None, "NodeNames": keep, **result}

    def _kept(self, uid: str, gpus: int, names: list[str], nodes: dict[str, Node],
              failed: dict[str, str]) -> dict[str, str]:
        """Nodes whose room a fresh plan keeps for other pods, when this pod's own planned
        node is among the candidates that pass."""
        plan = self._fresh_plan()
        mine = plan.node_of.get(uid) if plan else None
        if mine is None or mine not in names or mine in failed:
            return {}
        out = {}
        for name in names:
            node, kept = nodes.get(name), plan.kept_for_others(uid, name)
            if name != mine and node is not None and kept and node.gpus_free - kept < gpus:
                out[name] = (f"thaw: the joint plan keeps {kept} of its {node.gpus_free} free "
                             f"GPUs for other pending pods; this pod is planned on {mine}")
        return out

    def prioritize(self, args: ExtenderArgs) -> list[dict]:
        names = list(args.names)
        ref = args.annotation(ANNOTATION)
        if not ref:
            return scores(names, None, 0, {})
        try:
            mid, size = self.image(ref)
            self._note(args)
        except Exception as exc:  # noqa: BLE001 - an unknown image scores 0 everywhere
            log.warning("pod image %s: %s; scoring every node 0", ref[:200], exc)
            return scores(names, None, 0, {})
        alone = scores(names, mid, size, self.nodes())
        plan = self._fresh_plan()
        planned = plan.node_of.get(args.uid()) if plan else None
        if planned is None:
            return alone
        return [{"Host": s["Host"], "Score": MAX_SCORE if s["Host"] == planned
                 else min(MAX_SCORE - 1, s["Score"])} for s in alone]
