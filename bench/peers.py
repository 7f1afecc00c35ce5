#!/usr/bin/env python3
"""Cache peers: a second node's cold start after a first one, and three nodes at once.

S3 is SeaweedFS behind ``tests.proxy.RemoteLikeProxy`` (20 ms before each request, 100 MB/s
per connection); the three nodes are ``thaw serve`` on 127.0.0.2-4 (the local link) and a
``thaw mount`` each, with its own disk cache shared with its server and the same peer list.
Workloads: ``python3 -c 'import numpy'`` in a chroot of the Debian image, and reading a
model's safetensors (all-MiniLM-L6-v2). Each runs on node 1 with every cache empty, then
on node 2 (its cache empty too), in the same run: time, S3 GETs (all of the cluster's,
counted by the proxy: node 1's misses are read through by the chunks' owners), the bytes
this node read from S3 itself, and the ratios.
Twice: with ``--no-hints`` (the peers alone), and with the defaults, where node 1 (no hints
yet: they are cleared first) records the order it read and node 2 prefetches it from the
peers. Then all three nodes start the Debian workload at once, on empty caches, without
hints: S3 GETs against the distinct chunks they read. Page caches dropped before each
start; needs root.
Usage: python bench/peers.py [--rounds N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import REPO, debian_tar, drop_caches, human, model_file, run_thaw, table

from blobstore.url import open_store
from tests.proxy import RemoteLikeProxy
from tests.seaweed import SeaweedServer, free_ports

THAW = [sys.executable, "-m", "thaw"]
STORE = "s3://thaw/peers"
ENV = dict(os.environ)
HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


def thaw(*args: str) -> str:
    return run_thaw(STORE, ENV, *args)



class Cluster:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.token = work / "token"
        self.token.write_text("bench-token\n")
        self.ports = free_ports(len(HOSTS))
        self.urls = [f"http://{h}:{p}" for h, p in zip(HOSTS, self.ports, strict=True)]
        (work / "peers").write_text("\n".join(self.urls) + "\n")
        self.servers: list[subprocess.Popen] = []

    def cache(self, i: int) -> Path:
        return self.work / f"cache{i}"

    def start(self) -> None:
        for i, url in enumerate(self.urls):
            shutil.rmtree(self.cache(i), ignore_errors=True)
            p = subprocess.Popen([*THAW, "--store", STORE, "serve", "--listen",
                                  url.removeprefix("http://"), "--cache-dir", str(self.cache(i)),
                                  "--token-file", str(self.token)], cwd=REPO, env=ENV,
                                 stderr=subprocess.PIPE, text=True)
            assert "serving" in p.stderr.readline()
            self.servers.append(p)

    def stop(self) -> None:
        for p in self.servers:
            p.send_signal(signal.SIGTERM)
            p.wait(30)
        self.servers = []

    def mount(self, i: int, ref: str, hints: bool = False) -> Path:
        mnt = self.work / f"mnt{i}"
        mnt.mkdir(exist_ok=True)
        thaw("mount", ref, str(mnt), "--background", *([] if hints else ["--no-hints"]),
             "--cache-dir",
             str(self.cache(i)), "--peers", f"@{self.work / 'peers'}", "--self", self.urls[i],
             "--peer-token-file", str(self.token))
        return mnt


def unmount(mnt: Path) -> None:
    subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)


def stats(mnt: Path) -> dict:
    s = json.loads(thaw("stats", str(mnt), "--json"))
    peer = s["tiers"].get("peer", {"chunks": 0, "bytes": 0})
    return {"s3_bytes": s["tiers"]["store"]["stored_bytes"],
            "s3_chunks": s["tiers"]["store"]["chunks"], "peer_chunks": peer["chunks"],
            "disk_chunks": s["tiers"]["disk"]["chunks"]}


def import_numpy(mnt: Path) -> None:
    subprocess.run(["chroot", str(mnt), "/usr/bin/python3", "-c", "import numpy"],
                   check=True, capture_output=True)


def read_model(mnt: Path) -> None:
    with open(mnt / "model.safetensors", "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass


def start(cluster: Cluster, proxy: RemoteLikeProxy, i: int, ref: str, workload,
          hints: bool) -> dict:
    drop_caches()
    before = proxy.count("GET", "/blobs/")
    t0 = time.perf_counter()
    mnt = cluster.mount(i, ref, hints)
    try:
        workload(mnt)
        elapsed = time.perf_counter() - t0
        return {"time": elapsed, "gets": proxy.count("GET", "/blobs/") - before, **stats(mnt)}
    finally:
        unmount(mnt)


def sequential(cluster: Cluster, proxy: RemoteLikeProxy, ref: str, workload,
               hints: bool) -> list[dict]:
    objects = open_store(STORE)
    objects.delete_many(list(objects.list("hints/")))  # node 1 starts a cold cluster
    cluster.start()
    try:
        first = start(cluster, proxy, 0, ref, workload, hints)
        deadline = time.monotonic() + 30
        while hints and not list(objects.list("hints/")):  # saved as node 1's mount ends
            assert time.monotonic() < deadline, "node 1 saved no hints"
            time.sleep(0.05)
        return [first, start(cluster, proxy, 1, ref, workload, hints)]
    finally:
        cluster.stop()


def at_once(cluster: Cluster, proxy: RemoteLikeProxy) -> dict:
    cluster.start()
    try:
        drop_caches()
        before = proxy.count("GET", "/blobs/")
        mounts = [cluster.mount(i, "debian:12") for i in range(len(HOSTS))]
        threads = [threading.Thread(target=import_numpy, args=(m,)) for m in mounts]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        per_node = [stats(m) for m in mounts]
        for m in mounts:
            unmount(m)
        gets = proxy.count("GET", "/blobs/") - before
        distinct = max(s["s3_chunks"] + s["peer_chunks"] + s["disk_chunks"] for s in per_node)
        return {"time": elapsed, "gets": gets, "distinct": distinct}
    finally:
        cluster.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--delay-ms", type=float, default=20)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="thaw-bench-peers-"))
    model_dir = work / "model"
    model_dir.mkdir()
    shutil.copy(model_file(), model_dir / "model.safetensors")
    with SeaweedServer(work / "seaweed") as s3:
        ENV.update(s3.env())
        os.environ.update(s3.env())  # for this process's own store calls (hints)
        thaw("push", str(debian_tar()), "debian:12")
        thaw("push", str(model_dir), "model:1")
        host, port = s3.endpoint.removeprefix("http://").split(":")
        with RemoteLikeProxy((host, int(port)), delay=args.delay_ms / 1000) as proxy:
            ENV["AWS_ENDPOINT_URL"] = proxy.endpoint
            cluster = Cluster(work)
            rows, ratios = [], []
            for (name, ref, workload), hints in itertools.product(
                    (("import numpy (Debian)", "debian:12", import_numpy),
                     ("read the model", "model:1", read_model)), (False, True)):
                runs = [sequential(cluster, proxy, ref, workload, hints)
                        for _ in range(args.rounds)]
                name = f"{name}, {'hints' if hints else 'no hints'}"
                med = [{k: statistics.median(r[n][k] for r in runs) for k in runs[0][0]}
                       for n in (0, 1)]
                for n, m in enumerate(med):
                    rows.append([name, f"node {n + 1}" + (" (cold cluster)" if n == 0 else
                                                          " (after node 1)"),
                                 f"{m['time']:.2f} s", int(m["gets"]), human(m["s3_bytes"]),
                                 int(m["peer_chunks"])])
                ratios.append([name, f"{med[1]['time'] / med[0]['time']:.2f}",
                               f"{med[1]['gets'] / max(1, med[0]['gets']):.3f}",
                               f"{med[1]['s3_bytes'] / max(1, med[0]['s3_bytes']):.3f}"])
            together = [at_once(cluster, proxy) for _ in range(args.rounds)]
    print(f"\nS3 {args.delay_ms:g} ms away (100 MB/s per connection), peers on loopback, "
          f"median of {args.rounds} rounds\n")
    print(table(["workload", "node", "time (mount + run)", "S3 GETs (cluster)",
                 "S3 bytes (this node)", "chunks from peers"], rows))
    print()
    print(table(["workload", "node 2 time / node 1", "node 2 S3 GETs / node 1",
                 "node 2 S3 bytes / node 1"], ratios))
    t = {k: statistics.median(r[k] for r in together) for k in together[0]}
    print(f"\nthree nodes starting `import numpy` at once: {t['time']:.2f} s, "
          f"{int(t['gets'])} S3 GETs for {int(t['distinct'])} distinct chunks "
          f"({t['gets'] / t['distinct']:.2f}x)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
