"""Every tier and every stack against the one contract, including a stack in an order the
mount does not use, and the S3 store at the bottom of one."""

from __future__ import annotations

import uuid

import pytest

from blobstore.store.blobs import BlobStore, blob_key
from blobstore.store.diskcache import DiskCache
from blobstore.store.local import LocalStore
from blobstore.store.memory import MemoryStore
from blobstore.store.tiers import Counting, ReadThrough, Verifying, node_tiers

from .contract import BlobTierContract


def _objects_below(objects):
    return lambda id, stored: objects.put(blob_key(id), stored)


class TestBlobStoreOverMemory(BlobTierContract):
    @pytest.fixture
    def objects(self):
        return MemoryStore()

    @pytest.fixture
    def tier(self, objects):
        return BlobStore(objects)

    @pytest.fixture
    def below(self, objects):
        return _objects_below(objects)


class TestBlobStoreOverFiles(TestBlobStoreOverMemory):
    @pytest.fixture
    def objects(self, tmp_path):
        return LocalStore(tmp_path / "store")


@pytest.mark.allow_log_warnings
class TestDiskCache(BlobTierContract):
    @pytest.fixture
    def tier(self, tmp_path):
        return DiskCache(tmp_path / "cache", 1 << 30)

    @pytest.fixture
    def below(self, tier):
        def write(id, stored):
            path = tier.root / id[:2] / id
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(stored)
        return write


class TestCounting(TestBlobStoreOverMemory):
    @pytest.fixture
    def tier(self, objects):
        return Counting(BlobStore(objects), "store")


@pytest.mark.allow_log_warnings
class TestNodeStack(TestBlobStoreOverMemory):
    @pytest.fixture
    def tier(self, objects, tmp_path):
        return node_tiers(BlobStore(objects), DiskCache(tmp_path / "cache", 1 << 30)).stack


@pytest.mark.allow_log_warnings
class TestUnusualOrder(TestBlobStoreOverMemory):
    """Verify outside a cache outside a counting store over memory: not the mount's order."""

    @pytest.fixture
    def tier(self, objects, tmp_path):
        return Verifying(ReadThrough(Counting(BlobStore(objects), "store"),
                                     DiskCache(tmp_path / "cache", 1 << 30)))


@pytest.mark.s3
@pytest.mark.allow_log_warnings
class TestNodeStackOverS3(TestBlobStoreOverMemory):
    @pytest.fixture
    def objects(self, s3_env):
        from blobstore.store.url import open_store

        return open_store(f"s3://thaw/tiers-{uuid.uuid4().hex[:8]}")

    @pytest.fixture
    def tier(self, objects, tmp_path):
        return node_tiers(BlobStore(objects), DiskCache(tmp_path / "cache", 1 << 30)).stack


def test_a_read_through_counts_each_tier_and_fills_the_cache(tmp_path):
    objects = MemoryStore()
    store = BlobStore(objects)
    id, _ = store.put(b"some bytes" * 100)
    tiers = node_tiers(store, DiskCache(tmp_path, 1 << 20))
    for _ in range(3):
        assert tiers.stack.get(id) == b"some bytes" * 100
    assert tiers.store.stats.snapshot().chunks == 1
    assert tiers.disk.stats.snapshot().chunks == 2


def test_a_tier_says_its_least_recent_latency_and_chunk_size_once_it_has_seen_enough():
    from blobstore.store.tiers import RECENT, TierStats

    stats = TierStats("store")
    for i in range(RECENT // 8 - 1):
        stats.record(100, 1000, 0.020 + i / 1000)
    assert stats.recent() is None  # too few to say
    stats.record(100, 3000, 0.5)  # a slow one (queued behind others) does not count
    assert stats.recent() == (0.020, (1000 * (RECENT // 8 - 1) + 3000) / (RECENT // 8))
    for _ in range(RECENT):
        stats.record(100, 2000, 0.001)  # the store got near: only the recent ones count
    assert stats.recent() == (0.001, 2000)
