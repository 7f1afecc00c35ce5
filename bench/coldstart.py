#!/usr/bin/env python3
"""Cold start from a lazy mount against a full pull and a local tree, in the same run.

A "cold node": empty thaw caches and an empty page cache (dropped before each run), the
image (Debian 12 + python3 + numpy, 249 MiB of files) in SeaweedFS on loopback. Each
variant runs ``python3 -c 'import numpy'`` in a chroot:

- lazy: ``thaw mount --no-hints`` (timed), then the run; bytes and requests from
  ``thaw stats``;
- lazy + hints: the same, after one earlier start on another node recorded what the run
  reads (``--hints``): the mount prefetches it in that order as soon as it is up;
- full pull: ``thaw export`` of the whole image, then the run from the exported tree;
- local: the run from a tree already on local disk (cold page cache).

Then mount time for a ~30 MB and the ~250 MB image, and sequential read throughput of a
512 MiB file: cold (from S3), warm (thaw's disk cache, new mount), re-read (kernel cache),
against reading the same file from local disk through the page cache.
Medians over rounds; needs root, /dev/fuse. Usage: python bench/coldstart.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, debian_tar, extract, human, table

from tests.seaweed import SeaweedServer

WORKLOAD = ["/usr/bin/python3", "-c", "import numpy"]
THAW = [sys.executable, "-m", "thaw"]


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def thaw(*args: str, store: str) -> str:
    # From the repository root: run from bench/, bench/placement.py would shadow the package.
    proc = subprocess.run([*THAW, "--store", store, *args], capture_output=True, text=True,
                          cwd=REPO)
    if proc.returncode:
        raise SystemExit(f"thaw {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_in(root: Path) -> None:
    subprocess.run(["chroot", str(root), *WORKLOAD], check=True, capture_output=True)


def unmount(mnt: Path) -> None:
    subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)


def mount(store: str, work: Path, ref: str, *args: str) -> tuple[Path, float]:
    """Mount ``ref`` with empty caches; returns the mount point and the time it took."""
    mnt, cache = work / "mnt", work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    mnt.mkdir(exist_ok=True)
    drop_caches()
    return mnt, timed(lambda: thaw("mount", ref, str(mnt), "--background", "--cache-dir",
                                   str(cache), *args, store=store))


def unmount_and_wait(mnt: Path) -> None:
    """Unmount, and wait until the mount's process has exited (it saves hints as it goes)."""
    pids = subprocess.run(["pgrep", "-f", f"thaw.*mount.* {mnt}( |$)"], capture_output=True,
                          text=True).stdout.split()
    fds = [os.pidfd_open(int(p)) for p in pids]
    unmount(mnt)
    for fd in fds:
        select.select([fd], [], [], 60)
        os.close(fd)


def mount_time(store: str, work: Path, ref: str) -> float:
    mnt, t = mount(store, work, ref, "--no-hints")
    unmount(mnt)
    return t


def lazy(store: str, work: Path, hints: str | None = None) -> dict:
    mnt, t_mount = mount(store, work, "debian:12",
                         *(("--hints", hints) if hints else ("--no-hints",)))
    try:
        t_run = timed(lambda: run_in(mnt))
        stats = json.loads(thaw("stats", str(mnt), "--json", store=store))
    finally:
        unmount_and_wait(mnt)
    return {"time": t_mount + t_run, "mount": t_mount, "bytes": stats["fetched_stored_bytes"],
            "requests": stats["tiers"]["store"]["chunks"]}


def full_pull(store: str, work: Path, info: dict) -> dict:
    dest = work / "exported"
    shutil.rmtree(dest, ignore_errors=True)
    drop_caches()
    t_pull = timed(lambda: thaw("export", "debian:12", str(dest), store=store))
    t_run = timed(lambda: run_in(dest))
    return {"time": t_pull + t_run, "bytes": info["stored_bytes"],
            "requests": info["unique_chunks"]}


def local(tree: Path) -> dict:
    drop_caches()
    return {"time": timed(lambda: run_in(tree)), "bytes": 0, "requests": 0}


def read_file(path: Path) -> float:
    with open(path, "rb", buffering=0) as f:
        start = time.perf_counter()
        while f.read(1 << 20):
            pass
        return time.perf_counter() - start


def throughput(store: str, work: Path) -> list[list[str]]:
    big = work / "big" / "weights.bin"
    big.parent.mkdir(exist_ok=True)
    with open(big, "wb") as f:
        for _ in range(512):
            f.write(os.urandom(1 << 20))
    thaw("push", str(big), "big:1", store=store)
    size = big.stat().st_size
    mnt, cache = work / "mnt", work / "cache-big"
    shutil.rmtree(cache, ignore_errors=True)
    drop_caches()
    thaw("mount", "big:1", str(mnt), "--background", "--cache-dir", str(cache), store=store)
    try:
        cold = read_file(mnt / "weights.bin")
        reread = read_file(mnt / "weights.bin")
    finally:
        unmount(mnt)
    drop_caches()
    thaw("mount", "big:1", str(mnt), "--background", "--cache-dir", str(cache), store=store)
    try:
        warm = read_file(mnt / "weights.bin")
    finally:
        unmount(mnt)
    read_file(big)
    page = read_file(big)
    rows = []
    for name, t in (("thaw, cold (S3)", cold), ("thaw, warm (disk cache, new mount)", warm),
                    ("thaw, re-read (kernel cache)", reread), ("local file, page cache", page)):
        rows.append([name, f"{size / t / 2**20:.0f} MiB/s", f"{page / t:.2f}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="thaw-bench-coldstart-"))
    tree = extract(debian_tar(), work / "local")
    small = work / "small.tar"
    subprocess.run(["tar", "-cf", str(small), "-C", str(tree), "usr/lib/python3.11"],
                   check=True)
    with SeaweedServer(work / "seaweed") as s3:
        os.environ.update(s3.env())
        store = "s3://thaw/bench"
        thaw("push", str(debian_tar()), "debian:12", store=store)
        thaw("push", str(small), "small:1", store=store)
        info = json.loads(thaw("inspect", "debian:12", "--json", store=store))
        small_info = json.loads(thaw("inspect", "small:1", "--json", store=store))
        results: dict[str, list[dict]] = {"lazy": [], "lazy + hints": [], "full pull": [],
                                          "local": []}
        mounts: dict[str, list[float]] = {"small": [], "large": []}
        lazy(store, work, "numpy")  # an earlier start records what the workload reads
        for _ in range(args.rounds):
            results["lazy"].append(lazy(store, work))
            results["lazy + hints"].append(lazy(store, work, "numpy"))
            results["full pull"].append(full_pull(store, work, info))
            results["local"].append(local(tree))
            mounts["small"].append(mount_time(store, work, "small:1"))
            mounts["large"].append(results["lazy"][-1]["mount"])
        big_rows = throughput(store, work)
    med = {k: {f: statistics.median(r.get(f, 0) for r in v)
               for f in ("time", "mount", "bytes", "requests")} for k, v in results.items()}
    rows = [[k, f"{m['time']:.2f} s", f"{m['time'] - m['mount']:.2f} s" if m["mount"] else "",
             human(m["bytes"]), int(m["requests"]), f"{m['time'] / med['lazy']['time']:.2f}"]
            for k, m in med.items()]
    print(f"\n`python3 -c 'import numpy'` on a cold node, image {human(info['bytes'])} "
          f"({info['files']} files), SeaweedFS on loopback, median of {args.rounds} rounds\n")
    print(table(["variant", "time to done", "of it, after mounting", "fetched (stored)",
                 "requests", "time / lazy"], rows))
    print(f"\nlazy / full pull: {med['lazy']['time'] / med['full pull']['time']:.2f}   "
          f"lazy / local: {med['lazy']['time'] / med['local']['time']:.2f}   "
          f"lazy + hints / lazy: {med['lazy + hints']['time'] / med['lazy']['time']:.2f}\n")
    print(table(["image", "files", "bytes", "mount time (median)"], [
        ["small: usr/lib/python3.11", small_info["files"], human(small_info["bytes"]),
         f"{statistics.median(mounts['small']):.2f} s"],
        ["large: whole rootfs", info["files"], human(info["bytes"]),
         f"{statistics.median(mounts['large']):.2f} s"]]))
    print("\nsequential read of a 512 MiB incompressible file, 1 MiB reads\n")
    print(table(["read", "rate", "ratio to page cache"], big_rows))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
