"""What every (node, image) pair costs, as numpy arrays built once per placement round.

Node reports list cached bytes per image; this turns them into, per image, the nodes that
hold part of it, so the missing bytes of an image on every node (or on just its warm nodes)
are one vectorised expression, not a Python call per node. Pure; thread-safe once built.
"""

from __future__ import annotations

import copy
from array import array

import numpy as np

from .model import Node, Workload


class Prices:
    def __init__(self, nodes: list[Node], images: set[str] | None = None) -> None:
        """``images``: the only images asked about (the workloads'); all when None."""
        self.nodes = nodes
        self.free = np.array([n.gpus_free for n in nodes], dtype=np.int64)
        self.mem = np.array([n.gpu_memory for n in nodes], dtype=np.int64)
        models = sorted({n.gpu_model for n in nodes})
        self.model_code = {m: i for i, m in enumerate(models)}
        self.model = np.array([self.model_code[n.gpu_model] for n in nodes], dtype=np.int64)
        # Reports list every image a node holds part of (thousands, when base layers are
        # shared); only the asked-about ones are indexed. A node holding many of them is
        # read as a dense row (a C-level dict.get per asked image; a size of 0 holds no
        # part), one holding few by a key intersection; then numpy groups them by image.
        if images is None:
            images = {image for n in nodes for image in n.cached}
        names = sorted(images)
        codes = {image: k for k, image in enumerate(names)}
        absent = [0] * len(names)
        node_of, code_of, size_of = [], [], []
        for i, n in enumerate(nodes):
            if 2 * len(n.cached) >= len(names):
                held = np.frombuffer(array("q", map(n.cached.get, names, absent)), np.int64)
                code = np.flatnonzero(held)
                size = held[code]
            else:
                keys = n.cached.keys() & codes.keys()
                code = np.frombuffer(array("q", map(codes.__getitem__, keys)), np.int64)
                size = np.frombuffer(array("q", map(n.cached.__getitem__, keys)), np.int64)
                code, size = code[size > 0], size[size > 0]  # as the dense row reads them
            node_of.append(np.full(len(code), i))
            code_of.append(code)
            size_of.append(size)
        node_arr, code_arr, size_arr = (np.concatenate(x) if x else np.empty(0, np.int64)
                                        for x in (node_of, code_of, size_of))
        by_code = np.argsort(code_arr, kind="stable")
        bounds = np.searchsorted(code_arr[by_code], np.arange(len(codes) + 1))
        self.holders = {}
        for image, k in codes.items():
            sel = by_code[bounds[k]:bounds[k + 1]]
            if len(sel):
                self.holders[image] = (node_arr[sel], size_arr[sel])
        self.fetched: dict[str, list[int]] = {}  # image -> nodes it is placed on this round

    def after(self, placed: list[tuple[str, int, int]]) -> Prices:
        """These prices once ``placed`` (image, node, GPUs) have started: those GPUs are
        taken, and those nodes hold those images. Shares the rest; the original is kept."""
        out = copy.copy(self)
        out.free = self.free.copy()
        out.fetched = {k: list(v) for k, v in self.fetched.items()}
        for image, node, gpus in placed:
            out.free[node] -= gpus
            out.fetched.setdefault(image, []).append(node)
        return out

    def suits(self, w: Workload) -> np.ndarray:
        """Nodes whose GPUs are of ``w``'s model and memory, free GPUs aside."""
        ok = self.mem >= w.gpu_memory
        if w.gpu_model is not None:
            ok &= self.model == self.model_code.get(w.gpu_model, -1)
        return ok

    def warm(self, w: Workload) -> tuple[np.ndarray, np.ndarray]:
        """Nodes holding part of ``w``'s image, and the bytes each still misses."""
        idx, cached = self.holders.get(w.image, (np.empty(0, np.int64), np.empty(0, np.int64)))
        return idx, np.maximum(0, w.image_bytes - cached)

    def missing(self, w: Workload) -> np.ndarray:
        """Bytes ``w``'s image misses on every node."""
        out = np.full(len(self.nodes), float(w.image_bytes))
        idx, miss = self.warm(w)
        out[idx] = miss
        out[self.fetched.get(w.image, [])] = 0.0
        return out
