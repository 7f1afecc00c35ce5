"""``thaw warm`` on a running daemon and ``--prefetch all`` on a real mount: what they fetch
into the disk cache, with no read, and where they stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blobstore.image.hints import save_hints
from blobstore.image.images import open_image
from blobstore.store.diskcache import DiskCache
from blobstore.store.local import LocalStore
from fusefs.prefetch import image_order

from .conftest import REPO, Mounted, mount_pid

pytestmark = pytest.mark.mount


@pytest.fixture
def pushed(thaw, rich_tree, store_url):
    thaw("push", str(rich_tree), "rich:1", "--chunker", "fastcdc:64K")
    return open_image(LocalStore(store_url[len("file://"):]), "rich:1")


def stats_of(thaw, mnt) -> dict:
    return json.loads(thaw("stats", str(mnt), "--json").stdout)


def settled(thaw, mnt, prefetches: int) -> dict:
    """The mount's stats once it has prefetched that many chunks and has none queued."""
    deadline = time.monotonic() + 60
    while True:
        stats = stats_of(thaw, mnt)
        if stats["prefetches"] >= prefetches and not stats["prefetch_queued"]:
            return stats
        assert time.monotonic() < deadline, f"prefetch never settled: {stats}"


def test_thaw_warm_starts_a_daemons_prefetch_into_the_disk_cache_with_no_read(
        thaw, pushed, store_url, tmp_path):
    mid, manifest = pushed
    objects = LocalStore(store_url[len("file://"):])
    restored = [s.chunk for s in manifest.entry("bin/ping").spans]
    save_hints(objects, mid, "restore", {i: float(n) for n, i in enumerate(restored)})
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    with Mounted(thaw, mnt, "daemon", "--mountpoint", str(mnt), "--cache-dir", str(cache),
                 "--no-hints"):
        doc = json.loads(thaw("warm", "rich:1", "--mountpoint", str(mnt), "--hints",
                              "restore", "--json").stdout)
        assert (doc["image"], doc["hinted_chunks"]) == (mid, len(restored))
        stats = settled(thaw, mnt, len(restored))
        assert stats["demand_fetches"] == 0 and stats["tiers"]["store"]["chunks"] == len(
            restored)
        disk = DiskCache(cache, 1 << 30)
        assert all(disk.has(manifest.chunks[i].id) for i in restored)  # for the restore
        assert stats["prefetched_unread_bytes"] == sum(manifest.chunks[i].size
                                                       for i in restored)
        again = thaw("warm", mid, "--mountpoint", str(mnt), "--hints", "restore").stdout
        assert b"of the %d chunks that 'restore' read" % len(restored) in again
        assert settled(thaw, mnt, 0)["prefetches"] == len(restored)  # all there already
        nothing = thaw("warm", "rich:1", "--mountpoint", str(mnt), "--hints", "serve").stdout
        assert b"no hints recorded for 'serve'" in nothing
        for args, message in (
                (["nope:1", "--mountpoint", str(mnt)], "nope:1: no such image"),
                (["rich:1", "--mountpoint", str(tmp_path)], "is not a thaw mount"),
                (["rich:1", "--mountpoint", str(mnt), "--hints", "../x"], "--hints '../x'")):
            proc = thaw("warm", *args, check=False)
            assert proc.returncode == 2 and message in proc.stderr.decode(), proc.stderr
            assert b"Traceback" not in proc.stderr


def test_prefetch_all_under_a_small_budget_stops_at_the_budget(thaw, pushed, tmp_path):
    mid, manifest = pushed
    budget = 1 << 20
    expected = image_order(manifest, budget)
    assert 0 < len(expected) < len({c.id for c in manifest.chunks})
    mnt = tmp_path / "mnt"
    with Mounted(thaw, mnt, "mount", "rich:1", str(mnt), "--cache-dir", str(tmp_path / "c"),
                 "--no-hints", "--prefetch", "all", "--prefetch-budget", "1M"):
        stats = settled(thaw, mnt, len(expected))
        assert stats["prefetches"] == len(expected)
        assert stats["tiers"]["store"]["stored_bytes"] <= budget
        assert stats["demand_fetches"] == 0
        assert stats["tiers"]["memory"]["chunks"] == 0 and stats["cache_hits"] == 0


def _waiting_in_the_kernel(pid: int) -> bool:
    """Whether a thread of ``pid`` waits for a FUSE daemon's answer."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "wchan").read_text() == "request_wait_answer":
                return True
        except OSError:
            pass
    return False


def test_warm_and_stats_against_a_stopped_daemon_end_with_one_line(thaw, pushed, tmp_path):
    """A stopped daemon never answers, and the kernel's wait for it yields only to a fatal
    signal: `thaw warm` and `thaw stats` give up with exit 2, and SIGTERM ends a warm that
    is waiting. The bound is the harness's wall clock, not an assertion on time."""
    mnt = tmp_path / "mnt"
    with Mounted(thaw, mnt, "daemon", "--mountpoint", str(mnt), "--cache-dir",
                 str(tmp_path / "cache"), "--no-hints"):
        pid = mount_pid(mnt)
        os.kill(pid, signal.SIGSTOP)
        try:
            for args in (["warm", "rich:1", "--mountpoint", str(mnt)], ["stats", str(mnt)]):
                proc = subprocess.run([sys.executable, "-m", "thaw", "--store", thaw.store,
                                       *args], capture_output=True, text=True, timeout=60,
                                      cwd=REPO)
                assert proc.returncode == 2, proc.stderr
                assert "does not answer" in proc.stderr and "Traceback" not in proc.stderr
                assert len(proc.stderr.strip().splitlines()) == 1
            warm = subprocess.Popen([sys.executable, "-m", "thaw", "--store", thaw.store,
                                     "warm", "rich:1", "--mountpoint", str(mnt)],
                                    stderr=subprocess.PIPE, text=True, cwd=REPO)
            deadline = time.monotonic() + 60
            while not _waiting_in_the_kernel(warm.pid):
                assert warm.poll() is None and time.monotonic() < deadline
            warm.send_signal(signal.SIGTERM)
            assert warm.wait(timeout=30) == 128 + signal.SIGTERM
            assert warm.stderr.read().strip() == "thaw: terminated"
        finally:
            os.kill(pid, signal.SIGCONT)


def test_warm_on_a_single_image_mount_says_it_needs_a_daemon(thaw, pushed, tmp_path):
    mnt = tmp_path / "mnt"
    with Mounted(thaw, mnt, "mount", "rich:1", str(mnt), "--cache-dir",
                 str(tmp_path / "cache"), "--no-hints"):
        proc = thaw("warm", "rich:1", "--mountpoint", str(mnt), check=False)
        assert proc.returncode == 2 and b"Traceback" not in proc.stderr
        assert b"single-image `thaw mount`; `thaw warm` needs `thaw daemon`" in proc.stderr
        assert stats_of(thaw, mnt)["mount"] == "image"
