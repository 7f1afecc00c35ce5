"""How the mount scales with the shape of an image, against a local tree in the same run.

1. Mount time and resident memory of `thaw mount` at 10k, 100k and 1M entries (synthetic
   trees of empty files, 1,000 to a directory), format 2 against the same manifest in
   format 1 (goals at 1M: ready in under 1 s, under 200 MB before a read).
2. `ls -f` of one directory of 10k, 30k and 100k entries: a fresh mount, the same listing
   again, and the local tree (goals at 100k: first listing within 25x of local and growing
   linearly; the repeat within 3x, which needs the kernel's cached readdir).
3. 2,000 random 4 KiB reads of a 1 GiB file, cold (empty disk cache) and warm (disk cache
   filled, fresh mount): bytes fetched against the bytes of the chunks the reads touch
   (goal: at most 1.5x).
4. Peak resident memory of the mount while reading a 4 GiB file at `--memory 256M`
   (the README promises at most --memory + 100 MB).
5. `find` and `ls -lR` of a 100k-entry image (100 directories of 990 files and 10
   symlinks), the first time and again, against the local tree (goal: again within 3x);
   the same image with one xattr, where the kernel must ask the daemon every `getxattr`.

    python bench/scale.py [--quick] [--only mount|listing|random|memory|walk]
    # --quick: no 1M-entry image, a 1 GiB file in (4)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, drop_caches, human, table

from blobstore.image.images import load_manifest, open_image
from blobstore.image.manifest import DIR, FILE, encode_v1
from blobstore.image.refs import Refs, parse_ref
from blobstore.store.blobs import BlobStore
from blobstore.store.local import LocalStore
from indexer.push import push_tree
from indexer.tree import Node, SourceTree

THAW = [sys.executable, "-m", "thaw"]


def thaw(store: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*THAW, "--store", store, *args], cwd=REPO, check=True,
                          capture_output=True)


def mount(store: str, ref: str, mnt: Path, cache: Path, *extra: str) -> float:
    mnt.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    thaw(store, "mount", ref, str(mnt), "--background", "--cache-dir", str(cache),
         "--no-hints", *extra)
    return time.perf_counter() - started


def umount(mnt: Path) -> None:
    subprocess.run(["fusermount3", "-u", str(mnt)], check=True)


def daemon_pid(mnt: Path) -> int:
    out = subprocess.run(["pgrep", "-f", f"thaw.*mount.* {mnt}( |$)"], capture_output=True,
                         text=True).stdout.split()
    return int(out[0])


def status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith(field))


# -- 1: mount time and memory ---------------------------------------------------------------


def synthetic(n: int) -> SourceTree:
    nodes = {"": Node(DIR, 0o755)}
    for d in range(max(1, n // 1000)):
        nodes[f"d{d:04d}"] = Node(DIR, 0o755)
        for f in range(999):
            nodes[f"d{d:04d}/f{f:04d}"] = Node(FILE, 0o644)
    return SourceTree(nodes, "dir", 0)


def mount_scale(work: Path, sizes: list[int]) -> list[list[object]]:
    """Each size pushed (format 2), and the same manifest written again as format 1 (the
    baseline: what a push wrote before, decoded whole at mount) under its own tag."""
    store = LocalStore(work / "store")
    rows = []
    for n in sizes:
        result = push_tree(synthetic(n), store, parse_ref(f"scale:{n}"))
        manifest = load_manifest(BlobStore(store), result.manifest_id)
        Refs(store).set(parse_ref(f"scale-v1:{n}"), BlobStore(store).put(encode_v1(manifest))[0])
        took, rss = {}, {}
        for fmt, ref in (("v2", f"scale:{n}"), ("v1", f"scale-v1:{n}")):
            mnt = work / f"mnt-{fmt}-{n}"
            took[fmt] = mount(f"file://{store.root}", ref, mnt, work / "cache")
            rss[fmt] = status(daemon_pid(mnt), "VmRSS")
            first = timed("stat", str(mnt / "d0000" / "f0000"))
            if fmt == "v2":  # every directory decoded once: memory stays bounded
                walked = timed("find", str(mnt))
                after_find = status(daemon_pid(mnt), "VmRSS")
            umount(mnt)
        rows.append([f"{n:,}", f"{took['v2']:.2f}", f"{took['v1']:.2f}",
                     f"{took['v2'] / took['v1']:.2f}", human(rss["v2"]), human(rss["v1"]),
                     f"{rss['v2'] / rss['v1']:.2f}", f"{rss['v2'] / n:.0f} B",
                     f"{first * 1000:.0f}", f"{walked:.1f}", human(after_find)])
    return rows


# -- 2: listing one big directory -----------------------------------------------------------


def timed(*cmd: str) -> float:
    """Seconds ``cmd`` takes, its output discarded."""
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def ls_f(path: Path) -> float:
    return timed("ls", "-f", str(path))


def listing(work: Path, sizes: list[int]) -> list[list[object]]:
    store = f"file://{work / 'store'}"
    rows = []
    for n in sizes:
        local = work / f"dir-{n}"
        (local / "d").mkdir(parents=True)
        for i in range(n):
            os.close(os.open(local / "d" / f"file-{i:07d}", os.O_CREAT | os.O_WRONLY, 0o644))
        thaw(store, "push", str(local), f"dir:{n}")
        ls_f(local / "d")
        base = min(ls_f(local / "d") for _ in range(3))
        mnt = work / f"mnt-dir-{n}"
        mount(store, f"dir:{n}", mnt, work / "cache")
        first, again = ls_f(mnt / "d"), ls_f(mnt / "d")
        umount(mnt)
        rows.append([f"{n:,}", f"{base * 1000:.1f}", f"{first * 1000:.1f}",
                     f"{again * 1000:.1f}", f"{first / base:.1f}x", f"{again / base:.1f}x",
                     f"{first / n * 1e6:.1f}"])
    return rows


# -- 3: random reads ------------------------------------------------------------------------


def big_file(work: Path, name: str, size: int) -> Path:
    src = work / f"src-{name}"
    src.mkdir()
    with open(src / "big", "wb") as f:
        for _ in range(size // (64 << 20)):
            f.write(os.urandom(64 << 20))
    thaw(f"file://{work / 'store'}", "push", str(src), f"{name}:1")
    shutil.rmtree(src)
    return src


def random_reads(work: Path) -> list[list[object]]:
    store = f"file://{work / 'store'}"
    big_file(work, "random", 1 << 30)
    _, manifest = open_image(LocalStore(work / "store"), "random:1")
    entry = manifest.entry("big")
    rng = random.Random(1)
    offsets = [rng.randrange(0, (1 << 30) - 4096) // 4096 * 4096 for _ in range(2000)]
    touched_ids = {manifest.chunks[s.chunk].id: manifest.chunks[s.chunk].size
                   for off in offsets for s in _spans(entry, off, 4096)}
    touched = sum(touched_ids.values())
    rows, cache = [], work / "cache-random"
    for label in ("cold (empty disk cache)", "warm (disk cache, fresh mount)"):
        mnt = work / "mnt-random"
        mount(store, "random:1", mnt, cache)
        drop_caches()
        fd = os.open(mnt / "big", os.O_RDONLY)
        started = time.perf_counter()
        for off in offsets:
            os.pread(fd, 4096, off)
        took = time.perf_counter() - started
        os.close(fd)
        doc = json.loads(thaw(store, "stats", str(mnt), "--json").stdout)
        umount(mnt)
        fetched = doc["tiers"]["store"]["bytes"] + doc["tiers"]["disk"]["bytes"]
        rows.append([label, f"{len(offsets) / took:,.0f}", human(fetched), human(touched),
                     f"{fetched / touched:.2f}x"])
    return rows


def _spans(entry, off: int, size: int):
    from blobstore.image.manifest import FileSpans

    return FileSpans(entry.spans).lookup(off, size)


# -- 4: memory while reading a big file ------------------------------------------------------


def memory(work: Path, size: int) -> list[list[object]]:
    store = f"file://{work / 'store'}"
    big_file(work, "memory", size)
    mnt = work / "mnt-memory"
    mount(store, "memory:1", mnt, work / "cache-memory", "--memory", "256M")
    pid = daemon_pid(mnt)
    with open(mnt / "big", "rb") as f:
        while f.read(8 << 20):
            pass
    peak = status(pid, "VmHWM")
    umount(mnt)
    bound = 256 << 20
    return [[human(size), "256M", human(peak), human(peak - bound),
             f"{peak / bound:.2f}x"]]


# -- 5: walking a tree ----------------------------------------------------------------------


def _walks(root: Path) -> list[float]:
    """find first, find again, ls -lR first, ls -lR again (the best of three)."""
    find = [timed("find", str(root)) for _ in range(4)]
    ls = [timed("ls", "-lR", str(root)) for _ in range(4)]
    return [find[0], min(find[1:]), ls[0], min(ls[1:])]


def walk(work: Path) -> list[list[object]]:
    store = f"file://{work / 'store'}"
    local = work / "walk"
    for d in range(100):
        sub = local / f"d{d:03d}"
        sub.mkdir(parents=True)
        for f in range(990):
            (sub / f"f{f:04d}").write_bytes(b"x" * 100 if f % 10 == 0 else b"")
        for link in range(10):
            (sub / f"l{link:02d}").symlink_to(f"f{link:04d}")
    thaw(store, "push", str(local), "walk:plain")
    os.setxattr(local / "d000" / "f0000", "user.thaw-bench", b"1")
    thaw(store, "push", str(local), "walk:xattr")
    drop_caches()
    rows = [["local tree", *_walks(local)]]
    for tag, label in (("plain", "thaw mount"), ("xattr", "thaw mount, one xattr")):
        mnt = work / f"mnt-walk-{tag}"
        mount(store, f"walk:{tag}", mnt, work / f"cache-walk-{tag}")
        rows.append([label, *_walks(mnt)])
        umount(mnt)
    base = rows[0]
    return [[r[0], *(f"{t:.2f}" for t in r[1:]), f"{r[2] / base[2]:.1f}x",
             f"{r[4] / base[4]:.1f}x"] for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["mount", "listing", "random", "memory", "walk"])
    args = parser.parse_args()

    def run(part: str) -> bool:
        return args.only in (None, part)

    with tempfile.TemporaryDirectory(prefix="thaw-scale-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        sizes = [10_000, 100_000] + ([] if args.quick else [1_000_000])
        if run("mount"):
            print("\n## 1. thaw mount: time to ready and resident memory before any read\n")
            print("format 2 reads a directory when first used; format 1 (the baseline, "
                  "as pushed before) is decoded whole at mount\n")
            print(table(["entries", "mount (s)", "format 1 (s)", "ratio", "resident",
                         "format 1", "ratio", "per entry", "then stat a file (ms)",
                         "find (s)", "resident after find"],
                        mount_scale(work, sizes)))
        if run("listing"):
            print("\n## 2. ls -f of one directory (ms), against the local tree\n")
            print(table(["entries", "local", "thaw first", "thaw again", "first / local",
                         "again / local", "first, us/entry"],
                        listing(work, [10_000, 30_000, 100_000])))
        if run("random"):
            print("\n## 3. 2,000 random 4 KiB reads of a 1 GiB file\n")
            print(table(["run", "reads/s", "fetched", "chunks touched", "fetched / touched"],
                        random_reads(work)))
        if run("memory"):
            print("\n## 4. Resident memory reading a big file at --memory 256M\n")
            print(table(["file", "--memory", "peak resident", "over the bound",
                         "peak / bound"], memory(work, (1 if args.quick else 4) << 30)))
        if run("walk"):
            print("\n## 5. find and ls -lR of a 100k-entry image (s), against the local tree\n")
            print(table(["tree", "find", "find again", "ls -lR", "ls -lR again",
                         "find again / local", "ls -lR again / local"], walk(work)))


if __name__ == "__main__":
    main()
