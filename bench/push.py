#!/usr/bin/env python3
"""Push throughput against the single-core rate of the work itself, in the same run.

Baseline: one thread reads the Debian root file system's data stream (from the page cache),
cuts it (FastCDC), hashes (blake3) and compresses (zstd) every chunk, storing nothing. Then
`push` of the same tar into an empty ``file://`` store and into SeaweedFS S3 on loopback,
and a second push into each (every chunk already there). Rounds alternate and the median is
reported, since these machines are noisy. The figure is push rate / baseline rate.
Usage: python bench/push.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from common import debian_tar, human, table

from blobstore.image.refs import parse_ref
from blobstore.store.codec import encode_blob
from blobstore.store.digest import blob_id
from blobstore.store.local import LocalStore
from indexer.chunker import DEFAULT, cut
from indexer.push import push_tree
from indexer.sources import open_source
from indexer.stream import DataStream
from tests.seaweed import SeaweedServer


def baseline(tar: Path) -> tuple[float, int]:
    with open_source(str(tar)) as tree:
        files = list(tree.data_nodes())
        start = time.perf_counter()
        total = 0
        for view in cut(DataStream(files), DEFAULT):
            blob_id(view)
            encode_blob(view)
            total += len(view)
        return time.perf_counter() - start, total


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_push(tar: Path, objects) -> tuple[float, int, int]:
    with open_source(str(tar)) as tree:
        start = time.perf_counter()
        result = push_tree(tree, objects, parse_ref("bench:push"))
        return time.perf_counter() - start, result.bytes, result.uploaded_bytes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    tar = debian_tar()
    work = Path(tempfile.mkdtemp(prefix="thaw-bench-push-"))
    times: dict[str, list[float]] = {}
    server_cpu: dict[str, list[float]] = {}
    size = 0
    with SeaweedServer(work / "seaweed") as s3:
        os.environ.update(s3.env())
        from blobstore.store.s3 import S3Store

        for r in range(args.rounds):
            t, size = baseline(tar)
            times.setdefault("chunk + blake3 + zstd, 1 thread, no store", []).append(t)
            store = LocalStore(work / f"store-{r}")
            times.setdefault("push -> file:// (empty)", []).append(timed_push(tar, store)[0])
            times.setdefault("push -> file:// (again)", []).append(timed_push(tar, store)[0])
            bucket = S3Store("thaw", f"bench-{uuid.uuid4().hex[:8]}")
            for name in ("push -> S3 SeaweedFS (empty)", "push -> S3 SeaweedFS (again)"):
                before = cpu_seconds(s3.proc.pid)
                times.setdefault(name, []).append(timed_push(tar, bucket)[0])
                server_cpu.setdefault(name, []).append(cpu_seconds(s3.proc.pid) - before)
            shutil.rmtree(work / f"store-{r}")
    base = statistics.median(times["chunk + blake3 + zstd, 1 thread, no store"])
    rows = []
    for name, ts in times.items():
        t = statistics.median(ts)
        server = f"{statistics.median(server_cpu[name]):.2f} s" if name in server_cpu else ""
        rows.append([name, f"{t:.2f} s", f"{size / t / 2**20:.0f} MiB/s", f"{base / t:.2f}",
                     server])
    print(f"\n{human(size)} of file data, Debian 12 + python3 + numpy, chunker {DEFAULT}, "
          f"{os.cpu_count()} CPUs, median of {args.rounds} rounds\n")
    print(table(["what", "time", "rate", "ratio to baseline", "S3 server CPU (same cores)"],
                rows))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
