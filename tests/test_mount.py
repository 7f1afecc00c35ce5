"""Real FUSE mounts of the rich tree, in subprocesses, against a local store."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from blobstore.image.hints import load_hints
from blobstore.image.images import open_image
from blobstore.store.blobs import blob_key
from blobstore.store.codec import encode_blob
from blobstore.store.local import LocalStore
from fusefs.mountpoint import is_mounted

from .conftest import REPO, Mounted, mount_pid, rsync_diff
from .seaweed import free_ports

pytestmark = pytest.mark.mount


@pytest.fixture
def pushed(thaw, rich_tree, tmp_path):
    out = json.loads(thaw("push", str(rich_tree), "rich:1", "--json", "--chunker",
                          "fastcdc:64K").stdout)
    return out["manifest"]


def cache_args(tmp_path) -> list[str]:
    return ["--cache-dir", str(tmp_path / "cache")]


def test_mount_is_identical_to_the_source(thaw, pushed, rich_tree, tmp_path):
    with Mounted(thaw, tmp_path / "mnt", "mount", "rich:1", str(tmp_path / "mnt"),
                 *cache_args(tmp_path)) as mnt:
        assert rsync_diff(rich_tree, mnt) == ""
        st = os.statvfs(mnt)
        assert st.f_blocks > 0 and st.f_files > 20
        assert os.stat(mnt / "usr" / "lib" / "a").st_ino == os.stat(mnt / "etc" / "c").st_ino
        assert os.stat(mnt / "bin" / "ping").st_blocks == (3 << 20) // 512
        with pytest.raises(OSError):
            (mnt / "etc" / "new").write_text("x")  # read-only
        stats = json.loads(thaw("stats", str(mnt), "--json").stdout)
        assert stats["manifest"] == pushed
        assert stats["fetched_bytes"] <= stats["image_bytes"]


@pytest.mark.parametrize("kind", ["mount", "daemon"])
def test_a_mount_is_ready_only_once_its_read_ahead_is_raised(thaw, pushed, tmp_path, kind):
    """A workload let in with the kernel's 128 KiB read-ahead made a mount fetch 60% more
    of an image: `--background` returns only after the mount's read-ahead is 1 MiB."""
    from fusefs.mountpoint import mount_device

    mnt = tmp_path / "mnt"
    args = ("mount", "rich:1", str(mnt)) if kind == "mount" else (
        "daemon", "--mountpoint", str(mnt), "--gpus", "1xCPU:1G")
    with Mounted(thaw, mnt, *args, *cache_args(tmp_path)):
        bdi = Path("/sys/class/bdi") / mount_device(os.path.realpath(mnt)) / "read_ahead_kb"
        assert os.access(bdi, os.W_OK), f"{bdi} cannot be written here (root is needed)"
        assert int(bdi.read_text()) == 1024  # the README's 1 MiB, at once: no wait, no retry


def test_sigterm_unmounts_cleanly(thaw, pushed, tmp_path):
    mnt = tmp_path / "mnt"
    with Mounted(thaw, mnt, "mount", "rich:1", str(mnt), *cache_args(tmp_path)):
        pid = mount_pid(mnt)
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not is_mounted(str(mnt)):
                break
            threading.Event().wait(0.05)
        assert not is_mounted(str(mnt))
        assert os.listdir(mnt) == []


def test_killed_daemon_leaves_a_stale_mount_that_the_next_mount_clears(thaw, pushed, tmp_path):
    mnt = tmp_path / "mnt"
    with Mounted(thaw, mnt, "mount", "rich:1", str(mnt), *cache_args(tmp_path)):
        os.kill(mount_pid(mnt), signal.SIGKILL)
        for _ in range(100):
            try:
                os.listdir(mnt)
            except OSError as exc:
                assert exc.errno in (103, 107)  # ECONNABORTED, ENOTCONN: never "empty"
                break
            threading.Event().wait(0.05)
        else:
            pytest.fail("the mount did not go stale")
        thaw("mount", "rich:1", str(mnt), "--background", *cache_args(tmp_path))
        assert (mnt / "etc" / "hostname").read_text() == "thaw\n"


@pytest.mark.allow_log_warnings
@pytest.mark.parametrize("command", ["mount", "daemon"])
def test_a_mount_killed_after_reads_is_cleared_by_the_next_mount_or_daemon(
        thaw, pushed, tmp_path, command):
    """Reads before the kill leave the root's attributes in the kernel's cache, so a stat of
    the mount point still succeeds: only statfs shows the daemon is gone."""
    mnt = tmp_path / "mnt"
    args = ["mount", "rich:1", str(mnt)] if command == "mount" else [
        "daemon", "--mountpoint", str(mnt), "--no-hints"]
    with Mounted(thaw, mnt, *args, *cache_args(tmp_path)):
        first = mnt / "etc" / "hostname" if command == "mount" else mnt / pushed / "etc"
        os.listdir(mnt)
        assert first.exists()
        os.kill(mount_pid(mnt), signal.SIGKILL)
        for _ in range(200):
            try:
                os.statvfs(mnt)
            except OSError:
                break  # the connection is gone
            threading.Event().wait(0.05)
        os.stat(mnt)  # answered from the attribute cache: looks alive
        thaw(*args, "--background", *cache_args(tmp_path))
        path = mnt / "etc" / "hostname" if command == "mount" else mnt / pushed / "etc" / \
            "hostname"
        assert path.read_text() == "thaw\n"


def test_a_live_mount_is_not_mounted_over(thaw, pushed, tmp_path):
    mnt = tmp_path / "mnt"
    with Mounted(thaw, mnt, "mount", "rich:1", str(mnt), *cache_args(tmp_path)):
        proc = thaw("mount", "rich:1", str(mnt), *cache_args(tmp_path), check=False)
        err = proc.stderr.decode()
        assert proc.returncode == 2 and "already a mount point" in err, err
        assert (mnt / "etc" / "hostname").read_text() == "thaw\n"


def test_a_stopped_daemon_is_named_not_waited_on(thaw, pushed, tmp_path):
    mnt = tmp_path / "mnt"
    with Mounted(thaw, mnt, "mount", "rich:1", str(mnt), *cache_args(tmp_path)):
        pid = mount_pid(mnt)
        os.kill(pid, signal.SIGSTOP)
        try:
            proc = thaw("mount", "rich:1", str(mnt), *cache_args(tmp_path), check=False)
        finally:
            os.kill(pid, signal.SIGCONT)
        err = proc.stderr.decode()
        assert proc.returncode == 2 and "does not answer" in err, err


@pytest.mark.parametrize("setup, fragment", [
    (lambda p: None, "does not exist"),
    (lambda p: (p.mkdir(), (p / "x").write_text("x")), "not empty"),
    (lambda p: p.write_text("x"), "not a directory"),
])
def test_bad_mount_points_are_one_line(thaw, pushed, tmp_path, setup, fragment):
    mnt = tmp_path / "mnt"
    setup(mnt)
    proc = thaw("mount", "rich:1", str(mnt), *cache_args(tmp_path), check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and fragment in err and "Traceback" not in err


def test_missing_ref_is_one_line_even_in_background(thaw, tmp_path):
    (tmp_path / "mnt").mkdir()
    proc = thaw("mount", "nothing:here", str(tmp_path / "mnt"), "--background",
                *cache_args(tmp_path), check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "no image nothing:here" in err, err
    assert not is_mounted(str(tmp_path / "mnt"))


def test_umount_and_stats_of_something_else(thaw, tmp_path):
    proc = thaw("umount", str(tmp_path), check=False)
    assert proc.returncode == 2 and "not mounted" in proc.stderr.decode()
    proc = thaw("stats", str(tmp_path), check=False)
    assert proc.returncode == 2 and "not a thaw mount" in proc.stderr.decode()


def test_parallel_cold_readers_fetch_each_chunk_once(thaw, pushed, store_url, tmp_path):
    objects = LocalStore(store_url[len("file://"):])
    _, manifest = open_image(objects, "rich:1")
    ping = manifest.entry("bin/ping")
    unique = {manifest.chunks[s.chunk].id for s in ping.spans}
    with Mounted(thaw, tmp_path / "mnt", "mount", "rich:1", str(tmp_path / "mnt"),
                 *cache_args(tmp_path), "--prefetch", "none") as mnt:  # reads alone
        results = []
        threads = [threading.Thread(target=lambda: results.append(
            (mnt / "bin" / "ping").read_bytes())) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(results)) == 1 and len(results[0]) == 3 << 20
        stats = json.loads(thaw("stats", str(mnt), "--json").stdout)
        assert stats["tiers"]["store"]["chunks"] == len(unique)


@pytest.mark.parametrize("mode", ["mount", "daemon"])
def test_a_second_mount_prefetches_what_the_first_read(thaw, pushed, rich_tree, store_url,
                                                       tmp_path, mode):
    objects = LocalStore(store_url[len("file://"):])
    mid, manifest = open_image(objects, "rich:1")
    ping = {manifest.chunks[s.chunk].id for s in manifest.entry("bin/ping").spans}
    mnt = tmp_path / "mnt"
    args = ["mount", "rich:1", str(mnt)] if mode == "mount" else ["daemon", "--mountpoint",
                                                                   str(mnt)]
    image = mnt if mode == "mount" else mnt / mid  # the daemon loads it on first lookup
    with Mounted(thaw, mnt, *args, "--cache-dir", str(tmp_path / "a")):
        pid = mount_pid(mnt)
        (image / "bin" / "ping").read_bytes()
        assert stats_of(thaw, mnt)["hinted_chunks"] == 0  # nothing learned yet
    wait_for_exit(pid)  # it saves what it saw as it unmounts
    assert {manifest.chunks[i].id for i in load_hints(objects, mid, "start")} == ping
    with Mounted(thaw, mnt, *args, "--cache-dir", str(tmp_path / "b")):
        (image / "etc").stat()
        deadline = time.monotonic() + 60
        while stats_of(thaw, mnt)["prefetches"] < len(ping):
            assert time.monotonic() < deadline, "the hinted chunks were never prefetched"
        assert (image / "bin" / "ping").read_bytes() == (rich_tree / "bin" / "ping").read_bytes()
        stats = stats_of(thaw, mnt)
        assert stats["hinted_chunks"] == len(load_hints(objects, mid, "start"))
        assert "from earlier starts' hints" in thaw("stats", str(mnt)).stdout.decode()
        assert stats["demand_fetches"] == 0  # the start found its chunks there
        assert stats["tiers"]["store"]["chunks"] == len(ping)
    for bad, message in ((["--hints", "../x"], "--hints '../x'"),
                         (["--hints-window", "0"], "--hints-window")):
        proc = thaw(*args, *bad, check=False)
        assert proc.returncode == 2 and message in proc.stderr.decode()


def stats_of(thaw, mnt: Path) -> dict:
    return json.loads(thaw("stats", str(mnt), "--json").stdout)


def wait_for_exit(pid: int, timeout: float = 30) -> None:
    """Until the process ends (a pidfd becomes readable then): no polling."""
    fd = os.pidfd_open(pid)
    try:
        assert select.select([fd], [], [], timeout)[0], f"process {pid} did not exit"
    finally:
        os.close(fd)


@pytest.mark.allow_log_warnings
def test_corrupt_store_object_is_eio_and_corrupt_cache_entry_is_refetched(
        thaw, pushed, store_url, tmp_path):
    objects = LocalStore(store_url[len("file://"):])
    _, manifest = open_image(objects, "rich:1")
    notes = manifest.entry("home/user/notes.txt")
    victim = manifest.chunks[notes.spans[0].chunk].id
    cache = tmp_path / "cache" / victim[:2] / victim
    with Mounted(thaw, tmp_path / "mnt", "mount", "rich:1", str(tmp_path / "mnt"),
                 *cache_args(tmp_path)) as mnt:
        assert (mnt / "home" / "user" / "notes.txt").read_bytes() == b"hello\n" * 1000
    assert cache.exists()
    cache.write_bytes(encode_blob(b"rotten cache entry"))
    good = objects.get(blob_key(victim))
    with Mounted(thaw, tmp_path / "mnt", "mount", "rich:1", str(tmp_path / "mnt"),
                 *cache_args(tmp_path)) as mnt:
        assert (mnt / "home" / "user" / "notes.txt").read_bytes() == b"hello\n" * 1000
    objects.put(blob_key(victim), encode_blob(b"forged in the bucket"))
    cache.unlink()
    with Mounted(thaw, tmp_path / "mnt", "mount", "rich:1", str(tmp_path / "mnt"),
                 *cache_args(tmp_path)) as mnt:
        with pytest.raises(OSError) as e:
            (mnt / "home" / "user" / "notes.txt").read_bytes()
        assert e.value.errno == 5  # EIO
        objects.put(blob_key(victim), good)
        assert (mnt / "etc" / "hostname").read_text() == "thaw\n"  # still serving


def test_metrics_endpoint(thaw, pushed, tmp_path):
    port = free_ports(1)[0]
    with Mounted(thaw, tmp_path / "mnt", "mount", "rich:1", str(tmp_path / "mnt"),
                 "--metrics", f"127.0.0.1:{port}", *cache_args(tmp_path)) as mnt:
        (mnt / "bin" / "ping").read_bytes()
        for _ in range(100):  # the snapshot is published once a second
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            if 'thaw_tier_chunks_total{tier="store"}' in text and "thaw_fetched_bytes" in text:
                break
            threading.Event().wait(0.05)
        assert 'thaw_fetched_bytes_total{form="uncompressed"}' in text
        assert "thaw_image_bytes" in text


def test_daemon_serves_every_image_and_refs(thaw, pushed, rich_tree, tmp_path):
    thaw("push", str(rich_tree / "etc"), "team/etc:v2")
    mnt = tmp_path / "mnt"
    with Mounted(thaw, mnt, "daemon", "--mountpoint", str(mnt), *cache_args(tmp_path)):
        assert os.listdir(mnt) == ["refs"]
        assert (mnt / pushed / "etc" / "hostname").read_text() == "thaw\n"
        assert sorted(os.listdir(mnt)) == sorted(["refs", pushed])
        assert os.readlink(mnt / "refs" / "rich" / "1") == f"../../{pushed}"
        assert (mnt / "refs" / "team" / "etc" / "v2" / "hostname").read_text() == "thaw\n"
        assert sorted(os.listdir(mnt / "refs")) == ["rich", "team"]
        assert not (mnt / "refs" / "nope").exists()
        assert not (mnt / ("0" * 64)).exists()
        assert rsync_diff(rich_tree, mnt / "refs" / "rich" / "1") == ""


def test_no_dev_fuse_is_one_line(thaw, pushed, tmp_path):
    """In a mount namespace whose /dev lacks fuse: a real machine without the module."""
    (tmp_path / "mnt").mkdir()
    command = [sys.executable, "-m", "thaw", "--store", thaw.store, "mount", "rich:1",
               str(tmp_path / "mnt")]
    script = "mount -t tmpfs none /dev && exec " + " ".join(command)
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, cwd=REPO)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "/dev/fuse is missing" in err and "Traceback" not in err


def test_daemon_writes_a_node_report_the_placer_reads(thaw, pushed, store_url, tmp_path):
    from blobstore.ops.nodereport import parse_reports, read_reports
    from placement.reports import fresh_nodes

    mnt = tmp_path / "mnt"
    objects = LocalStore(store_url[len("file://"):])
    with Mounted(thaw, mnt, "daemon", "--mountpoint", str(mnt), "--node-id", "gpu-7",
                 "--gpus", "8xH200:141G", "--report-interval", "0.2", *cache_args(tmp_path)):
        (mnt / "refs" / "rich" / "1" / "etc" / "hostname").read_text()
        for _ in range(200):  # written every 0.2 s; the cache fill shows up in a later one
            nodes, _ = fresh_nodes(parse_reports(read_reports(objects))[0])
            if nodes and nodes[0].cached.get(pushed):
                break
            threading.Event().wait(0.05)
    (node,) = nodes
    assert (node.id, node.gpu_model, node.gpus_free) == ("gpu-7", "H200", 8)
    assert 0 < node.cached[pushed] and node.cache_limit == 10 << 30


def test_a_directory_of_20k_entries_lists_every_name_once_in_order(thaw, tmp_path):
    """readdir pages through a big directory by offset: no name lost or repeated."""
    src = tmp_path / "big"
    (src / "d").mkdir(parents=True)
    names = sorted(f"entry-{i:05d}-{'x' * (i % 40)}" for i in range(20_000))
    for n in names:
        (src / "d" / n).touch()
    thaw("push", str(src), "big:1")
    mnt = tmp_path / "mnt"
    with Mounted(thaw, mnt, "mount", "big:1", str(mnt), *cache_args(tmp_path)):
        for _ in range(2):
            assert sorted(os.listdir(mnt / "d")) == names
            assert [e.name for e in os.scandir(mnt / "d")] == names


MEMORY_OVERHEAD = 100 << 20  # the README's figure: resident memory <= --memory + this


def test_memory_bounds_resident_memory_within_the_documented_overhead(thaw, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "big", "wb") as f:
        for _ in range(24):
            f.write(os.urandom(16 << 20))  # 384 MiB that does not compress
    thaw("push", str(src), "big:1")
    (src / "big").unlink()
    mnt = tmp_path / "mnt"
    with Mounted(thaw, mnt, "mount", "big:1", str(mnt), "--memory", "64M", "--no-hints",
                 *cache_args(tmp_path)):
        with open(mnt / "big", "rb") as f:
            while f.read(1 << 20):
                pass
        with open(f"/proc/{mount_pid(mnt)}/status") as f:
            peak = next(int(line.split()[1]) << 10 for line in f if line.startswith("VmHWM"))
    assert peak < (64 << 20) + MEMORY_OVERHEAD, f"peak resident {peak >> 20} MiB"


def test_a_repeated_listing_of_an_image_directory_is_answered_by_the_kernel(thaw, tmp_path):
    """With pyfuse3 rebuilt by scripts/pyfuse3.sh (make install does it), an
    image directory's listing is cached by the kernel: listing it again asks the daemon
    for no page of names."""
    import pyfuse3

    assert getattr(pyfuse3, "THAW_CACHE_READDIR", False), \
        "pyfuse3 is not rebuilt with cached readdir: `make install` failed to (see its output)"
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    names = [f"f{i:05d}" for i in range(3000)]
    for n in names:
        (src / "d" / n).touch()
    thaw("push", str(src), "dir:1")
    mnt = tmp_path / "mnt"
    with Mounted(thaw, mnt, "mount", "dir:1", str(mnt), *cache_args(tmp_path)):
        assert sorted(os.listdir(mnt / "d")) == names
        first = json.loads(thaw("stats", str(mnt), "--json").stdout)["readdir_requests"]
        for _ in range(3):
            assert sorted(os.listdir(mnt / "d")) == names
        again = json.loads(thaw("stats", str(mnt), "--json").stdout)["readdir_requests"]
    assert first > 10 and again == first


def test_the_kernel_answers_repeated_lookups_and_misses_inside_an_image(thaw, pushed,
                                                                        tmp_path):
    """A name missing from an image is a negative entry: looked up again, the kernel
    answers; at the daemon's root, where images appear, every lookup reaches the daemon.
    thaw stats counts the requests by type (its own lookups too: ``own``)."""
    mnt = tmp_path / "mnt"
    image = mnt / pushed

    def stats() -> dict:
        return json.loads(thaw("stats", str(mnt), "--json").stdout)

    def lookups() -> dict:
        return stats()["fuse_requests"]

    with Mounted(thaw, mnt, "daemon", "--mountpoint", str(mnt), *cache_args(tmp_path)):
        assert (image / "etc" / "hostname").read_text() == "thaw\n"
        assert not (image / "etc" / "nope.py").exists()
        assert stats()["read_wait_seconds"] > 0  # the first read waited on the store
        own = lookups()["lookup"]
        first = lookups()
        own = first["lookup"] - own
        for _ in range(5):
            assert not (image / "etc" / "nope.py").exists()
            assert (image / "etc" / "hostname").read_text() == "thaw\n"
        inside = lookups()
        for _ in range(5):
            assert not (mnt / ("0" * 64)).exists()
        root = lookups()
    assert first["lookup_missing"] == inside["lookup_missing"] == 1
    assert inside["lookup"] - first["lookup"] == own  # thaw stats's, nothing else
    assert root["lookup"] - inside["lookup"] == 5 + own
    assert inside["open"] - first["open"] >= 5  # opens still reach the daemon


def test_an_image_without_xattrs_has_the_kernel_answer_getxattr(thaw, tmp_path):
    """The daemon answers the first getxattr ENOSYS; from then on the kernel answers each
    itself (EOPNOTSUPP, which ls and cp take as no xattrs; ENODATA, no ACL, for an ACL's
    name), and the control file that `thaw stats` reads still works and is never
    listed."""
    import errno

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"data")
    thaw("push", str(src), "plain:1")
    mnt = tmp_path / "mnt"
    with Mounted(thaw, mnt, "mount", "plain:1", str(mnt), *cache_args(tmp_path)):
        for name in ("security.selinux", "user.any", "security.selinux"):
            with pytest.raises(OSError) as e:
                os.getxattr(mnt / "d" / "f", name)
            assert e.value.errno == errno.EOPNOTSUPP, name
        with pytest.raises(OSError) as e:
            os.getxattr(mnt / "d" / "f", "system.posix_acl_access")
        assert e.value.errno == errno.ENODATA
        assert (mnt / "d" / "f").read_bytes() == b"data"
        assert os.listdir(mnt) == ["d"]
        stats = json.loads(thaw("stats", str(mnt), "--json").stdout)
        assert stats["fetched_bytes"] == 4


def test_a_background_mount_logs_to_the_state_directory_not_the_cache(thaw, pushed,
                                                                      tmp_path):
    """A cache that fills its disk must not silence the log that says so."""
    thaw.env["XDG_STATE_HOME"] = str(tmp_path / "state")
    mnt = tmp_path / "mnt"
    with Mounted(thaw, mnt, "mount", "rich:1", str(mnt), *cache_args(tmp_path)):
        logs = list((tmp_path / "state" / "thaw" / "log").glob("mount-*.log"))
        assert len(logs) == 1
        assert not [p for p in (tmp_path / "cache").rglob("*.log")]


def test_a_directory_that_fails_its_checks_is_eio_and_the_rest_of_the_image_reads(
        thaw, pushed, store_url, tmp_path):
    """A mount checks a directory of the manifest when it first reads it: a hostile one
    answers EIO, names the manifest in the log, and spoils nothing else."""
    import msgpack

    from blobstore.image.refs import Refs, parse_ref
    from blobstore.store.blobs import BlobStore

    objects = LocalStore(store_url[len("file://"):])
    doc = msgpack.unpackb(BlobStore(objects).get(pushed), raw=False)
    row = next(i for i, (_, name, _) in enumerate(doc["dirs"]) if name == b"user")
    entries = msgpack.unpackb(doc["sections"][row], raw=False)
    entries[0][2] = 0o17777  # a mode with bits no mode has
    doc["sections"][row] = msgpack.packb(entries, use_bin_type=True)
    bad, _ = BlobStore(objects).put(msgpack.packb(doc, use_bin_type=True))
    Refs(objects).set(parse_ref("hostile:1"), bad)
    thaw.env["XDG_STATE_HOME"] = str(tmp_path / "state")
    mnt = tmp_path / "mnt"
    with Mounted(thaw, mnt, "mount", "hostile:1", str(mnt), *cache_args(tmp_path)):
        assert (mnt / "etc" / "hostname").read_text() == "thaw\n"
        with pytest.raises(OSError) as e:
            os.listdir(mnt / "home" / "user")
        assert e.value.errno == 5  # EIO
        assert (mnt / "etc" / "hostname").read_text() == "thaw\n"
        log = next((tmp_path / "state" / "thaw" / "log").glob("mount-*.log")).read_text()
        assert f"manifest {bad}" in log and "mode must be" in log, log
    assert thaw("verify", "hostile:1", check=False).returncode != 0
