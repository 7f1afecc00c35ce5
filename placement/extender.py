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
without them is passed through with scores 0. Not built: placing pending pods jointly
with the LP (each pod is scored on its own). The scoring is pure
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
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._reports, self._resolve, self.refresh, self._clock = reports, resolve, refresh, clock
        self._nodes: dict[str, Node] = {}
        self._at = -1e18
        self._images: dict[str, tuple[float, tuple[str, int]]] = {}
        self._lock = threading.Lock()

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
            failed = filter_nodes(names, pod_gpus(pod), self.nodes(), pod_gpu_memory(pod))
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

    def prioritize(self, args: dict) -> list[dict]:
        names, _ = node_names(args)
        ref = pod_image(args.get("Pod") or {})
        if not ref:
            return scores(names, None, 0, {})
        try:
            mid, size = self.image(ref)
        except Exception as exc:  # noqa: BLE001 - an unknown image scores 0 everywhere
            log.warning("pod image %s: %s; scoring every node 0", ref, exc)
            return scores(names, None, 0, {})
        return scores(names, mid, size, self.nodes())
