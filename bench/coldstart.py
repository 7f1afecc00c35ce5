#!/usr/bin/env python3
"""Cold start against a store that is near (0 ms) and far (20 ms), every way thaw offers.

A "cold node": empty thaw caches and an empty page cache (dropped before each run), the
image (Debian 12 + python3 + numpy, 249 MiB of files) in SeaweedFS. At 0 ms the clients talk
to SeaweedFS on loopback; at 20 ms through ``tests.proxy.RemoteLikeProxy``, which waits
20 ms before each request and paces each connection at 100 MB/s, as S3 behaves from a
region's EC2. Each variant runs ``python3 -c 'import numpy'`` in a chroot:

- full pull: ``thaw export`` of the whole image, then the run from the exported tree;
- thaw mount + run: ``thaw mount --no-hints`` (timed), then the run;
- daemon, first use: a running ``thaw daemon --no-hints``; the run looks the image up;
- daemon, first use, hints from another node: the same daemon with ``--hints numpy``,
  which an earlier start on another node (another cache) recorded;
- thaw mount + hints, run at once: ``thaw mount --hints numpy``, the run right after;
- local: the run from a tree already on local disk (cold page cache).

"store GETs" are the chunks the store served to the node; "reads that waited" are reads
of chunks that were not in memory when asked for (a demand fetch, or a wait on a prefetch
in flight): the GETs on the critical path. "prefetched unread / read": the bytes read-ahead
and hints fetched that nothing read, over the bytes read (``prefetched_unread_bytes``).
Then mount time and a daemon's first lookup
for a ~30 MB and the ~250 MB image, and (at the first delay) sequential read throughput
of a 512 MiB file. Medians over rounds; needs root, /dev/fuse.
Usage: python bench/coldstart.py [--rounds N] [--delays 0,20] [--no-throughput]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    debian_tar,
    drop_caches,
    extract,
    human,
    run_thaw,
    set_aside,
    table,
    unmount_and_wait,
)

from tests.proxy import RemoteLikeProxy
from tests.seaweed import SeaweedServer

WORKLOAD = ["/usr/bin/python3", "-c", "import numpy"]
THAW = [sys.executable, "-m", "thaw"]
STORE = "s3://thaw/bench"
ENV = dict(os.environ)



def thaw(*args: str) -> str:
    return run_thaw(STORE, ENV, *args)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_in(root: Path) -> None:
    subprocess.run(["chroot", str(root), *WORKLOAD], check=True, capture_output=True)


def fresh(path: Path) -> Path:
    return set_aside(path)


def counts(mnt: Path) -> dict:
    s = json.loads(thaw("stats", str(mnt), "--json"))
    unread = s["prefetched_unread_bytes"]
    return {"bytes": s["fetched_stored_bytes"], "requests": s["tiers"]["store"]["chunks"],
            "waited": s["demand_fetches"] + s["coalesced_waits"],
            "unread": unread / max(1, s["fetched_bytes"] - unread)}


def mounted_run(work: Path, hints: str | None) -> dict:
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    drop_caches()
    t_mount = timed(lambda: thaw("mount", "debian:12", str(mnt), "--background",
                                 "--cache-dir", str(fresh(work / "cache")),
                                 *(("--hints", hints) if hints else ("--no-hints",))))
    try:
        t_run = timed(lambda: run_in(mnt))
        return {"time": t_mount + t_run, "mount": t_mount, **counts(mnt)}
    finally:
        unmount_and_wait(mnt)


@contextlib.contextmanager
def daemon(work: Path, *args: str):
    mnt = work / "node"
    mnt.mkdir(exist_ok=True)
    thaw("daemon", "--mountpoint", str(mnt), "--background", "--node-id", "bench",
         "--gpus", "1xCPU:1G", "--cache-dir", str(fresh(work / "node-cache")), *args)
    try:
        yield mnt
    finally:
        unmount_and_wait(mnt)


def daemon_run(work: Path, hints: str | None) -> dict:
    with daemon(work, *(("--hints", hints) if hints else ("--no-hints",))) as mnt:
        drop_caches()
        t_run = timed(lambda: run_in(mnt / "refs" / "debian" / "12"))
        return {"time": t_run, **counts(mnt)}


def full_pull(work: Path, info: dict) -> dict:
    dest = fresh(work / "exported")
    drop_caches()
    t_pull = timed(lambda: thaw("export", "debian:12", str(dest)))
    t_run = timed(lambda: run_in(dest))
    return {"time": t_pull + t_run, "mount": t_pull, "bytes": info["stored_bytes"],
            "requests": info["unique_chunks"], "waited": info["unique_chunks"]}


def local(tree: Path) -> dict:
    drop_caches()
    return {"time": timed(lambda: run_in(tree)), "bytes": 0, "requests": 0, "waited": 0}


def mount_time(work: Path, ref: str) -> float:
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    drop_caches()
    t = timed(lambda: thaw("mount", ref, str(mnt), "--background", "--no-hints",
                           "--cache-dir", str(fresh(work / "cache"))))
    unmount_and_wait(mnt)
    return t


def first_lookup(work: Path, mid: str) -> float:
    with daemon(work, "--no-hints") as mnt:
        drop_caches()
        return timed(lambda: os.stat(mnt / mid))


def read_file(path: Path) -> float:
    with open(path, "rb", buffering=0) as f:
        start = time.perf_counter()
        while f.read(1 << 20):
            pass
        return time.perf_counter() - start


def throughput(work: Path) -> list[list[str]]:
    big = work / "big" / "weights.bin"
    big.parent.mkdir(exist_ok=True)
    with open(big, "wb") as f:
        for _ in range(512):
            f.write(os.urandom(1 << 20))
    thaw("push", str(big), "big:1")
    size = big.stat().st_size
    mnt, cache = work / "mnt", fresh(work / "cache-big")
    drop_caches()
    thaw("mount", "big:1", str(mnt), "--background", "--cache-dir", str(cache))
    try:
        cold = read_file(mnt / "weights.bin")
        reread = read_file(mnt / "weights.bin")
    finally:
        unmount_and_wait(mnt)
    drop_caches()
    thaw("mount", "big:1", str(mnt), "--background", "--cache-dir", str(cache))
    try:
        warm = read_file(mnt / "weights.bin")
    finally:
        unmount_and_wait(mnt)
    read_file(big)
    page = read_file(big)
    return [[name, f"{size / t / 2**20:.0f} MiB/s", f"{page / t:.2f}"]
            for name, t in (("thaw, cold (store)", cold),
                            ("thaw, warm (disk cache, new mount)", warm),
                            ("thaw, re-read (kernel cache)", reread),
                            ("local file, page cache", page))]


VARIANTS = ["full pull", "thaw mount + run", "daemon, first use",
            "daemon, first use, hints from another node", "thaw mount + hints, run at once",
            "local"]


def one_delay(work: Path, tree: Path, info: dict, mids: dict, rounds: int) -> dict:
    thaw("mount", "--help")  # warm the interpreter's files once; each run drops caches
    mounted_run(work, "numpy")  # an earlier start on another node records what it reads
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    mounts: dict[str, list[float]] = {"small": [], "large": [], "lookup small": [],
                                      "lookup large": []}
    for _ in range(rounds):
        results["full pull"].append(full_pull(work, info))
        results["thaw mount + run"].append(mounted_run(work, None))
        results["daemon, first use"].append(daemon_run(work, None))
        results["daemon, first use, hints from another node"].append(daemon_run(work, "numpy"))
        results["thaw mount + hints, run at once"].append(mounted_run(work, "numpy"))
        results["local"].append(local(tree))
        mounts["small"].append(mount_time(work, "small:1"))
        mounts["large"].append(results["thaw mount + run"][-1]["mount"])
        mounts["lookup small"].append(first_lookup(work, mids["small"]))
        mounts["lookup large"].append(first_lookup(work, mids["large"]))
    med = {k: {f: statistics.median(r.get(f, 0) for r in v)
               for f in ("time", "mount", "bytes", "requests", "waited", "unread")}
           for k, v in results.items()}
    return {"med": med, "mounts": {k: statistics.median(v) for k, v in mounts.items()}}


def report(delay_ms: int, res: dict, info: dict, small_info: dict, rounds: int) -> None:
    med, mounts = res["med"], res["mounts"]
    pull, loc = med["full pull"]["time"], med["local"]["time"]
    rows = [[k, f"{m['time']:.2f} s", f"{m['mount']:.2f} s" if m["mount"] else "",
             human(m["bytes"]), int(m["requests"]), int(m["waited"]),
             f"{m['unread']:.2f}" if k not in ("full pull", "local") else "",
             f"{m['time'] / pull:.2f}", f"{m['time'] / loc:.1f}"] for k, m in med.items()]
    where = "SeaweedFS on loopback" if not delay_ms else (
        f"SeaweedFS behind a proxy adding {delay_ms} ms per request, 100 MB/s per connection")
    print(f"\n### store at {delay_ms} ms\n\n`python3 -c 'import numpy'` on a cold node, image "
          f"{human(info['bytes'])} ({info['files']} files), {where}, median of {rounds} "
          "rounds\n")
    print(table(["variant", "time to done", "of it, mount or pull", "fetched (stored)",
                 "store GETs", "reads that waited", "prefetched unread / read",
                 "vs full pull", "vs local"], rows))
    print()
    print(table(["image", "files", "bytes", "`thaw mount` (median)",
                 "daemon's first lookup (median)"], [
        ["small: usr/lib/python3.11", small_info["files"], human(small_info["bytes"]),
         f"{mounts['small']:.2f} s", f"{mounts['lookup small'] * 1000:.0f} ms"],
        ["large: whole rootfs", info["files"], human(info["bytes"]),
         f"{mounts['large']:.2f} s", f"{mounts['lookup large'] * 1000:.0f} ms"]]))
    print(f"\nfirst lookup large / small: "
          f"{mounts['lookup large'] / mounts['lookup small']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--delays", default="0,20", help="store latencies to run, in ms")
    ap.add_argument("--no-throughput", dest="throughput", action="store_false")
    args = ap.parse_args()
    delays = [int(d) for d in args.delays.split(",")]
    work = Path(tempfile.mkdtemp(prefix="thaw-bench-coldstart-"))
    tree = extract(debian_tar(), work / "local")
    small = work / "small.tar"
    subprocess.run(["tar", "-cf", str(small), "-C", str(tree), "usr/lib/python3.11"],
                   check=True)
    with SeaweedServer(work / "seaweed") as s3:
        ENV.update(s3.env())
        thaw("push", str(debian_tar()), "debian:12")
        thaw("push", str(small), "small:1")
        info = json.loads(thaw("inspect", "debian:12", "--json"))
        small_info = json.loads(thaw("inspect", "small:1", "--json"))
        mids = {"large": info["manifest"], "small": small_info["manifest"]}
        host, port = s3.endpoint.removeprefix("http://").split(":")
        for i, delay_ms in enumerate(delays):
            with contextlib.ExitStack() as stack:
                if delay_ms:
                    proxy = stack.enter_context(RemoteLikeProxy(
                        (host, int(port)), delay=delay_ms / 1000))
                    ENV["AWS_ENDPOINT_URL"] = proxy.endpoint
                else:
                    ENV["AWS_ENDPOINT_URL"] = s3.endpoint
                res = one_delay(work, tree, info, mids, args.rounds)
                report(delay_ms, res, info, small_info, args.rounds)
                if args.throughput and i == 0:
                    print("\nsequential read of a 512 MiB incompressible file, 1 MiB reads\n")
                    print(table(["read", "rate", "ratio to page cache"], throughput(work)))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
