#!/usr/bin/env python3
"""Time to first inference: a real model stack started on a cold node, every way thaw offers,
against the same start from local disk.

The image: Debian 12 (``mmdebstrap``: python3 3.11, as this venv's) with this venv's
site-packages in ``/usr/local/lib/python3.11/dist-packages`` (torch CPU, transformers,
sentence-transformers, the all-MiniLM-L6-v2 package, ...; ~2 GB of real files) and
``tests/data/embed.py`` as ``/opt/embed.py``, which loads the model and embeds one
sentence. Pushed once to SeaweedFS. The workload runs as a container runtime starts one:
in a private mount namespace, the host's ``/dev``, a fresh ``/proc``, a tmpfs on ``/tmp``,
``chroot``. A cold node: empty thaw caches and page cache before each run. At 0 ms the
node talks to SeaweedFS on loopback, at 20 ms through ``tests.proxy.RemoteLikeProxy`` (20 ms
before each request, 100 MB/s a connection). Rows:

- full pull: ``thaw export`` of the whole image, then the run;
- thaw mount + run: ``thaw mount --no-hints``, then the run;
- daemon, first use: a running ``thaw daemon --no-hints``; the run looks the image up;
- daemon, hints from another node: the same with ``--hints embed``, which a start on
  another node (another cache) recorded;
- scheduler's path: that daemon reports its node; ``thaw extender`` answers the scheduler
  (``/filter``, ``/prioritize`` for a pod annotated with the image), ``thaw warm`` is
  called at that moment, and the run starts 1 s later (the bind and the container's start,
  modelled); the time counts from the extender's answer;
- the same with the model restored from a snapshot: ``thaw snapshot`` of the loaded model
  (``tests.data.embed:load_model``) taken once; ``thaw warm`` of it with ``--hints
  restore`` (what a restore on another node read) beside the image's; the workload builds
  the model from its config and ``restorer.load_into`` fills it through the node's disk
  cache, bound into the container with thaw's source;
- second node with peers (with a store away only): three nodes on loopback (``thaw serve``
  each, as ``bench/peers.py`` runs them), node 1's daemon runs the workload on empty
  caches, then node 2's: node 2's row, without hints and with the ones node 1 recorded;
- local: the run from the tree on local disk.

Columns: time to the first embedding; its parts (pull or mount, import, model load, first
call; Python's own start is in "import"); what the node fetched and store GETs; what the
kernel asked the daemon (lookups, of them misses, opens, reads, getattrs); the time reads
waited on fetches (summed over reads) and its share of the run; the daemon's CPU-seconds.
Medians over rounds. Needs root, /dev/fuse, mmdebstrap.
Usage: python bench/inference.py [--rounds 3] [--delays 0,20]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import peers as peer_bench
from common import (
    REPO,
    cpu,
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
from tests.seaweed import SeaweedServer, free_ports

IMAGE, HINTS, SNAPSHOT = "infer:1", "embed", "infer-model:1"
STORE = "s3://thaw/bench"
ENV = dict(os.environ)
SITE = Path("usr/local/lib/python3.11/dist-packages")
RUN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
           "HF_HOME": "/tmp/hf", "XDG_CACHE_HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}


def thaw(*args: str) -> str:
    return run_thaw(STORE, ENV, *args)


def background(*args: str) -> int:
    """``thaw ARGS --background``; the pid of the process that serves."""
    proc = subprocess.run([sys.executable, "-m", "thaw", "--store", STORE, *args,
                           "--background"], capture_output=True, text=True, cwd=REPO, env=ENV)
    if proc.returncode:
        raise SystemExit(f"thaw {' '.join(args)} failed: {proc.stderr.strip()}")
    return int(re.search(r"pid (\d+)", proc.stderr).group(1))



def build_tree(dest: Path) -> Path:
    tree = extract(debian_tar(), dest)
    site = tree / SITE
    site.mkdir(parents=True, exist_ok=True)
    venv_site = Path(next(p for p in sys.path if p.endswith("site-packages")))
    for entry in venv_site.iterdir():
        if entry.name.startswith("__editable__"):
            continue  # this project, installed in place: the workload does not import it
        if entry.is_dir():
            shutil.copytree(entry, site / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, site / entry.name)
    shutil.copy2(REPO / "tests" / "data" / "embed.py", tree / "opt" / "embed.py")
    return tree


def run_in(root: Path, restore_from: Path | None = None) -> dict:
    """The workload in ``root`` as a container runtime starts it; its parts and total.
    ``restore_from``: the node's disk cache, which the workload's restore of the model's
    snapshot reads (bound in with thaw's source, as a container given the node's cache
    would have it)."""
    script = (f"mount --rbind /dev {root}/dev && mount -t proc proc {root}/proc && "
              f"mount -t tmpfs tmpfs {root}/tmp && ")
    command, env = "/usr/bin/python3 /opt/embed.py", RUN_ENV
    if restore_from:
        script += (f"mkdir {root}/tmp/thaw {root}/tmp/cache && "
                   f"mount --bind {REPO} {root}/tmp/thaw && "
                   f"mount --bind {restore_from} {root}/tmp/cache && ")
        command += (f" --restore {SNAPSHOT} --store {STORE} --cache-dir /tmp/cache "
                    f"--thaw /tmp/thaw")
        env = {**RUN_ENV, **{k: v for k, v in ENV.items() if k.startswith("AWS_")}}
    script += f"exec /usr/sbin/chroot {root} {command}"
    started = time.perf_counter()
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, env=env)
    total = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"the workload failed in {root}:\n{proc.stderr[-3000:]}")
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"run": total, "import": total - doc["load"] - doc["call"], "load": doc["load"],
            "call": doc["call"], "embedding": doc["embedding"]}


def counts(mnt: Path, pid: int, cpu_before: float) -> dict:
    s = json.loads(thaw("stats", str(mnt), "--json"))
    asked = s["fuse_requests"]
    return {"bytes": s["fetched_stored_bytes"], "gets": s["tiers"]["store"]["chunks"],
            "peer": s["tiers"].get("peer", {}).get("stored_bytes", 0),
            "lookup": asked.get("lookup", 0), "missing": asked.get("lookup_missing", 0),
            "open": asked.get("open", 0), "read": asked.get("read", 0),
            "getattr": asked.get("getattr", 0), "wait": s["read_wait_seconds"],
            "cpu": cpu(pid) - cpu_before}


def full_pull(work: Path, info: dict) -> dict:
    dest = set_aside(work / "exported")
    drop_caches()
    started = time.perf_counter()
    thaw("export", IMAGE, str(dest))
    pull = time.perf_counter() - started
    run = run_in(dest)
    return {**run, "time": pull + run["run"], "mount": pull, "bytes": info["stored_bytes"],
            "gets": info["unique_chunks"]}


def mounted_run(work: Path, hints: str | None, restore: bool = False) -> dict:
    """``restore``: the model from its snapshot, through the mount's cache."""
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    cache = set_aside(work / "cache")
    drop_caches()
    started = time.perf_counter()
    pid = background("mount", IMAGE, str(mnt), "--cache-dir", str(cache),
                     *(("--hints", hints) if hints else ("--no-hints",)))
    mount = time.perf_counter() - started
    before = cpu(pid)
    try:
        run = run_in(mnt, cache if restore else None)
        return {**run, "time": mount + run["run"], "mount": mount, **counts(mnt, pid, before)}
    finally:
        unmount_and_wait(mnt)


NODE_CACHE = "node-cache"


@contextlib.contextmanager
def daemon(work: Path, *args: str):
    mnt = work / "node"
    mnt.mkdir(exist_ok=True)
    pid = background("daemon", "--mountpoint", str(mnt), "--node-id", "node-1",
                     "--gpus", "1xCPU:1G", "--report-interval", "1",
                     "--cache-dir", str(set_aside(work / NODE_CACHE)), *args)
    try:
        yield mnt, pid
    finally:
        unmount_and_wait(mnt)


def daemon_run(work: Path, hints: str | None) -> dict:
    with daemon(work, *(("--hints", hints) if hints else ("--no-hints",))) as (mnt, pid):
        drop_caches()
        before = cpu(pid)
        run = run_in(mnt / "refs" / "infer" / "1")
        return {**run, "time": run["run"], **counts(mnt, pid, before)}


def ask(port: int, path: str, body: dict) -> object:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", path, body=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json"})
    return json.loads(conn.getresponse().read())


def scheduled_run(work: Path, port: int, restore: bool = False) -> dict:
    """The scheduler's path: the extender's answer, ``thaw warm`` then, the run 1 s on.
    ``restore``: the model from its snapshot, which ``thaw warm --hints restore`` queued
    into the node's disk cache too."""
    pod = {"metadata": {"name": "infer-0", "annotations": {"thaw.dev/image": IMAGE}},
           "spec": {"containers": [{"name": "server"}]}}
    with daemon(work, "--hints", HINTS) as (mnt, pid):
        drop_caches()
        before = cpu(pid)
        kept = ask(port, "/filter", {"Pod": pod, "NodeNames": ["node-1"]})["NodeNames"]
        scores = ask(port, "/prioritize", {"Pod": pod, "NodeNames": kept})
        placed = time.perf_counter()
        node = max(scores, key=lambda s: s["Score"])["Host"]
        assert node == "node-1", scores
        thaw("warm", IMAGE, "--mountpoint", str(mnt), "--hints", HINTS)
        if restore:
            thaw("warm", SNAPSHOT, "--mountpoint", str(mnt), "--hints", "restore")
        time.sleep(max(0.0, placed + 1.0 - time.perf_counter()))
        run = run_in(mnt / "refs" / "infer" / "1", work / NODE_CACHE if restore else None)
        done = time.perf_counter()
        return {**run, "time": done - placed, "mount": done - placed - run["run"],
                **counts(mnt, pid, before)}


def second_node(work: Path, hints: str | None) -> dict:
    """Node 1 of three with peers starts the workload on empty caches, then node 2; node
    2's row. ``hints``: a workload name new to the store, which node 1 records under."""
    cluster = peer_bench.Cluster(work)
    cluster.start()
    try:
        for i in (0, 1):
            args = cluster.node_args(i, hints=False)  # --no-hints first
            if hints:
                args = ["--hints", hints, *args[1:]]
            root = work / f"peer-node{i}"
            root.mkdir(exist_ok=True)
            pid = background("daemon", "--mountpoint", str(root), "--node-id", f"node{i}",
                             "--gpus", "1xCPU:1G", *args)
            try:
                drop_caches()
                before = cpu(pid)
                run = run_in(root / "refs" / "infer" / "1")
                got = {**run, "time": run["run"], **counts(root, pid, before)}
            finally:
                unmount_and_wait(root)  # node 1's hints saved
        return got
    finally:
        cluster.stop()


def local(tree: Path) -> dict:
    drop_caches()
    run = run_in(tree)
    return {**run, "time": run["run"]}


@contextlib.contextmanager
def extender(work: Path):
    port = free_ports(1)[0]
    log = work / "extender.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "thaw", "--store", STORE, "extender",
                                 "--listen", f"127.0.0.1:{port}", "--replan", "0"], cwd=REPO,
                                env=ENV, stdout=subprocess.DEVNULL, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while "scheduler extender" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"thaw extender did not start: {log.read_text()}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


VARIANTS = ["full pull", "thaw mount + run", "daemon, first use",
            "daemon, hints from another node", "scheduler's path (place, warm, run)",
            "scheduler's path, model restored from a snapshot",
            "second node, peers", "second node, peers and node 1's hints", "local"]
FIELDS = ["time", "mount", "import", "load", "call", "bytes", "peer", "gets", "lookup",
          "missing",
          "open", "read", "getattr", "wait", "cpu", "run"]


def one_delay(work: Path, tree: Path, info: dict, rounds: int, far: bool) -> dict:
    mounted_run(work, HINTS)  # a start on another node records what it reads
    mounted_run(work, None, restore=True)  # and what the restore reads
    variants = [v for v in VARIANTS if far or not v.startswith("second node")]
    results: dict[str, list[dict]] = {v: [] for v in variants}
    reference = local(tree)["embedding"]
    with extender(work) as port:
        for round_ in range(rounds):
            results["full pull"].append(full_pull(work, info))
            results["thaw mount + run"].append(mounted_run(work, None))
            results["daemon, first use"].append(daemon_run(work, None))
            results["daemon, hints from another node"].append(daemon_run(work, HINTS))
            results["scheduler's path (place, warm, run)"].append(scheduled_run(work, port))
            results["scheduler's path, model restored from a snapshot"].append(
                scheduled_run(work, port, restore=True))
            if far:
                results["second node, peers"].append(second_node(work, None))
                results["second node, peers and node 1's hints"].append(
                    second_node(work, f"peers-{os.getpid()}-{round_}"))
            results["local"].append(local(tree))
    for name, runs in results.items():
        for r in runs:
            worst = max(abs(a - b) for a, b in zip(r["embedding"], reference, strict=True))
            assert worst < 1e-5, f"{name}: the embedding differs from local disk's by {worst}"
    return {k: {f: statistics.median(r.get(f, 0) for r in v) for f in FIELDS}
            for k, v in results.items()}


def report(delay_ms: int, med: dict, info: dict, rounds: int) -> None:
    pull, loc = med["full pull"]["time"], med["local"]["time"]
    rows = []
    for k, m in med.items():
        thawed = k not in ("full pull", "local")
        rows.append([
            k, f"{m['time']:.1f} s", f"{m['time'] / loc:.2f}", f"{m['time'] / pull:.2f}",
            f"{m['mount']:.1f} / {m['import']:.1f} / {m['load']:.2f} / {m['call']:.2f}",
            (human(m["bytes"]) + (f" + {human(m['peer'])} from peers" if m["peer"] else "")
             ) if k != "local" else "", int(m["gets"]) if k != "local" else "",
            (f"{m['lookup']:.0f} ({m['missing']:.0f}) / {m['open']:.0f} / {m['read']:.0f} / "
             f"{m['getattr']:.0f}") if thawed else "",
            f"{m['wait']:.1f} s ({m['wait'] / m['run']:.0%})" if thawed else "",
            f"{m['cpu']:.1f} s" if thawed else ""])
    where = "SeaweedFS on loopback" if not delay_ms else (
        f"SeaweedFS behind a proxy adding {delay_ms} ms per request, 100 MB/s per connection")
    print(f"\n### store at {delay_ms} ms\n\nsentence-transformers all-MiniLM-L6-v2, one "
          f"sentence, on a cold node; image {human(info['bytes'])} ({info['files']} files), "
          f"{where}, median of {rounds} rounds\n")
    print(table(["way", "time to first embedding", "vs local", "vs full pull",
                 "pull or mount / import / load / call (s)", "fetched (stored)", "store GETs",
                 "kernel asked: lookups (missing) / opens / reads / getattrs",
                 "reads waited on fetches", "daemon CPU"], rows))
    restored = med.get("scheduler's path, model restored from a snapshot")
    if restored:
        mounted, loc_m = med["scheduler's path (place, warm, run)"], med["local"]
        print("\nThe model's load (construction included; and with the first call, which "
              "faults in the weights a safetensors load maps): from the snapshot "
              f"{restored['load']:.2f} s ({restored['load'] + restored['call']:.2f} s), "
              f"from the mount's safetensors {mounted['load']:.2f} s "
              f"({mounted['load'] + mounted['call']:.2f} s), from local disk "
              f"{loc_m['load']:.2f} s ({loc_m['load'] + loc_m['call']:.2f} s).")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--delays", default="0,20", help="store latencies to run, in ms")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="thaw-bench-inference-",
                                 dir=os.environ.get("BENCH_DIR")))
    try:
        tree = build_tree(work / "local")
        with SeaweedServer(work / "seaweed") as s3:
            ENV.update(s3.env())
            peer_bench.ENV, peer_bench.STORE = ENV, STORE  # its cluster, our store
            thaw("push", str(tree), IMAGE)
            # the model as loaded, its tensors as an image (this venv's package is the
            # image's: the same files)
            thaw("snapshot", "tests.data.embed:load_model", SNAPSHOT)
            info = json.loads(thaw("inspect", IMAGE, "--json"))
            host, port = s3.endpoint.removeprefix("http://").split(":")
            for delay_ms in (int(d) for d in args.delays.split(",")):
                with contextlib.ExitStack() as stack:
                    if delay_ms:
                        proxy = stack.enter_context(RemoteLikeProxy(
                            (host, int(port)), delay=delay_ms / 1000))
                        ENV["AWS_ENDPOINT_URL"] = proxy.endpoint
                    else:
                        ENV["AWS_ENDPOINT_URL"] = s3.endpoint
                    report(delay_ms, one_delay(work, tree, info, args.rounds, delay_ms > 0),
                           info, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
