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
without them is passed through with scores 0.

GPU pods are also placed jointly (``plan.py``): the extender remembers the pods it is asked
about, and ``replan`` (every ``replan`` seconds, from a thread the command starts) places
them together with the MILP. While that plan is fresh (``stale`` seconds), a pod in it gets
10 on its planned node and at most 9 elsewhere, and ``filter`` fails a node whose free GPUs,
less those the plan keeps there for other pods, are too few for this one (when its own
planned node is a candidate, so it always has somewhere to go). A pod not in the plan, or
any pod when the plan is stale, is scored on its own. The scoring is pure
(``filter_nodes``, ``scores``); ``Extender`` adds the store's view: node reports read at
most every ``refresh`` seconds, refs and image sizes cached. The HTTP server is in the
command-line layer (``thaw/extender.py``); this package stays numpy and scipy only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .model import Node
from .plan import PendingPod, PendingPods, Plan, plan_pods

log = logging.getLogger(__name__)
ANNOTATION = "thaw.dev/image"
GPU_MEMORY = "thaw.dev/gpu-memory"
GPU = "nvidia.com/gpu"
MAX_BODY = 16 << 20
MAX_SCORE = 10


def pod_gpus(pod: dict) -> int:
    """GPUs the pod asks for: the sum over its containers of ``nvidia.com/gpu``."""
    total = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        value = (res.get("limits") or {}).get(GPU) or (res.get("requests") or {}).get(GPU) or 0
        try:
            total += int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{GPU} of container {c.get('name')!r} is not a number") from None
    return total


def pod_gpu_memory(pod: dict) -> int:
    """Bytes of memory each GPU needs free (annotation ``thaw.dev/gpu-memory``: 40G, 512M,
    or bytes); 0 when not given."""
    text = ((pod.get("metadata") or {}).get("annotations") or {}).get(GPU_MEMORY)
    if not text:
        return 0
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = str(text).strip().upper().removesuffix("I").removesuffix("B")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except (ValueError, KeyError):
        raise ValueError(f"annotation {GPU_MEMORY}={text!r} is not a size such as 40G") \
            from None


def pod_image(pod: dict) -> str | None:
    return ((pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)


def pod_uid(pod: dict) -> str:
    meta = pod.get("metadata") or {}
    return str(meta.get("uid") or f"{meta.get('namespace', 'default')}/{meta.get('name', '')}")


def node_names(args: dict) -> tuple[list[str], bool]:
    """The candidate node names, and whether they came as a NodeList (``Nodes``)."""
    if args.get("Nodes") is not None:
        items = (args["Nodes"] or {}).get("items") or []
        return [(n.get("metadata") or {}).get("name", "") for n in items], True
    return list(args.get("NodeNames") or []), False


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
    """The store's view, cached: ``nodes()`` and ``image(ref)`` -> (manifest id, bytes)."""

    def __init__(self, reports: Callable[[], dict[str, Node]],
                 resolve: Callable[[str], tuple[str, int]], refresh: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, replan: float = 5.0) -> None:
        self._reports, self._resolve, self.refresh, self._clock = reports, resolve, refresh, clock
        self._nodes: dict[str, Node] = {}
        self._at = -1e18
        self._images: dict[str, tuple[float, tuple[str, int]]] = {}
        self._lock = threading.Lock()
        self.replan_every, self.stale = replan, 3 * replan
        self.pending = PendingPods()
        self.plan = Plan()

    def _note(self, pod: dict) -> PendingPod | None:
        """Remember a GPU pod with a thaw image (for the joint plan); None for others."""
        ref, gpus = pod_image(pod), pod_gpus(pod)
        if not ref or not gpus or self.replan_every <= 0:  # (0: no joint plan, keep none)
            return None
        try:
            mid, size = self.image(ref)
        except Exception:  # noqa: BLE001 - an unknown image: scored on its own, said there
            return None
        seen = PendingPod(pod_uid(pod), mid, size, gpus, pod_gpu_memory(pod))
        with self._lock:
            self.pending.seen(seen, self._clock())
        return seen

    def replan(self, time_limit: float = 2.0) -> Plan:
        """Place every pod asked about lately, together; the plan that ``filter`` and
        ``prioritize`` follow until it is ``stale``."""
        nodes = list(self.nodes().values())
        with self._lock:
            pods = self.pending.current(self._clock())
        plan = plan_pods(pods, nodes, self._clock(), time_limit=time_limit)
        with self._lock:
            self.plan = plan
        if pods:
            log.info("joint plan: %d of %d pending GPU pods placed (%s)", len(plan.node_of),
                     len(pods), plan.note)
        return plan

    def _fresh_plan(self) -> Plan | None:
        with self._lock:
            return self.plan if self._clock() - self.plan.at <= self.stale else None

    def nodes(self) -> dict[str, Node]:
        with self._lock:
            if self._clock() - self._at >= self.refresh:
                try:
                    self._nodes = self._reports()
                except Exception as exc:  # noqa: BLE001 - keep the last view, say why
                    log.warning("node reports not read, using the last ones: %s", exc)
                self._at = self._clock()
            return self._nodes

    def image(self, ref: str) -> tuple[str, int]:
        with self._lock:
            hit = self._images.get(ref)
            if hit and self._clock() - hit[0] < 30:
                return hit[1]
        got = self._resolve(ref)
        with self._lock:
            self._images[ref] = (self._clock(), got)
        return got

    def filter(self, args: dict) -> dict:
        names, as_list = node_names(args)
        try:
            pod = args.get("Pod") or {}
            nodes = self.nodes()
            failed = filter_nodes(names, pod_gpus(pod), nodes, pod_gpu_memory(pod))
            if self._note(pod) is not None:
                failed.update(self._kept(pod_uid(pod), pod_gpus(pod), names, nodes, failed))
        except ValueError as exc:
            return {"Nodes": None, "NodeNames": None, "FailedNodes": {},
                    "FailedAndUnresolvableNodes": {}, "Error": str(exc)}
        keep = [n for n in names if n not in failed]
        result = {"FailedNodes": failed, "FailedAndUnresolvableNodes": {}, "Error": ""}
        if as_list:
            items = [n for n in (args["Nodes"] or {}).get("items") or []
                     if (n.get("metadata") or {}).get("name") in keep]
            return {"Nodes": {**(args["Nodes"] or {}), "items": items}, "NodeNames": None,
                    **result}
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

    def prioritize(self, args: dict) -> list[dict]:
        names, _ = node_names(args)
        pod = args.get("Pod") or {}
        ref = pod_image(pod)
        if not ref:
            return scores(names, None, 0, {})
        try:
            mid, size = self.image(ref)
            self._note(pod)
        except Exception as exc:  # noqa: BLE001 - an unknown image scores 0 everywhere
            log.warning("pod image %s: %s; scoring every node 0", ref, exc)
            return scores(names, None, 0, {})
        alone = scores(names, mid, size, self.nodes())
        plan = self._fresh_plan()
        planned = plan.node_of.get(pod_uid(pod)) if plan else None
        if planned is None:
            return alone
        return [{"Host": s["Host"], "Score": MAX_SCORE if s["Host"] == planned
                 else min(MAX_SCORE - 1, s["Score"])} for s in alone]
