#!/usr/bin/env python3
"""Filling the disk cache: what a node pays per chunk it keeps, besides moving the bytes.

A chunk fetched from a peer or the store is written to the node's disk cache under its fill
lock (``DiskCache.fill_lock``, then ``put_stored``: a temporary file renamed into place).
This fills an empty cache with the chunks of a model-sized image (~290 chunks of ~256 KiB,
random bytes, as pushed) from 1 and 32 threads, each way in the same run, alternating:

- ``one lock file``: the fill lock is a byte range of one file (``rangelocks``), today's;
- ``a lock file per prefix``: the fill lock is ``flock`` on ``.locks/<id[:4]>``, created on
  first use, as before (the baseline).

Reports wall time and the process's CPU (user, system), medians over rounds, and the ratio
to the baseline. The cache is on the file system of ``--dir`` (default: /var/tmp).
Usage: python bench/cache_fill.py [--rounds N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from common import table

from blobstore.store.codec import encode_blob
from blobstore.store.digest import blob_id
from blobstore.store.diskcache import DiskCache

CHUNKS, SIZE = 290, 256 << 10


class PrefixFileLocks(DiskCache):
    """The disk cache as it was: ``flock`` on one file per id prefix, made on first use."""

    @contextlib.contextmanager
    def fill_lock(self, id: str):
        path = self.root / ".locks" / id[:4]
        path.parent.mkdir(exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def fill(cls, root: Path, blobs: list[tuple[str, bytes]], threads: int) -> dict:
    cache = cls(root, 10 << 30)
    work = iter(blobs)
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                item = next(work, None)
            if item is None:
                return
            with cache.fill_lock(item[0]):
                cache.put_stored(*item)

    (u0, s0), t0 = cpu(), time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    (u1, s1), t1 = cpu(), time.perf_counter()
    return {"wall": t1 - t0, "user": u1 - u0, "sys": s1 - s0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default="/var/tmp")
    args = ap.parse_args()
    blobs = []
    for _ in range(CHUNKS):
        data = os.urandom(SIZE)
        blobs.append((blob_id(data), encode_blob(data)))
    ways = {"one lock file": DiskCache, "a lock file per prefix": PrefixFileLocks}
    runs: dict[tuple[str, int], list[dict]] = {}
    base = Path(tempfile.mkdtemp(prefix="thaw-bench-fill-", dir=args.dir))
    try:
        for _ in range(args.rounds):
            for threads in (1, 32):
                for name, cls in ways.items():
                    root = Path(tempfile.mkdtemp(dir=base))
                    runs.setdefault((name, threads), []).append(
                        fill(cls, root, blobs, threads))
                    shutil.rmtree(root)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    rows = []
    for (name, threads), got in runs.items():
        med = {k: statistics.median(r[k] for r in got) for k in got[0]}
        old = runs[("a lock file per prefix", threads)]
        old_cpu = statistics.median(r["user"] + r["sys"] for r in old)
        rows.append([name, threads, f"{med['wall']:.3f} s", f"{med['user']:.3f} s",
                     f"{med['sys']:.3f} s",
                     f"{statistics.median(r['user'] + r['sys'] for r in got) / old_cpu:.2f}"])
    print(f"\nfilling an empty disk cache with {CHUNKS} chunks of {SIZE >> 10} KiB under "
          f"{args.dir}, median of {args.rounds} rounds\n")
    print(table(["fill lock", "threads", "wall", "user CPU", "system CPU",
                 "CPU vs a lock file per prefix"], rows))


if __name__ == "__main__":
    main()
