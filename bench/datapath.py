#!/usr/bin/env python3
"""The data path: a big file read and mapped through thaw, against the same file on local
disk, with FUSE passthrough (``--passthrough auto``) and without (``off``).

One file of random bytes (stored raw: incompressible) in a directory store. Rows, each the
median of ``--rounds`` interleaved rounds, the page cache dropped where a row says cold or
warm: sequential 1 MiB reads, and ``mmap`` touching every 4 KiB page in order.

- local: the file on local disk, cold, then from the page cache; mmap cold, then again;
- thaw cold: a new mount, an empty disk cache (every chunk from the store); its CPU counts
  everything the daemon does for that read, making the file for passthrough included;
- thaw warm: a new mount, chunks (and, with passthrough, the file) on the node and the
  file verified (opened until an open is passed through), the page cache dropped;
- thaw again: the same read again, from the kernel's cache;
- thaw mmap warm and again, as the local rows;
- the floor of the cold row: the same chunks from the same store through the same tiers
  (read, verify, write to a disk cache) in one thread of this process, no FUSE, no
  hand-offs (its CPU column is that thread's): what the cold path cannot go under here;
- safetensors: ``safetensors.torch.load_file`` of a synthetic model (bf16 tensors of
  random bytes, ``--safetensors-gib``, 0 to leave it out) then one byte of every page of
  every tensor read (on CPU it maps the file: this is its read), from local disk and from a
  warm mount, the page cache dropped before each.

Columns: rate, its ratio to the local row it is set against, and the daemon's CPU-seconds
per GiB (from ``/proc/PID/stat``; they hold still where rates move by 30% on shared cores).
Root and ``/dev/fuse``.
Usage: python bench/datapath.py [--size-mib 1024] [--safetensors-gib 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import mmap
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, cpu, drop_caches, run_thaw, set_aside, table, unmount_and_wait

GIB = 1 << 30
READ = 1 << 20
PAGE = 4096



def read_all(path: Path) -> float:
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(READ)
        while f.readinto(buf):
            pass
    return time.perf_counter() - started


def map_all(path: Path) -> float:
    started = time.perf_counter()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        total = 0
        for off in range(0, len(m), PAGE):
            total += m[off]
    return time.perf_counter() - started


def write_model(path: Path, size: int) -> None:
    """A safetensors file of bf16 tensors of 32 MiB of random bytes (as weights, they do
    not compress), ``size`` bytes of them."""
    import torch
    from safetensors.torch import save_file

    tensor = 32 << 20
    save_file({f"layers.{i}.weight": torch.frombuffer(bytearray(os.urandom(tensor)),
                                                      dtype=torch.bfloat16)
               for i in range(max(1, size // tensor))}, str(path))


def load_and_touch(path: Path) -> float:
    """``load_file``, then one byte of every page of every tensor."""
    import torch
    from safetensors.torch import load_file

    started = time.perf_counter()
    for t in load_file(str(path)).values():
        t.view(-1).view(torch.uint8)[::PAGE].max()
    return time.perf_counter() - started


class Bench:
    def __init__(self, root: Path, size: int, model_size: int) -> None:
        self.root, self.size, self.model_size = root, size, model_size
        self.store = f"file://{root / 'store'}"
        self.env = dict(os.environ)
        tree = root / "tree"
        tree.mkdir()
        self.local = tree / "data.bin"
        with open(self.local, "wb") as f:
            for _ in range(size // (64 << 20)):
                f.write(os.urandom(64 << 20))
        run_thaw(self.store, self.env, "push", str(tree), "data:1")
        if model_size:
            models = root / "models"
            models.mkdir()
            self.model = models / "model.safetensors"
            write_model(self.model, model_size)
            run_thaw(self.store, self.env, "push", str(models), "model:1")

    def mount(self, cache: Path, passthrough: str, ref: str = "data:1") -> tuple[Path, int]:
        mnt = set_aside(self.root / "mnt")
        mnt.mkdir()
        proc = subprocess.run([sys.executable, "-m", "thaw", "--store", self.store, "mount",
                               ref, str(mnt), "--cache-dir", str(cache), "--no-hints",
                               "--prefetch", "hints", "--passthrough", passthrough,
                               "--background"], capture_output=True, text=True, cwd=REPO,
                              env=self.env)
        if proc.returncode:
            raise SystemExit(proc.stderr)
        return mnt, int(re.search(r"pid (\d+)", proc.stderr).group(1))

    def stats(self, mnt: Path) -> dict:
        import json

        return json.loads(run_thaw(self.store, self.env, "stats", str(mnt), "--json"))

    def wait_for_file(self, cache: Path) -> None:
        """Until the daemon has made the file for passthrough (it does after a read)."""
        deadline = time.monotonic() + 300
        while not any(p.is_file() for p in (cache / ".files").rglob("*")):
            if time.monotonic() > deadline:
                raise SystemExit("the file was never made for passthrough")
            time.sleep(0.05)

    def wait_for_passthrough(self, mnt: Path, path: Path) -> None:
        """Open until an open is passed through: the file is verified (after a restart)."""
        deadline = time.monotonic() + 300
        while self.stats(mnt)["passthrough_opens"] == 0:
            with open(path, "rb"):
                pass
            if time.monotonic() > deadline:
                raise SystemExit("no open was passed through")
            time.sleep(0.05)

    def local_round(self) -> dict[str, tuple[float, float]]:
        out = {}
        drop_caches()
        out["local cold"] = (read_all(self.local), 0.0)
        out["local page cache"] = (read_all(self.local), 0.0)
        drop_caches()
        out["local mmap cold"] = (map_all(self.local), 0.0)
        out["local mmap again"] = (map_all(self.local), 0.0)
        if self.model_size:
            drop_caches()
            out["local safetensors"] = (load_and_touch(self.model), 0.0)
        return out

    def floor_round(self) -> tuple[float, float]:
        """(seconds, CPU-seconds) of the cold row's own work, in one thread."""
        from blobstore.image.images import open_image
        from blobstore.store.blobs import BlobStore
        from blobstore.store.diskcache import DiskCache
        from blobstore.store.tiers import node_tiers
        from blobstore.store.url import open_store

        objects = open_store(self.store)
        _, manifest = open_image(objects, "data:1")
        cache = set_aside(self.root / "cache")
        stack = node_tiers(BlobStore(objects), DiskCache(cache, 1 << 40)).stack
        drop_caches()
        started, cpu_before = time.perf_counter(), time.process_time()
        for c in manifest.chunks:
            stack.get(c.id, max_size=c.size)
        return time.perf_counter() - started, time.process_time() - cpu_before

    def model_round(self, passthrough: str) -> tuple[float, float]:
        """(seconds, daemon CPU-seconds) of the model's load from a warm mount."""
        cache = set_aside(self.root / "cache")
        mnt, _ = self.mount(cache, passthrough, "model:1")
        read_all(mnt / self.model.name)  # brings its chunks (and makes the file) to the node
        if passthrough == "auto":
            self.wait_for_file(cache)
        unmount_and_wait(mnt)
        mnt, pid = self.mount(cache, passthrough, "model:1")
        if passthrough == "auto":
            self.wait_for_passthrough(mnt, mnt / self.model.name)
        drop_caches()
        before = cpu(pid)
        seconds = load_and_touch(mnt / self.model.name)
        got = (seconds, cpu(pid) - before)
        unmount_and_wait(mnt)
        return got

    def thaw_round(self, passthrough: str) -> dict[str, tuple[float, float]]:
        """(seconds, daemon CPU-seconds) of each thaw row, with ``passthrough``."""
        out = {}
        cache = set_aside(self.root / "cache")
        mnt, pid = self.mount(cache, passthrough)
        path = mnt / "data.bin"
        drop_caches()
        before = cpu(pid)
        seconds = read_all(path)
        if passthrough == "auto":
            self.wait_for_file(cache)  # making the file counts in the cold read's CPU
        out["cold"] = (seconds, cpu(pid) - before)
        unmount_and_wait(mnt)
        mnt, pid = self.mount(cache, passthrough)
        path = mnt / "data.bin"
        if passthrough == "auto":
            self.wait_for_passthrough(mnt, path)
        for name, fn in (("warm", read_all), ("again", read_all), ("mmap warm", map_all),
                         ("mmap again", map_all)):
            if name in ("warm", "mmap warm"):
                drop_caches()
            before = cpu(pid)
            seconds = fn(path)
            out[name] = (seconds, cpu(pid) - before)
        unmount_and_wait(mnt)
        return out


AGAINST = {"cold": "local cold", "warm": "local cold", "again": "local page cache",
           "mmap warm": "local mmap cold", "mmap again": "local mmap again",
           "safetensors warm": "local safetensors", "floor: one thread": "local cold"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--safetensors-gib", type=float, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    size = args.size_mib << 20
    model_size = int(args.safetensors_gib * GIB)
    results: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="thaw-bench-datapath-",
                                     dir=os.environ.get("BENCH_DIR")) as tmp:
        bench = Bench(Path(tmp), size, model_size)
        for _ in range(args.rounds):  # interleaved: every variant once a round
            for name, got in bench.local_round().items():
                results.setdefault(name, []).append(got)
            results.setdefault("floor: one thread, no FUSE", []).append(bench.floor_round())
            for mode in ("auto", "off"):
                for name, got in bench.thaw_round(mode).items():
                    results.setdefault(f"thaw {name}, passthrough {mode}", []).append(got)
                if model_size:
                    results.setdefault(f"thaw safetensors warm, passthrough {mode}",
                                       []).append(bench.model_round(mode))

    def nbytes(name: str) -> int:
        return model_size if "safetensors" in name else size

    rate = {k: nbytes(k) / statistics.median(s for s, _ in v) for k, v in results.items()}
    rows = []
    for name, runs in results.items():
        cpu_s = statistics.median(c for _, c in runs) / (nbytes(name) / GIB)
        base = AGAINST.get(name.removeprefix("thaw ").split(", ")[0])
        ratio = f"{rate[name] / rate[base]:.2f} ({base})" if base else "1.00"
        rows.append([name, f"{rate[name] / (1 << 20):,.0f} MiB/s", ratio,
                     "" if name.startswith("local") else f"{cpu_s:.3f}"])
    model = (f"; safetensors: {args.safetensors_gib:g} GiB of bf16 tensors, load_file and a "
             "byte of every page" if model_size else "")
    print(f"\n{args.size_mib} MiB of random bytes (stored raw), a directory store, 1 MiB "
          f"reads and 4 KiB pages{model}, median of {args.rounds} interleaved rounds\n")
    print(table(["read", "rate", "vs local", "daemon CPU-s per GiB"], rows))


if __name__ == "__main__":
    main()
