"""Realistic clusters for tests and benchmarks: shared layers, Zipf popularity, LRU caches.

Images are a base OS layer (a few, 0.3-2 GB), a framework layer (CUDA and a runtime, 2-10
GB, shared by many images) and the model's own weights, 1-40 GB in all. Workloads pick
images by a Zipf law. Nodes have 8 GPUs of one model, some already busy, and a disk cache
that holds what its last workloads pulled, evicted least recently used, so it holds whole
layers of popular images and the tail of a half-evicted one: partial images. Under "normal"
load the pending workloads ask for about half the free GPUs, under "tight" for more than
all of them. Deterministic for a seed; pure.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .model import Node, Workload

GB = 1 << 30
GPU_MODELS = (("H100", 80 * GB, 0.5), ("A100", 40 * GB, 0.3), ("L4", 24 * GB, 0.2))
# idle-node share, busy fraction of the others, demand / free GPUs
LOADS = {"normal": (0.3, (0.2, 0.7), 0.5), "tight": (0.1, (0.5, 0.9), 1.2)}


def _images(rng: np.random.Generator, count: int) -> list[list[tuple[str, int]]]:
    bases = [(f"base{i}", int(rng.uniform(0.3, 2) * GB)) for i in range(4)]
    frameworks = [(f"fw{i}", int(rng.uniform(2, 10) * GB)) for i in range(max(3, count // 8))]
    images = []
    for i in range(count):
        base = bases[rng.integers(len(bases))]
        fw = frameworks[min(len(frameworks) - 1, int(rng.zipf(1.5)) - 1)]
        room = 40 * GB - base[1] - fw[1]
        weights = int(min(room, rng.lognormal(np.log(6 * GB), 1.0)))
        images.append([base, fw, (f"model{i}", max(weights, GB // 2))])
    return images


def _cache(rng: np.random.Generator, images, popularity, limit: int) -> dict[str, int]:
    """Layers left in an LRU cache of ``limit`` bytes after a run of recent workloads."""
    lru: OrderedDict[str, int] = OrderedDict()
    used = 0
    for _ in range(int(rng.integers(3, 20))):
        for name, size in images[rng.choice(len(images), p=popularity)]:
            if name in lru:
                lru.move_to_end(name)
                continue
            lru[name] = size
            used += size
        while used > limit:
            name, size = lru.popitem(last=False)
            keep = int(size * rng.uniform(0, 0.6)) if used - size < limit else 0
            used -= size - keep
            if keep:  # the tail of a half-evicted layer stays
                lru[name] = keep
                lru.move_to_end(name, last=False)
                break
    return dict(lru)


def make_cluster(nodes: int, workloads: int, *, load: str = "normal",
                 seed: int = 0) -> tuple[list[Workload], list[Node]]:
    rng = np.random.default_rng(seed)
    images = _images(rng, max(20, workloads))
    ranks = np.arange(1, len(images) + 1, dtype=np.float64)
    popularity = ranks ** -1.1 / (ranks ** -1.1).sum()
    idle, (busy_lo, busy_hi), demand = LOADS[load]
    models = [m for m, _, _ in GPU_MODELS]
    shares = np.array([s for _, _, s in GPU_MODELS])
    with_layer: dict[str, list[int]] = {}
    for j, img in enumerate(images):
        for name, _ in img:
            with_layer.setdefault(name, []).append(j)
    node_list = []
    for i in range(nodes):
        m = int(rng.choice(len(models), p=shares))
        busy = 0 if rng.random() < idle else int(round(8 * rng.uniform(busy_lo, busy_hi)))
        layers = _cache(rng, images, popularity, int(rng.uniform(100, 400) * GB))
        touched = {j for name in layers for j in with_layer[name]}
        cached = {f"img{j}": sum(layers.get(n, 0) for n, _ in images[j]) for j in touched}
        node_list.append(Node(f"node{i:05d}", models[m], 8 - busy, GPU_MODELS[m][1],
                              {k: v for k, v in cached.items() if v}, sum(layers.values()),
                              600 * GB))
    free_gpus = sum(n.gpus_free for n in node_list)
    gpu_sizes = np.array([1, 2, 4, 8])
    mean_gpus = float((gpu_sizes * np.array([0.5, 0.25, 0.15, 0.1])).sum()) * 1.6
    scale = demand * free_gpus / max(1, workloads) / mean_gpus
    work = []
    for i in range(workloads):
        j = int(rng.choice(len(images), p=popularity))
        gpus = int(rng.choice(gpu_sizes, p=[0.5, 0.25, 0.15, 0.1]))
        replicas = max(1, int(round(rng.geometric(0.6) * scale)))
        size = sum(s for _, s in images[j])
        model = models[int(rng.choice(len(models), p=shares))] if rng.random() < 0.3 else None
        mem = int(min(20 * GB, images[j][2][1] / gpus * 1.2))
        work.append(Workload(f"w{i:05d}", f"img{j}", size, replicas, gpus, mem, model,
                             float(rng.uniform(0, 600))))
    return work, node_list
