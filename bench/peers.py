#!/usr/bin/env python3
"""Cache peers: a second node's cold start after a first one, and three nodes at once.

S3 is SeaweedFS behind ``tests.proxy.RemoteLikeProxy`` (20 ms before each request, 100 MB/s
per connection); the three nodes are ``thaw serve`` on 127.0.0.2-4 (the local link), each
with its own disk cache, shared with the node's mount, and the same peer list. Workloads:
``python3 -c 'import numpy'`` in a chroot of the Debian image, and reading a model's
safetensors (all-MiniLM-L6-v2). Each runs on node 1 with every cache empty, then on node 2
(its cache empty too), in the same run: time, S3 GETs (all of the cluster's, counted by
the proxy: node 1's misses are read through by the chunks' owners), the bytes this node
read from S3 itself, and the ratios. Three ways a node starts it: ``thaw mount
--no-hints`` then the workload (the peers alone); ``thaw mount`` then the workload (node 1,
with no hints yet, as they are cleared first, records the order it read, and node 2
prefetches it from the peers); and the workload on a running ``thaw daemon`` (a fleet node:
the daemon is up before the clock starts; the time includes its first lookup of the
image). Then all three nodes start the Debian workload at once, on empty caches, without
hints: S3 GETs against the distinct chunks they read. Page caches dropped before each
start; needs root.
Usage: python bench/peers.py [--rounds N] [--delay-ms MS] [--only numpy|model]
(``--only`` runs one workload's rows, without the three nodes at once: for A/B runs.)
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

from common import (
    REPO,
    debian_tar,
    drop_caches,
    human,
    model_file,
    run_thaw,
    set_aside,
    table,
    unmount_and_wait,
)

from blobstore.store.url import open_store
from tests.proxy import RemoteLikeProxy
from tests.seaweed import SeaweedServer, free_ports

THAW = [sys.executable, "-m", "thaw"]
STORE = "s3://thaw/peers"
ENV = dict(os.environ)
HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
MODES = {"mount": "thaw mount --no-hints", "mount hints": "thaw mount",
         "daemon hints": "running thaw daemon"}


def thaw(*args: str) -> str:
    return run_thaw(STORE, ENV, *args)



class Cluster:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.token = work / "token"
        self.token.write_text("bench-token\n")
        self.token.chmod(0o600)
        self.ports = free_ports(len(HOSTS))
        self.urls = [f"http://{h}:{p}" for h, p in zip(HOSTS, self.ports, strict=True)]
        (work / "peers").write_text("\n".join(self.urls) + "\n")
        self.servers: list[subprocess.Popen] = []

    def cache(self, i: int) -> Path:
        return self.work / f"cache{i}"

    def start(self) -> None:
        for i, url in enumerate(self.urls):
            set_aside(self.cache(i))
            p = subprocess.Popen([*THAW, "--store", STORE, "serve", "--listen",
                                  url.removeprefix("http://"), "--cache-dir", str(self.cache(i)),
                                  "--token-file", str(self.token)], cwd=REPO, env=ENV,
                                 stderr=subprocess.PIPE, text=True)
            assert "serving" in p.stderr.readline()
            # Drained, or a server that logs much would block on its full pipe and hang.
            threading.Thread(target=p.stderr.read, daemon=True).start()
            self.servers.append(p)

    def stop(self) -> None:
        for p in self.servers:
            p.send_signal(signal.SIGTERM)
            p.wait(30)
        self.servers = []

    def node_args(self, i: int, hints: bool) -> list[str]:
        return [*([] if hints else ["--no-hints"]), "--cache-dir", str(self.cache(i)),
                "--peers", f"@{self.work / 'peers'}", "--self", self.urls[i],
                "--peer-token-file", str(self.token)]

    def daemon(self, i: int, hints: bool) -> Path:
        """A running node: ``thaw daemon`` (ready before the clock starts)."""
        root = self.work / f"node{i}"
        root.mkdir(exist_ok=True)
        thaw("daemon", "--mountpoint", str(root), "--background", "--node-id", f"node{i}",
             "--gpus", "1xCPU:1G", *self.node_args(i, hints))
        return root

    def mount(self, i: int, ref: str, hints: bool = False) -> Path:
        mnt = self.work / f"mnt{i}"
        mnt.mkdir(exist_ok=True)
        thaw("mount", ref, str(mnt), "--background", *self.node_args(i, hints))
        return mnt


def unmount(mnt: Path) -> None:
    unmount_and_wait(mnt)  # and its hints saved


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
          mode: str) -> dict:
    """One cold start on node ``i``: ``thaw mount`` then the workload (``mount``, ``mount
    hints``), or the workload on a running ``thaw daemon`` (``daemon hints``)."""
    hints = "hints" in mode
    root = cluster.daemon(i, hints) if mode.startswith("daemon") else None
    drop_caches()
    before = proxy.count("GET", "/blobs/")
    t0 = time.perf_counter()
    mnt = cluster.mount(i, ref, hints) if root is None else root
    try:
        workload(mnt if root is None else root / "refs" / ref.replace(":", "/"))
        elapsed = time.perf_counter() - t0
        return {"time": elapsed, "gets": proxy.count("GET", "/blobs/") - before, **stats(mnt)}
    finally:
        unmount(mnt)


def sequential(cluster: Cluster, proxy: RemoteLikeProxy, ref: str, workload,
               mode: str) -> list[dict]:
    objects = open_store(STORE)
    objects.delete_many(list(objects.list("hints/")))  # node 1 starts a cold cluster
    cluster.start()
    try:
        first = start(cluster, proxy, 0, ref, workload, mode)
        if "hints" in mode:  # saved as node 1's mount ended
            assert list(objects.list("hints/")), "node 1 saved no hints"
        return [first, start(cluster, proxy, 1, ref, workload, mode)]
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
    ap.add_argument("--only", choices=["numpy", "model"],
                    help="one workload's rows, and not the three nodes at once")
    args = ap.parse_args()
    workloads = [w for w in (("import numpy (Debian)", "debian:12", import_numpy),
                             ("read the model", "model:1", read_model))
                 if args.only is None or args.only in w[0]]
    work = Path(tempfile.mkdtemp(prefix="thaw-bench-peers-"))
    model_dir = work / "model"
    model_dir.mkdir()
    shutil.copy(model_file(), model_dir / "model.safetensors")
    with SeaweedServer(work / "seaweed") as s3:
        ENV.update(s3.env())
        os.environ.update(s3.env())  # for this process's own store calls (hints)
        if args.only != "model":
            thaw("push", str(debian_tar()), "debian:12")
        thaw("push", str(model_dir), "model:1")
        host, port = s3.endpoint.removeprefix("http://").split(":")
        with RemoteLikeProxy((host, int(port)), delay=args.delay_ms / 1000) as proxy:
            ENV["AWS_ENDPOINT_URL"] = proxy.endpoint
            cluster = Cluster(work)
            rows, ratios = [], []
            for (name, ref, workload), mode in itertools.product(workloads, MODES):
                runs = [sequential(cluster, proxy, ref, workload, mode)
                        for _ in range(args.rounds)]
                name = f"{name}: {MODES[mode]}"
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
            together = [at_once(cluster, proxy) for _ in range(args.rounds)
                        if args.only is None]
    print(f"\nS3 {args.delay_ms:g} ms away (100 MB/s per connection), peers on loopback, "
          f"median of {args.rounds} rounds\n")
    print(table(["workload", "node", "time", "S3 GETs (cluster)",
                 "S3 bytes (this node)", "chunks from peers"], rows))
    print()
    print(table(["workload", "node 2 time / node 1", "node 2 S3 GETs / node 1",
                 "node 2 S3 bytes / node 1"], ratios))
    if not together:
        return shutil.rmtree(work, ignore_errors=True)
    t = {k: statistics.median(r[k] for r in together) for k in together[0]}
    print(f"\nthree nodes starting `import numpy` at once: {t['time']:.2f} s, "
          f"{int(t['gets'])} S3 GETs for {int(t['distinct'])} distinct chunks "
          f"({t['gets'] / t['distinct']:.2f}x)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
