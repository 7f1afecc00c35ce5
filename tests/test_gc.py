"""`thaw rm`, `thaw tag` and `thaw gc`: two phases on a fake clock, leases, the race with a
push, failing closed, one collector at a time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid

import pytest

from blobstore.image.images import open_image
from blobstore.image.refs import parse_ref
from blobstore.lifecycle.gcrecord import CONDEMNED, LOCK, LOCK_STALE, GcAborted
from blobstore.lifecycle.leases import Lease
from blobstore.ops.gc import GcLocked, collect
from blobstore.store.blobs import BlobStore
from blobstore.store.local import LocalStore
from indexer.chunker import ChunkerParams
from indexer.push import push_tree
from indexer.sources import open_source

HOUR = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = time.time() + 60  # a minute after everything written so far

    def __call__(self) -> float:
        return self.now


def push(objects, tree, ref: str) -> str:
    with open_source(str(tree)) as src:
        return push_tree(src, objects, parse_ref(ref),
                         params=ChunkerParams("fastcdc", 64 << 10)).manifest_id


def readable(objects, ref: str) -> bool:
    """Every blob of the image is present and verifies."""
    mid, manifest = open_image(objects, ref)
    blobs = BlobStore(objects)
    return all(blobs.get(c.id, max_size=c.size) is not None for c in manifest.chunks)


def blob_ids(objects, ref: str) -> set[str]:
    _, manifest = open_image(objects, ref)
    return {c.id for c in manifest.chunks}


@pytest.fixture
def two_images(tmp_path, rich_tree):
    """a:1 and b:1 share most chunks; a:1 has a file of its own."""
    objects = LocalStore(tmp_path / "store")
    other = tmp_path / "other"
    subprocess.run(["cp", "-a", str(rich_tree), str(other)], check=True)
    (other / "own.bin").write_bytes(os.urandom(300_000))
    push(objects, rich_tree, "b:1")
    push(objects, other, "a:1")
    return objects


def test_an_unreferenced_blob_goes_only_after_two_runs_a_grace_apart(two_images):
    objects = two_images
    only_a = blob_ids(objects, "a:1") - blob_ids(objects, "b:1")
    mid_a, _ = open_image(objects, "a:1")
    assert only_a
    objects.delete("refs/a/1")  # as `thaw rm a:1`
    clock = Clock()
    runs = []
    for _ in range(6):  # every half hour, for three hours
        runs.append(collect(objects, grace=HOUR, clock=clock))
        assert readable(objects, "b:1")  # the other client's image, at every step
        clock.now += HOUR / 2
    deleted = [set(r.deleted) for r in runs]
    assert not any(deleted[:3])  # no run before the mark is a grace old deletes anything
    gone = set().union(*deleted)
    assert {f"blobs/{i[:2]}/{i}" for i in only_a | {mid_a}} <= gone
    assert not any(k.split("/")[-1] in blob_ids(objects, "b:1") for k in gone)
    marked_run = next(i for i, r in enumerate(runs) if r.marked)
    deleted_run = next(i for i, r in enumerate(runs) if r.deleted)
    assert deleted_run - marked_run >= 2  # two runs, a grace apart


def test_a_push_that_relies_on_a_condemned_blob_uploads_it_again(two_images, tmp_path,
                                                                 rich_tree):
    objects = two_images
    tree_a = tmp_path / "other"
    only_a = blob_ids(objects, "a:1") - blob_ids(objects, "b:1")
    for path in (tmp_path / "store" / "blobs").rglob("*"):  # written ten seconds earlier
        if path.is_file():
            st = path.stat()
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 10 * 10**9))
    objects.delete("refs/a/1")
    clock = Clock()
    clock.now += HOUR
    assert set(collect(objects, grace=HOUR, clock=clock).marked) >= {
        f"blobs/{i[:2]}/{i}" for i in only_a}
    push(objects, tree_a, "a:2")  # dedups against the condemned blobs: uploads them again
    clock.now += HOUR
    result = collect(objects, grace=HOUR, clock=clock)
    assert {f"blobs/{i[:2]}/{i}" for i in only_a} <= set(result.released)
    assert readable(objects, "a:2") and readable(objects, "b:1")


def test_a_leased_image_stays_and_goes_once_its_lease_expires(two_images):
    objects = two_images
    mid_a, _ = open_image(objects, "a:1")
    clock = Clock()
    lease = Lease(objects, "mount", clock=clock, ttl=HOUR)
    lease.add(manifests=(mid_a,))
    lease.write()
    objects.delete("refs/a/1")
    for _ in range(4):
        clock.now += HOUR / 2
        lease.write()  # its holder renews it, far more often than this
        collect(objects, grace=HOUR / 2, clock=clock)
        assert readable(objects, mid_a)  # kept by the lease alone
    for _ in range(3):  # stale now, not renewed: collected with its image
        clock.now += HOUR
        collect(objects, grace=HOUR / 2, clock=clock)
    assert not BlobStore(objects).has(mid_a) and not list(objects.list("leases/"))
    assert readable(objects, "b:1")


@pytest.mark.parametrize("damage, message", [
    (lambda o: o.put("refs/x/1", b"not an id\n"), "holds no manifest id"),
    (lambda o: o.put("refs/x/1", b"f" * 64 + b"\n"), "cannot be read"),
    (lambda o: o.put("leases/bad.json", b"{not json"), "invalid lease"),
])
def test_gc_fails_closed(two_images, damage, message):
    objects = two_images
    objects.delete("refs/a/1")
    clock = Clock()
    clock.now += 10 * HOUR
    collect(objects, grace=HOUR, clock=clock)  # marks a's blobs
    before = sorted(objects.list("blobs/"))
    damage(objects)
    clock.now += 10 * HOUR
    with pytest.raises(GcAborted, match=message):
        collect(objects, grace=HOUR, clock=clock)
    assert sorted(objects.list("blobs/")) == before  # nothing deleted
    assert not objects.has(LOCK)


@pytest.mark.allow_log_warnings
def test_one_collector_at_a_time_and_a_dead_ones_lock_is_taken_over(two_images, tmp_path):
    objects = two_images
    objects.create(LOCK, json.dumps({"holder": "node-7:1234"}).encode())
    clock = Clock()
    with pytest.raises(GcLocked, match="held by node-7:1234"):
        collect(objects, grace=HOUR, clock=clock)
    clock.now += 8 * 60  # 9 minutes after it was written (the clock starts a minute on):
    with pytest.raises(GcLocked, match="held by node-7:1234"):  # the README's 10 not up
        collect(objects, grace=HOUR, clock=clock)
    clock.now += 61
    collect(objects, grace=HOUR, clock=clock)  # a lock older than its TTL: taken over
    assert not objects.has(LOCK) and objects.has(CONDEMNED)


def test_rm_tag_and_gc_on_the_command_line(thaw, rich_tree):
    out = json.loads(thaw("push", str(rich_tree), "a:1", "--json").stdout)
    assert "-> " in thaw("tag", "a:1", "b:1").stdout.decode()
    thaw("rm", "a:1")
    assert [r["ref"] for r in json.loads(thaw("ls", "--json").stdout)] == ["b:1"]
    for args, message in ((["rm", out["manifest"]], "is a manifest id, not a tag"),
                          (["rm", "nope:1"], "no tag nope:1"),
                          (["tag", "nope:1", "c:1"], "nope:1"),
                          (["gc", "--grace", "10m"], "add --force"),
                          (["gc", "--grace", "soon"], "--grace 'soon'")):
        proc = thaw(*args, check=False)
        assert proc.returncode == 2 and message in proc.stderr.decode(), proc.stderr
        assert b"Traceback" not in proc.stderr
    dry = json.loads(thaw("gc", "--grace", "0", "--force", "--dry-run", "--json").stdout)
    assert dry["dry_run"] and dry["live_manifests"] == 1
    thaw("rm", "b:1")
    for _ in range(2):
        thaw("gc", "--grace", "0", "--force")
    assert not list(LocalStore(thaw.store[len("file://"):]).list("blobs/"))


@pytest.mark.s3
def test_two_collectors_at_once_on_seaweedfs(s3_env):
    from blobstore.store.s3 import S3Store

    objects = S3Store("thaw", f"gc-{uuid.uuid4().hex[:8]}")
    objects.put("nodes/x.json", b"{}")
    inside, go_on = threading.Event(), threading.Event()
    calls = []

    def slow_clock() -> float:  # the first call stamps the lock; the second runs, held
        calls.append(1)
        if len(calls) > 1:
            inside.set()
            go_on.wait(30)
        return time.time()

    first = threading.Thread(target=lambda: collect(objects, grace=HOUR, clock=slow_clock))
    first.start()
    assert inside.wait(30)  # the first holds the lock
    with pytest.raises(GcLocked, match="another `thaw gc` is running"):
        collect(objects, grace=HOUR, clock=time.time)
    go_on.set()
    first.join()
    collect(objects, grace=HOUR, clock=time.time)  # and the lock was released


@pytest.mark.mount
def test_a_live_mount_keeps_its_untagged_image_through_gc(thaw, rich_tree, tmp_path):
    from .conftest import Mounted, rsync_diff

    other = tmp_path / "other"
    subprocess.run(["cp", "-a", str(rich_tree), str(other)], check=True)
    (other / "own.bin").write_bytes(os.urandom(300_000))
    thaw("push", str(rich_tree), "b:1")
    thaw("push", str(other), "a:1")
    objects = LocalStore(thaw.store[len("file://"):])
    only_a = blob_ids(objects, "a:1") - blob_ids(objects, "b:1")
    shared = blob_ids(objects, "a:1") & blob_ids(objects, "b:1")
    mnt = tmp_path / "mnt"
    with Mounted(thaw, mnt, "mount", "a:1", str(mnt), "--cache-dir", str(tmp_path / "c"),
                 "--prefetch", "none", "--no-hints"):
        deadline = time.monotonic() + 30
        while not list(objects.list("leases/")):
            assert time.monotonic() < deadline, "the mount wrote no lease"
        thaw("rm", "a:1")
        for _ in range(2):
            thaw("gc", "--grace", "0", "--force")
        assert rsync_diff(other, mnt) == ""  # every file, read after two runs
        pid = int(subprocess.run(["pgrep", "-f", f"thaw.*mount a:1 {mnt}"], text=True,
                                 capture_output=True).stdout.split()[0])
    fd = os.pidfd_open(pid)
    import select

    select.select([fd], [], [], 30)  # it releases its lease as it exits
    os.close(fd)
    assert not list(objects.list("leases/"))
    for _ in range(2):
        thaw("gc", "--grace", "0", "--force")
    blobs = BlobStore(objects)
    assert not any(blobs.has(i) for i in only_a)
    assert all(blobs.has(i) for i in shared) and readable(objects, "b:1")


def test_check_finds_missing_corrupt_and_broken_and_exits_1(thaw, rich_tree, tmp_path):
    thaw("push", str(rich_tree), "a:1", "--chunker", "fastcdc:64K")
    thaw("push", str(rich_tree / "etc"), "b:1")
    objects = LocalStore(thaw.store[len("file://"):])
    assert thaw("check", "--read-data-subset", "100%").returncode == 0
    ids = sorted(blob_ids(objects, "a:1") - blob_ids(objects, "b:1"))
    objects.delete(f"blobs/{ids[0][:2]}/{ids[0]}")
    path = objects.root / "blobs" / ids[1][:2] / ids[1]
    raw = path.read_bytes()
    path.write_bytes(raw[:-1] + bytes([raw[-1] ^ 0xFF]))  # (a last byte may be 0 already)
    objects.put("refs/c/1", b"garbage\n")
    listed = json.loads(thaw("check", "--json", check=False).stdout)
    by_name = {i["name"]: i for i in listed["images"]}
    assert by_name["a:1"]["missing"] == [ids[0]] and by_name["a:1"]["corrupt"] == []
    assert by_name["c:1"]["error"] and by_name["b:1"]["ok"] and not listed["ok"]
    proc = thaw("check", "a:1", "--read-data-subset", "100%", "--json", check=False)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["images"][0]["corrupt"] == [ids[1]]
    slices = [json.loads(thaw("check", "b:1", "--read-data-subset", f"{n}/3", "--json")
                         .stdout)["images"][0]["read"] for n in (1, 2, 3)]
    assert sum(slices) == len(blob_ids(objects, "b:1"))  # the slices cover it once
    assert thaw("check", "--read-data-subset", "x", check=False).returncode == 2


class Crash(BaseException):
    """A process dying at this point (not an error anything may catch)."""


class CrashAt(LocalStore):
    """A directory store whose ``n``-th call that changes it dies."""

    def __init__(self, root, n: int) -> None:
        super().__init__(root)
        self.left = n

    def _tick(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise Crash()

    def put(self, key, data):
        self._tick()
        super().put(key, data)

    def create(self, key, data):
        self._tick()
        return super().create(key, data)

    def delete(self, key):
        self._tick()
        super().delete(key)


def _calls_until_done(run) -> int:
    n = 0
    while True:
        try:
            run(n)
            return n
        except Crash:
            n += 1


@pytest.mark.e2e  # about a minute: a store copied and collected at every step
@pytest.mark.allow_log_warnings
def test_a_crash_at_every_step_of_gc_and_push_loses_nothing_and_the_next_gc_finishes(
        two_images, tmp_path, rich_tree):
    template = tmp_path / "store"
    LocalStore(template).delete("refs/a/1")
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "new.bin").write_bytes(os.urandom(200_000))
    clock = Clock()
    clock.now += HOUR
    collect(LocalStore(template), grace=HOUR, clock=clock)  # a's blobs condemned
    clock.now += HOUR

    def fresh(n: int) -> CrashAt:
        root = tmp_path / f"run{n}"
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run(["cp", "-a", str(template), str(root)], check=True)
        return CrashAt(root, n)

    def gc_then_check(n: int) -> None:
        store = fresh(n)
        try:
            collect(store, grace=HOUR, clock=clock)
        finally:
            store.left = 1 << 30
            assert readable(store, "b:1")
            later = Clock()
            later.now = clock.now + LOCK_STALE + 60  # a crashed run's lock is stale by then
            for _ in range(2):
                collect(store, grace=HOUR, clock=later)
            assert readable(store, "b:1") and not store.has(LOCK)
            assert not any(True for _ in store.list("leases/"))

    def push_then_check(n: int) -> None:
        store = fresh(n)
        try:
            push(store, extra, "c:1")
        finally:
            store.left = 1 << 30
            assert readable(store, "b:1")
            if store.has("refs/c/1"):
                assert readable(store, "c:1")  # a tag is written last: complete or absent
            later = Clock()
            later.now = clock.now + 2 * HOUR  # its lease, if the crash left one, is stale
            for _ in range(2):
                collect(store, grace=HOUR, clock=later)
                later.now += HOUR
            assert readable(store, "b:1")

    assert _calls_until_done(gc_then_check) > 3
    assert _calls_until_done(push_then_check) > 3


def _kill_when(proc: subprocess.Popen, ready, what: str) -> None:
    """``kill -9`` ``proc`` as soon as ``ready()`` holds (polled; it must while it runs)."""
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, f"{what} ended before it could be killed"
        assert time.monotonic() < deadline, f"{what} never got there"
        time.sleep(0.005)
    proc.kill()
    proc.wait()


@pytest.mark.e2e  # real processes, killed in the middle of their writes
@pytest.mark.allow_log_warnings
def test_kill_9_in_the_middle_of_a_push_and_of_a_gc_loses_nothing(thaw, two_images, tmp_path):
    from .conftest import REPO

    objects = two_images
    root = tmp_path / "store"
    count = lambda: sum(len(files) for _, _, files in os.walk(root / "blobs"))  # noqa: E731
    cmd = [sys.executable, "-m", "thaw", "--store", thaw.store]

    big = tmp_path / "big"
    big.mkdir()
    for n in range(40):
        (big / f"f{n}.bin").write_bytes(os.urandom(1 << 20))
    before = count()
    push = subprocess.Popen([*cmd, "push", str(big), "c:1"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(push, lambda: count() > before + 5, "the push")
    assert not objects.has("refs/c/1") and list(objects.list("leases/"))  # its lease stays
    assert readable(objects, "b:1") and readable(objects, "a:1")

    objects.delete("refs/a/1")
    for _ in range(2):  # a's own blobs, and what the dead push uploaded and never tagged
        thaw("gc", "--grace", "0", "--force")
    assert count() == len(blob_ids(objects, "b:1")) + 1 and readable(objects, "b:1")
    for n in range(3000):  # and plenty more, so that the sweep takes a while
        objects.put(f"blobs/00/{n:064x}", b"x")
    thaw("gc", "--grace", "0", "--force")  # marks it all
    first = root / f"blobs/00/{0:064x}"  # the sweep deletes in key order
    before = count()
    gc = subprocess.Popen([*cmd, "gc", "--grace", "0", "--force"], cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(gc, lambda: not first.exists(), "the collector")
    assert len(blob_ids(objects, "b:1")) + 1 < count() < before  # killed in its sweep
    assert readable(objects, "b:1")
    locked = thaw("gc", "--grace", "0", "--force", check=False)
    assert locked.returncode == 3 and b"held by" in locked.stderr  # the dead one's lock

    clock = Clock()
    clock.now += LOCK_STALE + HOUR  # its lock and the push's lease are stale by then
    for _ in range(2):
        collect(objects, grace=0, clock=clock)
    assert readable(objects, "b:1") and not objects.has(LOCK)
    assert not list(objects.list("leases/"))
    assert count() == len(blob_ids(objects, "b:1")) + 1  # its chunks and its manifest


def test_gc_cache_dir_drops_what_the_store_lost_but_never_a_leased_images_blobs(
        thaw, two_images, tmp_path):
    from blobstore.store.diskcache import DiskCache
    from blobstore.store.tiers import ReadThrough

    objects = two_images
    cache_dir = tmp_path / "cache"
    cache = DiskCache(cache_dir, 1 << 30)
    through = ReadThrough(BlobStore(objects), cache)
    for ref in ("a:1", "b:1"):
        mid, manifest = open_image(objects, ref)
        for id in [mid, *(c.id for c in manifest.chunks)]:
            through.get(id)  # as a mount reading every file
    only_a = blob_ids(objects, "a:1") - blob_ids(objects, "b:1")
    mid_a, _ = open_image(objects, "a:1")
    mid_b, manifest_b = open_image(objects, "b:1")
    lease = Lease(objects, "mount")
    lease.add(manifests=(mid_b,))
    lease.write()  # b:1 is mounted on some node
    thaw("rm", "a:1", "b:1")
    for _ in range(2):
        thaw("gc", "--grace", "0", "--force")
    lost = manifest_b.chunks[0].id
    objects.delete(f"blobs/{lost[:2]}/{lost}")  # the store lost a blob b:1 uses

    dry = json.loads(thaw("gc", "--cache-dir", str(cache_dir), "--dry-run", "--json").stdout)
    assert dry["dropped"] == len(only_a) + 1 and cache.has(next(iter(only_a)))
    recent = sorted(only_a)[0]  # read just now, as the run lists the store: left for later
    future = time.time() + 3600
    os.utime(cache_dir / recent[:2] / recent, (future, future))
    out = json.loads(thaw("gc", "--cache-dir", str(cache_dir), "--json").stdout)
    assert set(out["dropped_ids"]) == (only_a - {recent}) | {mid_a} and cache.has(recent)
    os.utime(cache_dir / recent[:2] / recent)
    out = json.loads(thaw("gc", "--cache-dir", str(cache_dir), "--json").stdout)
    assert out["dropped_ids"] == [recent]
    assert not any(cache.has(i) for i in only_a)
    assert out["only_copies"] == [lost] and cache.has(lost)  # the only copy: kept, each run
    assert all(cache.has(c.id) for c in manifest_b.chunks) and cache.has(mid_b)
    assert objects.has(f"blobs/{mid_b[:2]}/{mid_b}")  # the store is never written
    proc = thaw("gc", "--cache-dir", str(tmp_path / "nope"), check=False)
    assert proc.returncode == 2 and b"not a directory" in proc.stderr
    proc = thaw("gc", "--cache-dir", str(cache_dir), "--grace", "0", "--force", check=False)
    assert proc.returncode == 2 and b"--grace and --force are for" in proc.stderr
