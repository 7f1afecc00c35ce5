"""The node's disk cache and the read-through tier in front of a store."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from blobstore.errors import BlobCorrupt, BlobNotFound, StoreUnavailable
from blobstore.store.blobs import BlobStore, blob_key
from blobstore.store.codec import encode_blob
from blobstore.store.digest import blob_id
from blobstore.store.diskcache import DiskCache
from blobstore.store.memory import MemoryStore
from blobstore.store.tiers import node_tiers

from .support import tmpfs


def blob(n: int, size: int = 10_000) -> tuple[str, bytes]:
    data = os.urandom(8) + bytes([n]) * size
    return blob_id(data), data


def test_round_trip_and_restart(tmp_path):
    cache = DiskCache(tmp_path, 1 << 20)
    id, data = blob(1)
    cache.put_stored(id, encode_blob(data))
    assert cache.get(id) == data
    again = DiskCache(tmp_path, 1 << 20)  # a restarted daemon
    assert again.get(id) == data and again.size == cache.size
    with pytest.raises(BlobNotFound):
        again.get(blob(2)[0])


def test_evicts_least_recently_used(tmp_path):
    cache = DiskCache(tmp_path, 50_000)
    ids = []
    for n in range(4):
        id, data = blob(n)
        cache.put_stored(id, b"\x00" + data)  # stored raw, 10 KB each
        ids.append(id)
        os.utime(cache._path(id), ns=(n * 10**9, n * 10**9))
    cache.get(ids[0])  # now the most recent of the first four
    for n in range(4, 6):
        id, data = blob(n)
        cache.put_stored(id, b"\x00" + data)
        ids.append(id)
    assert cache.size <= 50_000
    assert [cache.has(i) for i in ids] == [True, False, False, True, True, True]


@pytest.mark.allow_log_warnings
def test_corrupt_entry_is_dropped_and_refetched(tmp_path, caplog):
    upstream = BlobStore(MemoryStore())
    id, _ = upstream.put(b"real bytes" * 1000)
    tiers = node_tiers(upstream, DiskCache(tmp_path, 1 << 20))
    assert tiers.stack.get(id) == b"real bytes" * 1000
    tiers.disk.inner._path(id).write_bytes(encode_blob(b"rotten"))
    assert tiers.stack.get(id) == b"real bytes" * 1000
    assert tiers.store.stats.chunks == 2 and tiers.disk.stats.chunks == 0
    assert tiers.stack.get(id) == b"real bytes" * 1000
    assert tiers.disk.stats.chunks == 1
    assert "dropping corrupt cache entry" in caplog.text


def test_corrupt_upstream_is_never_cached(tmp_path):
    objects = MemoryStore()
    id = blob_id(b"good")
    objects.put(blob_key(id), encode_blob(b"evil"))
    tiers = node_tiers(BlobStore(objects), DiskCache(tmp_path, 1 << 20))
    with pytest.raises(BlobCorrupt):
        tiers.stack.get(id)
    assert not tiers.disk.has(id)


@pytest.mark.allow_log_warnings
def test_a_full_cache_disk_is_a_warning_not_a_failed_read(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    try:
        upstream = BlobStore(MemoryStore())
        data = os.urandom(200_000)
        id, _ = upstream.put(data)
        tiers = node_tiers(upstream, DiskCache(mnt, 1 << 30)).stack
        assert tiers.get(id) == data
        assert [p.name for p in mnt.rglob("*") if p.is_file()] == [".fill-locks"]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_store_down_propagates(tmp_path):
    class Down(MemoryStore):
        def get(self, key):
            raise StoreUnavailable("s3://x: connection refused")

    tiers = node_tiers(BlobStore(Down()), DiskCache(tmp_path, 1 << 20))
    with pytest.raises(StoreUnavailable):
        tiers.stack.get("a" * 64)
    assert tiers.store.stats.errors == 1


WRITER = """
import os, sys
sys.path.insert(0, {repo!r})
from blobstore.store.diskcache import DiskCache
from blobstore.store.codec import encode_blob
from blobstore.store.digest import blob_id
cache = DiskCache({root!r}, 300_000)
for i in range(60):
    data = os.urandom(10_000)
    cache.put_stored(blob_id(data), b"\\x00" + data)
"""


def test_several_processes_share_one_bound(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = WRITER.format(repo=repo, root=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(4)]
    assert [p.wait() for p in procs] == [0, 0, 0, 0]
    cache = DiskCache(tmp_path, 300_000)
    assert cache.size <= 300_000 + 4 * 10_001  # each writer may overshoot by its last entry
    assert not list((tmp_path / ".tmp").iterdir())


@pytest.mark.parametrize("data", [os.urandom(50_000), b"compressible " * 5000])
def test_read_into_decodes_in_place(tmp_path, data):
    cache = DiskCache(tmp_path, 1 << 20)
    id = blob_id(data)
    cache.put_stored(id, encode_blob(data))
    dest = bytearray(len(data))
    cache.read_into(id, memoryview(dest))
    assert bytes(dest) == data
    with pytest.raises(BlobNotFound):
        cache.read_into(blob_id(b"other"), memoryview(bytearray(5)))


@pytest.mark.allow_log_warnings
@pytest.mark.parametrize("damage", [lambda s: s[:-10], lambda s: s[:1] + bytes(len(s) - 1),
                                    lambda s: b"\x09" + s])
def test_read_into_drops_damaged_entries(tmp_path, damage):
    cache = DiskCache(tmp_path, 1 << 20)
    data = b"compressible " * 5000
    id = blob_id(data)
    cache.put_stored(id, damage(encode_blob(data)))
    with pytest.raises(BlobNotFound):
        cache.read_into(id, memoryview(bytearray(len(data))))
    assert not cache.has(id)


def test_read_through_read_into_fills_the_cache(tmp_path):
    upstream = BlobStore(MemoryStore())
    data = os.urandom(30_000)
    id, _ = upstream.put(data)
    tiers = node_tiers(upstream, DiskCache(tmp_path, 1 << 20))
    for _tier in ("store", "disk"):  # the first read fills the cache, the second hits it
        dest = bytearray(len(data))
        tiers.stack.read_into(id, memoryview(dest))
        assert bytes(dest) == data
    assert tiers.store.stats.chunks == 1 and tiers.disk.stats.chunks == 1
    with pytest.raises(BlobCorrupt):
        tiers.stack.read_into(id, memoryview(bytearray(10)))


@pytest.mark.allow_log_warnings
def test_a_cache_on_a_full_file_system_evicts_and_recovers(tmp_path):
    """The bound is larger than the disk: a write that hits ENOSPC makes room and lands."""
    with tmpfs(tmp_path / "tiny", "2m") as mnt:
        cache = DiskCache(mnt, 1 << 30)
        for _ in range(40):  # ~4 MB of incompressible entries into 2 MB
            data = os.urandom(100_000)
            id = blob_id(data)
            cache.put_stored(id, encode_blob(data))
            assert cache.get(id) == data  # every write landed
        assert 0 < cache.size <= 2 << 20


def test_opening_a_cache_sweeps_temporaries_a_killed_writer_left(tmp_path):
    cache = DiskCache(tmp_path, 1 << 20)
    id, data = blob(1)
    cache.put_stored(id, encode_blob(data))
    old, fresh = tmp_path / ".tmp" / "old-entry", tmp_path / ".tmp" / "fresh-entry"
    for p in (old, fresh):
        p.write_bytes(b"half an entry")
    os.utime(old, (os.path.getmtime(old) - 7200,) * 2)
    again = DiskCache(tmp_path, 1 << 20)
    assert not old.exists() and fresh.exists()  # a live writer's may be in progress
    assert again.size == len(encode_blob(data)) and again.get(id) == data


def test_filling_a_chunk_locks_it_against_other_threads_and_processes(tmp_path):
    """The fill lock of a chunk is byte id[:4] of one file: another open of it (another
    thread's, another process's) finds it held while it is, and free after."""
    from blobstore.store.rangelocks import RangeLocks

    cache = DiskCache(tmp_path, 1 << 20)
    id = blob_id(b"x")
    slot, next_slot = int(id[:4], 16), (int(id[:4], 16) + 1) % 65536
    locks = RangeLocks(tmp_path / ".fill-locks")

    def held_seen_from_a_thread(k: int) -> bool:
        seen = []
        t = threading.Thread(target=lambda: seen.append(locks.held_elsewhere(k)))
        t.start()
        t.join()
        return seen[0]

    probe = ("import fcntl, os, struct, sys\n"
             "fd = os.open(sys.argv[1], os.O_RDWR)\n"
             "lock = struct.pack('hhqqi4x', fcntl.F_WRLCK, 0, int(sys.argv[2]), 1, 0)\n"
             "try:\n"
             "    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, lock)\n"
             "except OSError:\n"
             "    sys.exit(1)\n")

    def free_in_another_process(k: int) -> bool:
        return subprocess.run([sys.executable, "-c", probe, str(tmp_path / ".fill-locks"),
                               str(k)]).returncode == 0

    with cache.fill_lock(id):
        assert held_seen_from_a_thread(slot) and not free_in_another_process(slot)
        assert not held_seen_from_a_thread(next_slot)  # another chunk's lock is free
        assert free_in_another_process(next_slot)
    assert not held_seen_from_a_thread(slot) and free_in_another_process(slot)
    assert [p.name for p in tmp_path.iterdir()] == [".fill-locks"]  # no file per lock


def test_a_cache_whose_lock_file_cannot_be_opened_fills_unlocked(tmp_path):
    cache = DiskCache(tmp_path, 1 << 20)
    (tmp_path / ".fill-locks").mkdir()  # not a file: opening it for writing fails
    upstream = BlobStore(MemoryStore())
    id, _ = upstream.put(b"still served")
    assert node_tiers(upstream, cache).stack.get(id) == b"still served"
