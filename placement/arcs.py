"""Which nodes each class of replicas may be sent to, as numpy arrays (the MILP's arcs).

Per image, not per class: every class (workload) of an image is offered the same short
list of that image's cheapest warm nodes (Quincy's pruning), the lists sized to a budget of
arcs that the LP solves in well under a second. The rest of the cluster is one *rest* arc
per class and GPU model, priced at what packing the class onto the cheapest of those nodes
costs per replica; or, for ``lower_bound``, at a bound: the fewest bytes missing there,
shared among as many GPUs of the image's replicas as one node has free (a replica of g
GPUs pays g of those shares: pricing per replica let an 8-GPU replica share a fetch with
seven others, which no node can hold, and left the bound a fifth low at 1,000 nodes).
Because the lists are per image, a rest node is a rest node for every class of its image,
so no fetch is charged twice and the bound's relaxation stays a relaxation: its optimum
bounds the bytes of any placement. With ``every`` (small, exact models) every node is an
arc and there is no rest. Pure; thread-safe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model import Workload
from .prices import Prices


@dataclass
class Arcs:
    cls: np.ndarray  # warm arcs: class, node, most replicas, missing bytes, image code
    node: np.ndarray
    most: np.ndarray
    miss: np.ndarray
    image: np.ndarray
    rest_cls: np.ndarray  # rest arcs: class, GPU model code, bytes per replica (a bound)
    rest_model: np.ndarray
    rest_price: np.ndarray


def fits_matrix(workloads: list[Workload], prices: Prices) -> np.ndarray:
    """classes x nodes: can one replica of the class run on the node now."""
    gpus = np.array([w.gpus for w in workloads], np.int64)[:, None]
    mem = np.array([w.gpu_memory for w in workloads], np.int64)[:, None]
    model = np.array([-1 if w.gpu_model is None else prices.model_code.get(w.gpu_model, -2)
                      for w in workloads], np.int64)[:, None]
    return ((prices.free[None, :] >= gpus) & (prices.mem[None, :] >= mem)
            & ((model == -1) | (prices.model[None, :] == model)))


def build_arcs(workloads: list[Workload], prices: Prices, fits: np.ndarray, *,
               budget: int = 50_000, fewest: int = 8, bound: bool = False,
               every: bool = False) -> Arcs:
    """Warm arcs to each image's cheapest nodes, about ``budget`` in all: an even share per
    class, pooled per image (at least ``fewest`` nodes), and a rest arc per class and GPU
    model, priced at what the class would cost there (or a lower bound, with ``bound``).
    With ``every`` (an exact program), an arc from every class to every node it fits, warm
    or cold, and so no rest arcs: the program is the placement problem itself."""
    by_image: dict[str, list[int]] = {}
    for c, w in enumerate(workloads):
        by_image.setdefault(w.image, []).append(c)
    share = max(fewest, budget // max(1, len(workloads)))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in Arcs.__dataclass_fields__}
    groups = _ByModel(prices)
    for code, classes in enumerate(by_image.values()):
        w0 = workloads[classes[0]]
        miss = prices.missing(w0)
        usable = fits[classes].any(axis=0)
        warm = np.flatnonzero(usable if every else usable & (miss < w0.image_bytes))
        warm = warm[np.argsort(miss[warm], kind="stable")]
        # Every class of the image is offered every node of its list, so an image of
        # many workloads gets a shorter one.
        cand = warm if every else warm[:max(fewest, share // len(classes))]
        chosen = np.zeros(len(miss), bool)
        chosen[cand] = True
        together = sum(workloads[c].replicas * workloads[c].gpus for c in classes)  # GPUs
        cheapest = _Cheapest(miss, groups)
        for c in classes:
            w = workloads[c]
            nodes = cand[fits[c, cand]]
            parts["cls"].append(np.full(len(nodes), c))
            parts["node"].append(nodes)
            parts["most"].append(np.minimum(w.replicas, prices.free[nodes] // w.gpus))
            parts["miss"].append(miss[nodes])
            parts["image"].append(np.full(len(nodes), code))
            rest = fits[c] & ~chosen
            count, most_free, least = groups.summary(rest, cheapest.miss_grouped)
            for m in np.flatnonzero(count).tolist():
                if bound:
                    # One fetch serves at most a node's free GPUs' worth of the image's
                    # replicas: each pays at least its GPUs' share of the cheapest fetch.
                    price = w.gpus * least[m] / max(1, min(together, int(most_free[m])))
                else:
                    per_node = max(1, min(w.replicas, int(most_free[m]) // w.gpus))
                    k = -(-w.replicas // per_node)  # nodes the replicas fill, packed
                    sum_k = least[m] if k == 1 else cheapest.sum(rest, m, k)
                    price = sum_k / (min(k, int(count[m])) * per_node)
                parts["rest_cls"].append(np.array([c]))
                parts["rest_model"].append(np.array([m]))
                parts["rest_price"].append(np.array([price]))
    empty = {k: np.empty(0) for k in parts}
    arrays = {k: (np.concatenate(v) if v else empty[k]) for k, v in parts.items()}
    for k in ("cls", "node", "most", "image", "rest_cls", "rest_model"):
        arrays[k] = arrays[k].astype(np.int64)
    return Arcs(**arrays)


class _ByModel:
    """The nodes grouped by GPU model, so what rest arcs need per class and model (how
    many nodes, the most free GPUs, the fewest missing bytes) is one reduction per class
    over all models, not a pass over the cluster per model."""

    def __init__(self, prices: Prices) -> None:
        self.model = prices.model
        self.order = np.argsort(prices.model, kind="stable")
        self.starts = np.searchsorted(prices.model[self.order],
                                      np.arange(len(prices.model_code)))
        self.free = prices.free[self.order]

    def summary(self, on: np.ndarray, miss: np.ndarray):
        """Per model: nodes ``on``, their most free GPUs, their fewest missing bytes
        (``miss`` in this grouping's order)."""
        if not len(self.starts):
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        on = on[self.order]
        return (np.add.reduceat(on, self.starts), np.maximum.reduceat(
                    np.where(on, self.free, 0), self.starts),
                np.minimum.reduceat(np.where(on, miss, np.inf), self.starts))


class _Cheapest:
    """The ``k`` smallest missing bytes among some of one image's nodes of one model: the
    nodes are sorted once per image, and only when an answer needs more than the
    smallest."""

    def __init__(self, miss: np.ndarray, groups: _ByModel) -> None:
        self.miss, self.groups = miss, groups
        self.miss_grouped = miss[groups.order]
        self.by_miss: np.ndarray | None = None

    def sum(self, on: np.ndarray, model: int, k: int) -> float:
        if self.by_miss is None:
            self.by_miss = np.argsort(self.miss, kind="stable")
        on = on & (self.groups.model == model)
        return float(self.miss[self.by_miss[on[self.by_miss]][:k]].sum())
