"""Files whose bytes are on the node, as files; FUSE passthrough of them. Pure parts first
(the file cache, the passthrough's rules with a stand-in for the kernel's ioctl), then real
mounts with passthrough on and off."""

from __future__ import annotations

import errno
import json
import math
import mmap
import os
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from blobstore.image.images import open_image
from blobstore.image.refs import parse_ref
from blobstore.store.blobs import BlobStore
from blobstore.store.diskcache import DiskCache
from blobstore.store.filecache import XATTR, FileCache, file_key
from blobstore.store.memory import MemoryStore
from fusefs import passthrough as pt
from fusefs.materialize import QUIET, Materializer
from fusefs.passthrough import Passthrough, support
from fusefs.tree import FsTree
from indexer.push import push_tree
from indexer.sources import open_source

from .conftest import Mounted, mount_pid
from .test_mount import wait_for_exit

A, B = "a" * 64, "b" * 64


def test_a_files_name_comes_from_its_span_list():
    one = file_key([(A, 0, 10), (B, 0, 5)])
    assert one == file_key([(A, 0, 10), (B, 0, 5)])  # the same file in any image
    assert one != file_key([(A, 0, 10), (B, 0, 6)]) and one != file_key([(B, 0, 5)])
    assert len(one) == 64


@pytest.mark.allow_log_warnings  # the changed file, named as it is dropped
def test_a_file_is_written_with_its_hash_and_one_that_changed_is_dropped(tmp_path):
    disk = DiskCache(tmp_path / "cache", 1 << 20)
    files = FileCache(disk)
    key = file_key([(A, 0, 8)])
    path = files.write(key, [b"abcd", memoryview(b"efgh")], 8)
    assert path.read_bytes() == b"abcdefgh" and os.getxattr(path, XATTR)
    assert disk.size == 8 and files.verify(key)
    with open(path, "r+b") as f:  # a byte flipped on disk
        f.write(b"X")
    assert not files.verify(key) and not files.has(key) and disk.size == 0


def test_a_short_write_leaves_nothing_under_the_files_name(tmp_path):
    from blobstore.errors import StoreUnavailable

    files = FileCache(DiskCache(tmp_path / "cache", 1 << 20))
    key = file_key([(A, 0, 8)])
    with pytest.raises(StoreUnavailable, match="7 bytes, expected 8"):
        files.write(key, [b"abcdefg"], 8)
    assert not files.has(key) and list((tmp_path / "cache" / ".tmp").iterdir()) == []


def test_a_file_is_made_only_once_the_kernel_is_quiet(tmp_path):
    """Making files takes CPU a start needs: the job waits while the kernel keeps asking
    (trio's clock is mocked: virtual seconds, no waiting)."""
    data = os.urandom(300 << 10)
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "big.bin").write_bytes(data)
    objects = MemoryStore()
    with open_source(str(tmp_path / "tree")) as src:
        push_tree(src, objects, parse_ref("t:1"))
    tree = FsTree(open_image(objects, "t:1")[1])
    ino = tree.lookup(tree.root, b"big.bin")
    disk = DiskCache(tmp_path / "cache", 1 << 30)
    for c in tree.manifest.chunks:  # every chunk on the node
        disk.put_stored(c.id, BlobStore(objects).get_stored(c.id))
    files, busy, asked = Materializer(disk), [True], [0]

    def idle() -> float:
        asked[0] += 1
        return 0.0 if busy[0] else math.inf

    files.wait_out(idle)

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(files.run)
            files.consider(tree, ino)
            for _ in range(600):  # a minute of requests
                await trio.sleep(QUIET)
            assert asked[0] >= 500  # the job kept asking
            assert files.made == 0 and files.ready(tree, ino) is None
            busy[0] = False
            while files.ready(tree, ino) is None:
                await trio.sleep(QUIET)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert files.made == 1 and files.ready(tree, ino).read_bytes() == data


def test_files_count_in_the_bound_and_go_by_unlink_keeping_an_open_ones_bytes(tmp_path):
    disk = DiskCache(tmp_path / "cache", 100)
    files = FileCache(disk)
    old, new = file_key([(A, 0, 60)]), file_key([(B, 0, 60)])
    files.write(old, [b"o" * 60], 60)
    with open(files.path(old), "rb") as reader:  # a process has it open
        os.utime(files.path(old), (1, 1))  # the least recently used
        files.write(new, [b"n" * 60], 60)  # over the bound: the old one goes
        assert not files.has(old) and files.has(new) and disk.size <= 90
        assert reader.read() == b"o" * 60  # unlinked, never truncated
    assert [p for p, _, _ in disk.entries()] == []  # entries() lists blobs only


class FakeKernel:
    """The two ioctls on /dev/fuse, as the kernel answers them."""

    def __init__(self, fail: int | None = None) -> None:
        self.next, self.open, self.fail = 1, {}, fail

    def __call__(self, fd, request, arg, mutate=False):
        if request == pt.BACKING_OPEN:
            if self.fail:
                raise OSError(self.fail, os.strerror(self.fail))
            id, self.next = self.next, self.next + 1
            self.open[id] = True
            return id
        assert request == pt.BACKING_CLOSE
        del self.open[int.from_bytes(arg, "little")]
        return 0


@pytest.fixture
def kernel(monkeypatch):
    fake = FakeKernel()
    monkeypatch.setattr(pt.fcntl, "ioctl", fake)
    return fake


def test_one_backing_id_per_inode_counted_and_closed_on_its_last_release(kernel, tmp_path):
    backing = tmp_path / "f"
    backing.write_bytes(b"x")
    p = Passthrough(why=None, session_fd=lambda: 99)
    first = p.open(7, backing)
    assert first == 1 and p.open(7, backing) == 1  # the second open reuses it
    assert p.open(8, backing) == 2 and p.opens == 3
    p.released(7, backing=True)
    assert kernel.open == {1: True, 2: True}  # one handle of inode 7 is still open
    p.released(7, backing=True)
    assert kernel.open == {2: True} and p.backing_ids() == 1


def test_a_file_open_the_normal_way_is_not_passed_through_until_it_is_closed(kernel, tmp_path):
    backing = tmp_path / "f"
    backing.write_bytes(b"x")
    p = Passthrough(why=None, session_fd=lambda: 99)
    p.opened_normally(7)  # the kernel would answer a passthrough open now with EIO
    assert p.open(7, backing) is None
    p.released(7, backing=False)
    assert p.open(7, backing) == 1


@pytest.mark.allow_log_warnings
def test_an_ioctl_that_fails_falls_back_and_one_the_kernel_refuses_turns_it_off(
        monkeypatch, tmp_path, caplog):
    backing = tmp_path / "f"
    backing.write_bytes(b"x")
    monkeypatch.setattr(pt.fcntl, "ioctl", FakeKernel(fail=errno.EINVAL))
    p = Passthrough(why=None, session_fd=lambda: 99)
    assert p.open(7, backing) is None and p.fallbacks == 1 and p.enabled
    monkeypatch.setattr(pt.fcntl, "ioctl", FakeKernel(fail=errno.EPERM))
    assert p.open(7, backing) is None and not p.enabled
    assert p.state().startswith("off: the kernel refused it")
    assert p.open(8, backing) is None and p.fallbacks == 2  # not asked again


def test_passthrough_says_why_it_is_off(monkeypatch):
    assert support("off") == "--passthrough off"
    monkeypatch.setattr(os, "uname", lambda: os.uname_result(
        ("Linux", "node", "6.1.0-18-amd64", "#1", "x86_64")))  # Debian 12's kernel
    assert "6.9 or later" in support("auto")
    assert Passthrough("off").state() == "off: --passthrough off"


# -- real mounts --------------------------------------------------------------------------------


def stats(thaw, mnt) -> dict:
    return json.loads(thaw("stats", str(mnt), "--json").stdout)


def materialized(thaw, mnt, path: Path, opens: int, data: bytes, read: bool = True) -> dict:
    """Open ``path`` until an open is passed through (the daemon makes or verifies the file
    in the background after a read, or an open); its bytes are right on every open that
    reads. The harness's bound, not an assertion on time."""
    deadline = time.monotonic() + 60
    while True:
        with open(path, "rb") as f:
            if read:
                assert f.read() == data
        s = stats(thaw, mnt)
        if s["passthrough_opens"] >= opens:
            return s
        assert time.monotonic() < deadline, s


def ready(thaw, mnt, files: int = 1) -> dict:
    """Wait until the mount has ``files`` files ready for passthrough; the harness's
    bound, not an assertion on time."""
    deadline = time.monotonic() + 60
    while (s := stats(thaw, mnt))["passthrough_files"] < files:
        assert time.monotonic() < deadline, s
    return s


@pytest.fixture
def big(thaw, tmp_path):
    tree = tmp_path / "tree"
    (tree / "lib").mkdir(parents=True)
    data = os.urandom(6 << 20)
    (tree / "lib" / "model.bin").write_bytes(data)
    (tree / "lib" / "small.txt").write_bytes(b"small\n")
    thaw("push", str(tree), "big:1")
    return tree, data


@pytest.mark.mount
def test_a_file_whose_bytes_are_on_the_node_is_read_and_mapped_without_the_daemon(
        thaw, big, tmp_path):
    tree, data = big
    mnt = tmp_path / "mnt"
    with Mounted(thaw, mnt, "mount", "big:1", str(mnt), "--cache-dir", str(tmp_path / "c")):
        path = mnt / "lib" / "model.bin"
        assert stats(thaw, mnt)["passthrough"] == "on"
        before = materialized(thaw, mnt, path, 1, data)
        with open(path, "rb") as f:  # a passthrough open: the kernel reads the backing file
            assert f.read() == data
            with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
                assert m[:] == data
        after = stats(thaw, mnt)
        assert after["passthrough_opens"] == before["passthrough_opens"] + 1
        for key in ("demand_fetches", "cache_hits", "coalesced_waits"):
            assert after[key] == before[key], key  # no read reached the daemon
        assert (mnt / "lib" / "small.txt").read_bytes() == b"small\n"  # the chunk path
    files = list((tmp_path / "c" / ".files").rglob("*"))
    assert [p.stat().st_size for p in files if p.is_file()] == [len(data)]


@pytest.mark.mount
def test_a_file_prefetched_whole_is_passed_through_on_its_first_open(thaw, big, tmp_path):
    """``--prefetch all`` brings every chunk, then the file is made: no read of it ever
    reaches the daemon."""
    tree, data = big
    mnt = tmp_path / "mnt"
    with Mounted(thaw, mnt, "mount", "big:1", str(mnt), "--cache-dir", str(tmp_path / "c"),
                 "--prefetch", "all"):
        before = ready(thaw, mnt)
        assert before["demand_fetches"] == 0 and before["passthrough_opens"] == 0
        with open(mnt / "lib" / "model.bin", "rb") as f:
            assert f.read() == data
        after = stats(thaw, mnt)
        assert after["passthrough_opens"] == 1
        for key in ("demand_fetches", "cache_hits", "coalesced_waits"):
            assert after[key] == before[key], key


@pytest.mark.mount
def test_passthrough_off_serves_every_read_itself(thaw, big, tmp_path):
    tree, data = big
    mnt = tmp_path / "mnt"
    with Mounted(thaw, mnt, "mount", "big:1", str(mnt), "--cache-dir", str(tmp_path / "c"),
                 "--passthrough", "off"):
        for _ in range(3):
            assert (mnt / "lib" / "model.bin").read_bytes() == data
        s = stats(thaw, mnt)
        assert s["passthrough"] == "off: --passthrough off" and s["passthrough_opens"] == 0
    assert not (tmp_path / "c" / ".files").exists()


@pytest.mark.mount
@pytest.mark.allow_log_warnings
def test_a_byte_flipped_in_a_materialized_file_is_never_served(thaw, big, tmp_path):
    """After a restart the first open is served by the chunks while the file is verified;
    the flipped file fails, is dropped and made again: the right bytes or EIO, never the
    flipped byte."""
    tree, data = big
    mnt, cache = tmp_path / "mnt", tmp_path / "c"
    args = ("mount", "big:1", str(mnt), "--cache-dir", str(cache))
    with Mounted(thaw, mnt, *args):
        materialized(thaw, mnt, mnt / "lib" / "model.bin", 1, data)
    (file,) = [p for p in (cache / ".files").rglob("*") if p.is_file()]
    with open(file, "r+b") as f:
        f.seek(12345)
        byte = f.read(1)
        f.seek(12345)
        f.write(bytes([byte[0] ^ 0xFF]))
    with Mounted(thaw, mnt, *args):
        for _ in range(5):
            assert (mnt / "lib" / "model.bin").read_bytes() == data
        materialized(thaw, mnt, mnt / "lib" / "model.bin", 1, data)  # made again
    assert file.read_bytes() == data


@pytest.mark.mount
def test_an_open_file_keeps_its_bytes_when_its_backing_file_is_evicted(thaw, big, tmp_path):
    tree, data = big
    mnt, cache = tmp_path / "mnt", tmp_path / "c"
    with Mounted(thaw, mnt, "mount", "big:1", str(mnt), "--cache-dir", str(cache)):
        path = mnt / "lib" / "model.bin"
        materialized(thaw, mnt, path, 1, data)
        with open(path, "rb") as f:
            head = f.read(1 << 20)
            DiskCache(cache, 1 << 40).evict(to=0)  # another process empties the cache
            assert not list((cache / ".files").rglob("*.*")) and head == data[:1 << 20]
            assert head + f.read() == data
        assert path.read_bytes() == data  # from the store again, through the chunk path


@pytest.mark.mount
def test_a_file_open_the_normal_way_keeps_every_open_normal_until_it_is_closed(
        thaw, big, tmp_path):
    """A normal open and a passthrough open of one file at once fail with EIO in the
    kernel: while one handle reads the chunk path, later opens do too."""
    tree, data = big
    mnt = tmp_path / "mnt"
    with Mounted(thaw, mnt, "mount", "big:1", str(mnt), "--cache-dir", str(tmp_path / "c")):
        path = mnt / "lib" / "model.bin"
        with open(path, "rb") as held:  # the first open: normal, its chunks not here yet
            assert held.read() == data
            opens = stats(thaw, mnt)["passthrough_opens"]
            for _ in range(3):  # materialized meanwhile, perhaps: still no mixing
                assert path.read_bytes() == data
            assert stats(thaw, mnt)["passthrough_opens"] == opens
            held.seek(0)
            assert held.read() == data
        materialized(thaw, mnt, path, opens + 1, data)


@pytest.mark.mount
def test_hints_recorded_from_passthrough_opens_replay_on_another_node(thaw, big, tmp_path):
    """The daemon sees no read of a passed-through file: its open records the file's
    chunks as read, so another node's mount prefetches them."""
    from blobstore.image.hints import load_hints
    from blobstore.image.images import open_image
    from blobstore.store.local import LocalStore

    tree, data = big
    mnt, cache = tmp_path / "mnt", tmp_path / "c"
    with Mounted(thaw, mnt, "mount", "big:1", str(mnt), "--cache-dir", str(cache),
                 "--no-hints"):
        materialized(thaw, mnt, mnt / "lib" / "model.bin", 1, data)
    with Mounted(thaw, mnt, "mount", "big:1", str(mnt), "--cache-dir", str(cache),
                 "--hints", "pt"):  # this start: opens (the file is verified), no read
        pid = mount_pid(mnt)
        materialized(thaw, mnt, mnt / "lib" / "model.bin", 1, data, read=False)
        assert (mnt / "lib" / "model.bin").read_bytes() == data  # passed through
        assert stats(thaw, mnt)["demand_fetches"] == 0
    wait_for_exit(pid)  # it saves its hints as it unmounts
    objects = LocalStore(thaw.store[len("file://"):])
    mid, manifest = open_image(objects, "big:1")
    spans = [s.chunk for s in manifest.entry("lib/model.bin").spans]
    assert load_hints(objects, mid, "pt")[:len(spans)] == spans
    other = tmp_path / "mnt2"
    with Mounted(thaw, other, "mount", "big:1", str(other), "--cache-dir",
                 str(tmp_path / "c2"), "--hints", "pt"):
        s = ready(thaw, other)  # the hinted file, made once its prefetch is done
        assert s["prefetches"] >= len(spans) and s["demand_fetches"] == 0
        assert (other / "lib" / "model.bin").read_bytes() == data  # its first open
        assert stats(thaw, other)["passthrough_opens"] == 1
