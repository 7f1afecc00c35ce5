#!/usr/bin/env python3
"""Where fetch concurrency stops paying, against a store 20 ms away.

SeaweedFS behind ``tests.proxy.RemoteLikeProxy`` (20 ms before each request, 100 MB/s per
connection). An image of ~200 chunks (~25 MiB stored, random data: what a start fetches) is
pushed; then every chunk is fetched, verified and decompressed (``BlobStore.get``, what the
mount's fetch threads run) by N threads at once, through the lean S3 path the mount uses
and through boto3, in the same run. The ratio is against 4 threads, the old prefetch limit.
Usage: python bench/fetch_concurrency.py [--delay-ms 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import REPO, table

from blobstore.image.images import open_image
from blobstore.store.blobs import BlobStore
from blobstore.store.s3 import S3Store, _make_client
from tests.proxy import RemoteLikeProxy
from tests.seaweed import SeaweedServer

THREADS = (4, 8, 16, 32, 64, 128)


def make_image(root: Path) -> None:
    rng = __import__("random").Random(1)
    for i in range(400):
        d = root / f"d{i // 40}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:03}").write_bytes(rng.randbytes(64 << 10))


def fetch_all(blobs: BlobStore, chunks, threads: int) -> tuple[float, float]:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _: None, range(threads)))  # threads up before the clock starts
        cpu, wall = time.process_time(), time.perf_counter()
        list(pool.map(lambda c: blobs.get(c.id, max_size=c.size), chunks))
        return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--delay-ms", type=float, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="thaw-bench-fetch-"))
    make_image(work / "tree")
    with SeaweedServer(work / "seaweed") as s3:
        os.environ.update(s3.env())
        subprocess.run([sys.executable, "-m", "thaw", "--store", "s3://thaw/fc", "push",
                        str(work / "tree"), "fc:1", "--chunker", "fastcdc:128K"],
                       check=True, capture_output=True, cwd=REPO)
        host, port = s3.endpoint.removeprefix("http://").split(":")
        with RemoteLikeProxy((host, int(port)), delay=args.delay_ms / 1000) as proxy:
            os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
            lean = S3Store("thaw", "fc", timeout=20)
            boto = S3Store("thaw", "fc", client=_make_client(max(THREADS), 20))
            _, manifest = open_image(lean, "fc:1")
            chunks = list({c.id: c for c in manifest.chunks}.values())
            stored = sum(c.stored_size for c in chunks)
            rows, base = [], {}
            for name, store in (("lean (http.client)", lean), ("boto3", boto)):
                blobs = BlobStore(store)
                for n in THREADS:
                    runs = [fetch_all(blobs, chunks, n) for _ in range(args.rounds)]
                    wall = statistics.median(r[0] for r in runs)
                    cpu = statistics.median(r[1] for r in runs)
                    base.setdefault(name, wall)
                    rows.append([name, n, f"{wall:.2f} s", f"{stored / wall / 2**20:.0f} MiB/s",
                                 f"{cpu / len(chunks) * 1000:.2f} ms",
                                 f"{base[name] / wall:.1f}x"])
    print(f"\n{len(chunks)} chunks, {stored / 2**20:.1f} MiB stored, store "
          f"{args.delay_ms:g} ms away (100 MB/s per connection), median of {args.rounds}\n")
    print(table(["S3 path", "threads", "time", "rate", "client CPU per chunk",
                 "speed-up vs 4 threads"], rows))


if __name__ == "__main__":
    main()
