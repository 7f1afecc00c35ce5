#!/usr/bin/env python3
"""Restore throughput of a ~2 GiB bf16 model against loading it the usual ways, same run.

A synthetic model (bf16 tensors of 32 MiB, random, so incompressible like real weights) is
saved as a .safetensors and a torch checkpoint on local disk, and snapshotted into a
``file://`` store and into SeaweedFS S3 on loopback. Measured, median of rounds:
``safetensors.torch.load_file`` (on CPU it mmaps: one byte of every page is read to make
it do its reading), ``safetensors.torch.load`` of the file's bytes (every byte copied into
fresh tensors, as a restore must) and ``torch.load``, all from the page cache; the raw rate of
reading the snapshot's chunks alone (fetch + decompress + verify, 8 threads, no copying)
from the node's disk cache and from S3; thaw's pipelined restore from the disk cache and
from S3 (empty cache); and a naive sequential restore (one chunk at a time). thaw verifies
every byte it restores; the loaders it is compared with do not.
Usage: python bench/restore.py [--device cpu|cuda:0] [--gib 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from common import table
from safetensors.torch import load as st_load
from safetensors.torch import load_file, save_file

from blobstore.image.images import open_image
from blobstore.store.blobs import BlobStore
from blobstore.store.diskcache import DiskCache
from blobstore.store.local import LocalStore
from blobstore.store.tiers import node_tiers
from restorer import restore, snapshot
from tests.seaweed import SeaweedServer


def make_model(gib: float) -> dict[str, torch.Tensor]:
    count = max(1, int(gib * 1024 / 32))
    gen = torch.Generator().manual_seed(0)
    return {f"layers.{i}.weight": torch.randn(4096, 4096, generator=gen).to(torch.bfloat16)
            for i in range(count)}


def raw_read(objects, ref: str, cache_dir: str | None) -> float:
    """Fetch, decompress and verify every chunk with 8 threads; nothing copied."""
    _, m = open_image(objects, ref)
    tiers = node_tiers(BlobStore(objects),
                       DiskCache(cache_dir, 50 << 30) if cache_dir else None).stack
    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda c: len(tiers.get(c.id, max_size=c.size)), m.chunks))
    return time.perf_counter() - start


def load_file_read(path: str, device: str) -> dict:
    """``load_file``, then one byte of every page read: on CPU it mmaps the file, and the
    bytes are only read when touched; this is its page-cache read, without any copy."""
    tensors = load_file(path, device=device)
    if device == "cpu":
        for t in tensors.values():
            t.view(-1).view(torch.uint8)[::4096].max()
    return tensors


def timed(fn) -> float:
    start = time.perf_counter()
    result = fn()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    del result
    return time.perf_counter() - start


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="thaw-bench-restore-"))
    model = make_model(args.gib)
    nbytes = sum(t.numel() * t.element_size() for t in model.values())
    save_file(model, str(work / "model.safetensors"))
    torch.save(model, work / "model.pt")
    local = LocalStore(work / "store")
    snapshot(model, "bench:1", store=local)
    del model
    cache = str(work / "cache")
    times: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        times.setdefault(name, []).append(seconds)

    with SeaweedServer(work / "seaweed") as s3:
        os.environ.update(s3.env())
        from blobstore.store.s3 import S3Store

        bucket = S3Store("thaw", f"bench-{uuid.uuid4().hex[:8]}")
        snapshot(load_file(str(work / "model.safetensors")), "bench:1", store=bucket)
        dev = args.device
        for _ in range(args.rounds):
            load_file(str(work / "model.safetensors"))  # the page cache holds it
            add(f"safetensors load_file (page cache) -> {dev}",
                timed(lambda: load_file_read(str(work / "model.safetensors"), dev)))
            if dev == "cpu":
                add("safetensors load(bytes) (page cache, every byte copied) -> cpu",
                    timed(lambda: st_load((work / "model.safetensors").read_bytes())))
            add(f"torch.load (page cache) -> {dev}",
                timed(lambda: torch.load(work / "model.pt", map_location=dev,
                                         weights_only=True)))
            shutil.rmtree(cache, ignore_errors=True)
            add("raw chunk read, S3 (8 threads, no copy)", raw_read(bucket, "bench:1", None))
            add(f"thaw restore, S3, no cache -> {dev}",
                timed(lambda: restore("bench:1", dev, store=bucket)))
            restore("bench:1", dev, store=bucket, cache_dir=cache)  # fill the disk cache
            add("raw chunk read, disk cache (8 threads, no copy)",
                raw_read(bucket, "bench:1", cache))
            add(f"thaw restore, disk cache -> {dev}",
                timed(lambda: restore("bench:1", dev, store=bucket, cache_dir=cache)))
            add(f"naive sequential restore, disk cache -> {dev}",
                timed(lambda: restore("bench:1", dev, store=bucket, cache_dir=cache, jobs=1,
                                      window=1)))
    med = {k: statistics.median(v) for k, v in times.items()}
    st = med[f"safetensors load_file (page cache) -> {args.device}"]
    rows = [[k, f"{v:.2f} s", f"{nbytes / v / 2**30:.2f} GiB/s", f"{st / v:.2f}"]
            for k, v in med.items()]
    print(f"\n{nbytes / 2**30:.2f} GiB of bf16 tensors, device {args.device}, "
          f"{os.cpu_count()} CPUs, median of {args.rounds} rounds\n")
    print(table(["what", "time", "rate", "speed vs safetensors"], rows))
    dev = args.device
    ratios = {
        "restore / raw chunk read (disk cache)":
            med["raw chunk read, disk cache (8 threads, no copy)"]
            / med[f"thaw restore, disk cache -> {dev}"],
        "restore / raw chunk read (S3)":
            med["raw chunk read, S3 (8 threads, no copy)"]
            / med[f"thaw restore, S3, no cache -> {dev}"],
        "restore (disk cache) speed / safetensors speed":
            st / med[f"thaw restore, disk cache -> {dev}"],
        "pipelined / naive sequential speed":
            med[f"naive sequential restore, disk cache -> {dev}"]
            / med[f"thaw restore, disk cache -> {dev}"],
    }
    print()
    print(table(["ratio", "value"], [[k, f"{v:.2f}"] for k, v in ratios.items()]))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    main()
