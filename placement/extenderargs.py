"""The kube-scheduler extender's request body (``ExtenderArgs``), its shape checked once.

The protocol (``k8s.io/kube-scheduler/extender/v1``) sends ``Pod``, and the candidate
nodes as ``Nodes`` (a NodeList) or ``NodeNames``. ``parse`` checks the shape of every part
thaw reads (objects where objects are due, lists where lists are, strings and numbers where
those are) and returns a frozen record; anything else is ``BadRequest``, which the HTTP
layer answers 400 with one line. Values thaw cannot use in a well-formed body (a GPU count
of 1e999, a size of 5,000 digits) are not shape errors: ``pod_gpus`` and
``pod_gpu_memory`` raise ValueError for them, and the extender answers as the protocol
does when it cannot help (every node passes, scores 0, the reason in ``Error``).
Pure; no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ANNOTATION = "thaw.dev/image"
GPU_MEMORY = "thaw.dev/gpu-memory"
GPU = "nvidia.com/gpu"
MAX_GPUS = 1 << 16
MAX_SIZE = 1 << 60


class BadRequest(ValueError):
    """A body that is not ``ExtenderArgs`` (its message names the part)."""


@dataclass(frozen=True)
class ExtenderArgs:
    pod: dict  # the parts read are checked: metadata, spec.containers[].resources
    names: tuple[str, ...]  # the candidate nodes, in the order sent
    node_list: dict | None = None  # the NodeList as sent (``Nodes``), echoed back filtered

    def annotation(self, key: str) -> str | None:
        return (self.pod.get("metadata") or {}).get("annotations", {}).get(key)

    def uid(self) -> str:
        meta = self.pod.get("metadata") or {}
        return meta.get("uid") or f"{meta.get('namespace') or 'default'}/{meta.get('name', '')}"


def parse(doc: object) -> ExtenderArgs:
    """``doc`` (decoded JSON) as ``ExtenderArgs``; BadRequest if its shape is not one."""
    body = _object(doc, "the body")
    pod = _pod(body.get("Pod"))
    if body.get("Nodes") is not None:
        nodes = _object(body["Nodes"], "Nodes")
        items = _list(nodes.get("items"), "Nodes.items")
        names = tuple(_node_name(item, i) for i, item in enumerate(items))
        return ExtenderArgs(pod, names, {**nodes, "items": items})
    names = _list(body.get("NodeNames"), "NodeNames")
    for i, name in enumerate(names):
        _string(name, f"NodeNames[{i}]")
    return ExtenderArgs(pod, tuple(names))


def _pod(value: object) -> dict:
    pod = _object(value, "Pod", optional=True)
    meta = _object(pod.get("metadata"), "Pod.metadata", optional=True)
    for key in ("name", "namespace", "uid"):
        _string(meta.get(key), f"Pod.metadata.{key}", optional=True)
    annotations = _object(meta.get("annotations"), "Pod.metadata.annotations", optional=True)
    for key, text in annotations.items():
        _string(text, f"Pod.metadata.annotations[{key!r}]")
    spec = _object(pod.get("spec"), "Pod.spec", optional=True)
    containers = _list(spec.get("containers"), "Pod.spec.containers")
    for i, c in enumerate(containers):
        where = f"Pod.spec.containers[{i}]"
        _string(_object(c, where).get("name"), f"{where}.name", optional=True)
        res = _object(c.get("resources"), f"{where}.resources", optional=True)
        for kind in ("limits", "requests"):
            for key, q in _object(res.get(kind), f"{where}.resources.{kind}",
                                  optional=True).items():
                if isinstance(q, bool) or not isinstance(q, str | int | float):
                    raise BadRequest(f"{where}.resources.{kind}[{key!r}] must be a quantity "
                                     "(a string or a number)")
    return {**pod, "metadata": {**meta, "annotations": annotations},
            "spec": {**spec, "containers": containers}}


def _node_name(item: object, i: int) -> str:
    meta = _object(_object(item, f"Nodes.items[{i}]").get("metadata"),
                   f"Nodes.items[{i}].metadata")
    return _string(meta.get("name"), f"Nodes.items[{i}].metadata.name")


def _object(value: object, where: str, optional: bool = False) -> dict:
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be a JSON object")
    return value


def _list(value: object, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest(f"{where} must be a JSON list")
    return value


def _string(value: object, where: str, optional: bool = False) -> str:
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be a string")
    return value


def pod_gpus(args: ExtenderArgs) -> int:
    """GPUs the pod asks for: the sum over its containers of ``nvidia.com/gpu`` (its limit,
    else its request); ValueError for a count that is not a whole number up to 65,536."""
    total = 0
    for c in args.pod["spec"]["containers"]:
        res = c.get("resources") or {}
        value = (res.get("limits") or {}).get(GPU) or (res.get("requests") or {}).get(GPU) or 0
        total += _count(value, f"{GPU} of container {c.get('name')!r}")
    return total


def _count(value: object, what: str) -> int:
    if isinstance(value, str) and value.strip().isdigit() and len(value) <= 8:
        value = int(value)
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= MAX_GPUS:
        raise ValueError(f"{what} is {str(value)[:40]!r}, not a whole number of GPUs")
    return value


def pod_gpu_memory(args: ExtenderArgs) -> int:
    """Bytes of memory each GPU needs free (annotation ``thaw.dev/gpu-memory``: 40G, 512M,
    or bytes); 0 when not given; ValueError for anything else."""
    text = args.annotation(GPU_MEMORY)
    if not text:
        return 0
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("I").removesuffix("B")
    number, unit = (t[:-1], units[t[-1]]) if t and t[-1] in units else (t, 1)
    try:
        size = float(number) * unit if len(number) <= 32 else math.inf
    except ValueError:
        size = math.nan
    if not 0 <= size <= MAX_SIZE:
        raise ValueError(f"annotation {GPU_MEMORY}={text[:40]!r} is not a size such as 40G")
    return int(size)
