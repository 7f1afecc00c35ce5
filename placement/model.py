"""What placement reasons about: workloads, nodes, and the result. Pure data, validated.

Workloads arrive as JSON (a workload file) and nodes as node reports (``reports.py``);
``parse_workloads`` and ``blobstore.schema.NodeReport.from_json`` (run by the command line,
which passes the reports in) check every field and say which one is wrong. Imports nothing
of thaw's packages. Immutable once built; thread-safe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?", re.IGNORECASE)
_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}


class PlacementInputError(ValueError):
    """A workload file or node report that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Workload:
    name: str
    image: str  # manifest id (or any name the node reports use for the image)
    image_bytes: int
    replicas: int = 1
    gpus: int = 1  # per replica
    gpu_memory: int = 0  # bytes needed on each of its GPUs
    gpu_model: str | None = None  # None: any model
    age: float = 0.0  # seconds waiting; older first when capacity is short


@dataclass(frozen=True)
class Node:
    id: str
    gpu_model: str
    gpus_free: int
    gpu_memory: int  # bytes free on each free GPU (the smallest, to be safe)
    cached: dict[str, int] = field(default_factory=dict)  # image -> bytes already on the node
    cache_bytes: int = 0
    cache_limit: int = 0

    def missing(self, w: Workload) -> int:
        """Bytes ``w``'s image still needs on this node."""
        return max(0, w.image_bytes - self.cached.get(w.image, 0))

    def fits(self, w: Workload) -> bool:
        return (self.gpus_free >= w.gpus and self.gpu_memory >= w.gpu_memory
                and (w.gpu_model is None or w.gpu_model == self.gpu_model))


@dataclass(frozen=True)
class Assignment:
    workload: str
    node: str
    replicas: int
    bytes_to_fetch: int  # once per (node, image): the node's cache serves later replicas


@dataclass
class Result:
    policy: str
    assignments: list[Assignment]
    pending: dict[str, int]  # workload -> replicas left unplaced
    seconds: float = 0.0
    note: str = ""

    @property
    def pending_replicas(self) -> int:
        return sum(self.pending.values())

    @property
    def bytes_to_fetch(self) -> int:
        return sum(a.bytes_to_fetch for a in self.assignments)

    def as_dict(self) -> dict:
        return {"policy": self.policy, "seconds": round(self.seconds, 4), "note": self.note,
                "bytes_to_fetch": self.bytes_to_fetch, "pending_replicas": self.pending_replicas,
                "pending": self.pending,
                "assignments": [a.__dict__ for a in self.assignments]}


def parse_size(value: object, where: str) -> int:
    if isinstance(value, bool):
        raise PlacementInputError(f"{where}: expected a size, got {value!r}")
    if isinstance(value, int | float) and value >= 0:
        return int(value)
    match = _SIZE_RE.fullmatch(str(value).strip()) if isinstance(value, str) else None
    if not match:
        raise PlacementInputError(f"{where}: expected bytes or a size like '40G', "
                                  f"got {value!r}")
    return int(float(match.group(1)) * (1 << _SHIFT[match.group(2).lower()]))


def _int(doc: dict, key: str, where: str, default: int | None = None, low: int = 0) -> int:
    value = doc.get(key, default)
    if value is None:
        raise PlacementInputError(f"{where}: missing field '{key}'")
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise PlacementInputError(f"{where}: field '{key}' must be an integer >= {low}, "
                                  f"got {value!r}")
    return value


def parse_workload(doc: object, n: int) -> Workload:
    where = f"workload {n}"
    if not isinstance(doc, dict):
        raise PlacementInputError(f"{where}: expected an object, got {type(doc).__name__}")
    name = doc.get("name", f"w{n}")
    where = f"workload {n} ({name})"
    image = doc.get("image")
    if not isinstance(image, str) or not image:
        raise PlacementInputError(f"{where}: missing field 'image' (a manifest id)")
    if "image_bytes" not in doc:
        raise PlacementInputError(f"{where}: missing field 'image_bytes'")
    model = doc.get("gpu_model")
    if model is not None and not isinstance(model, str):
        raise PlacementInputError(f"{where}: field 'gpu_model' must be a string")
    age = doc.get("age", 0)
    if isinstance(age, bool) or not isinstance(age, int | float) or age < 0:
        raise PlacementInputError(f"{where}: field 'age' must be seconds >= 0, got {age!r}")
    return Workload(str(name), image, parse_size(doc["image_bytes"], f"{where}: image_bytes"),
                    _int(doc, "replicas", where, 1, 1), _int(doc, "gpus", where, 1, 1),
                    parse_size(doc.get("gpu_memory", 0), f"{where}: gpu_memory"), model,
                    float(age))


def parse_workloads(doc: object) -> list[Workload]:
    if isinstance(doc, dict) and "workloads" in doc:
        doc = doc["workloads"]
    if not isinstance(doc, list):
        raise PlacementInputError("the workload file holds a list of workloads (or "
                                  "{\"workloads\": [...]})")
    workloads = [parse_workload(d, i) for i, d in enumerate(doc)]
    names = [w.name for w in workloads]
    dup = next((x for x in names if names.count(x) > 1), None)
    if dup is not None:
        raise PlacementInputError(f"workload name {dup!r} appears twice")
    return workloads
