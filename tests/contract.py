"""``ObjectStoreContract``: the behaviour every object store must have, as a pytest base class.

A backend's test subclasses it and provides two fixtures: ``store`` (the store under test,
empty) and ``raw`` (a ``RawAccess`` that reads and writes the same objects without going
through the store), so the read path and the write path are tested separately.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

import pytest

from blobstore.errors import NotFound
from blobstore.store.base import ObjectStore


class RawAccess(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes | None: ...


class ObjectStoreContract:
    def test_get_missing_is_not_found(self, store: ObjectStore) -> None:
        with pytest.raises(NotFound, match=str(store).split("://")[0]):
            store.get("blobs/aa/missing")

    def test_reads_what_was_written_outside(self, store: ObjectStore, raw: RawAccess) -> None:
        raw.put("refs/x/y", b"outside")
        assert store.get("refs/x/y") == b"outside"
        assert store.has("refs/x/y")
        assert store.size("refs/x/y") == 7

    def test_writes_are_seen_outside(self, store: ObjectStore, raw: RawAccess) -> None:
        store.put("blobs/ab/abc", b"\x00\x01payload")
        assert raw.get("blobs/ab/abc") == b"\x00\x01payload"

    def test_prepare_may_come_first_and_changes_nothing(self, store: ObjectStore) -> None:
        store.prepare()
        store.put("refs/a/b", b"x")
        store.prepare()  # again, after use
        assert store.get("refs/a/b") == b"x" and list(store.list("refs/")) == ["refs/a/b"]

    def test_put_is_idempotent_and_overwrites(self, store: ObjectStore) -> None:
        store.put("refs/n/t", b"one")
        store.put("refs/n/t", b"one")
        store.put("refs/n/t", b"two")
        assert store.get("refs/n/t") == b"two"

    def test_empty_and_large_objects(self, store: ObjectStore) -> None:
        big = bytes(range(256)) * (5 * 4096 + 3)
        store.put("blobs/00/empty", b"")
        store.put("blobs/00/big", big)
        assert store.get("blobs/00/empty") == b""
        assert store.size("blobs/00/empty") == 0
        assert store.get("blobs/00/big") == big

    def test_has_and_size_of_missing(self, store: ObjectStore) -> None:
        assert not store.has("blobs/aa/nothing")
        with pytest.raises(NotFound):
            store.size("blobs/aa/nothing")

    def test_delete(self, store: ObjectStore) -> None:
        store.put("refs/a/b", b"x")
        store.delete("refs/a/b")
        store.delete("refs/a/b")  # twice is fine
        assert not store.has("refs/a/b")

    def test_delete_many(self, store: ObjectStore) -> None:
        keys = [f"many/{n:04d}" for n in range(1005)]  # past one S3 batch
        for key in keys[:1003]:
            store.put(key, b"x")
        store.put("other/k", b"y")
        store.delete_many(keys)  # the last two were never there
        store.delete_many([])
        assert not store.has("many/0000") and not store.has("many/1002")
        assert list(store.list("many/")) == [] and store.has("other/k")

    def test_list_by_prefix(self, store: ObjectStore) -> None:
        for key in ("blobs/aa/1", "blobs/ab/2", "refs/img/latest", "refs/img/v2"):
            store.put(key, b"x")
        assert sorted(store.list("refs/")) == ["refs/img/latest", "refs/img/v2"]
        assert sorted(store.list("blobs/")) == ["blobs/aa/1", "blobs/ab/2"]
        assert len(list(store.list())) == 4
        assert list(store.list("hints/")) == []

    @pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", "a/.hidden",
                                     "a\\b", "a/b\n"])
    def test_rejects_bad_keys(self, store: ObjectStore, key: str) -> None:
        with pytest.raises(ValueError):
            store.put(key, b"x")

    def test_concurrent_writers_of_one_key(self, store: ObjectStore) -> None:
        data = b"same bytes" * 1000
        errors: list[BaseException] = []

        def write() -> None:
            try:
                for _ in range(5):
                    store.put("blobs/cc/same", data)
                    assert store.get("blobs/cc/same") == data
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=write) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert list(store.list("blobs/")) == ["blobs/cc/same"]

    def test_str_names_the_store(self, store: ObjectStore) -> None:
        assert "://" in str(store)

    def test_listing_gives_sizes_and_the_stores_modification_times(
            self, store: ObjectStore) -> None:
        before = time.time()
        store.put("blobs/aa/one", b"12345")
        store.put("blobs/aa/two", b"")
        infos = {o.key: o for o in store.list_info("blobs/")}
        assert sorted(infos) == ["blobs/aa/one", "blobs/aa/two"]
        assert infos["blobs/aa/one"].size == 5 and infos["blobs/aa/two"].size == 0
        for o in infos.values():  # the store's clock; this machine's, within a minute
            assert before - 60 < o.mtime < time.time() + 60
        assert dict(store.list_sizes("blobs/")) == {"blobs/aa/one": 5, "blobs/aa/two": 0}

    def test_a_key_deleted_while_listing_hides_no_other_key(self, store: ObjectStore) -> None:
        # The collector decides from one listing what the store holds: a listing that ended
        # early at a key removed meanwhile would condemn, and in time delete, what it hid.
        for n in range(12):
            store.put(f"blobs/aa/k{n:02}", b"x")
        order = [o.key for o in store.list_info("blobs/")]
        listing = store.list_info("blobs/")
        first = next(listing).key
        store.delete(order[1])  # the next one, as the first listing gave them
        seen = {first, *(o.key for o in listing)}
        assert seen >= set(order) - {order[1]}

    def test_create_writes_only_if_absent(self, store: ObjectStore) -> None:
        assert store.create("gc/lock", b"first") is True
        assert store.create("gc/lock", b"second") is False
        assert store.get("gc/lock") == b"first"
        store.delete("gc/lock")
        assert store.create("gc/lock", b"third") is True
        assert store.get("gc/lock") == b"third"
        assert [o.key for o in store.list_info("gc/")] == ["gc/lock"]

    def test_of_racing_creates_exactly_one_wins(self, store: ObjectStore) -> None:
        start = threading.Barrier(8)
        won: list[int] = []
        errors: list[BaseException] = []

        def create(i: int) -> None:
            try:
                start.wait()
                if store.create("gc/race", f"holder {i}".encode()):
                    won.append(i)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert len(won) == 1
        assert store.get("gc/race") == f"holder {won[0]}".encode()


class BlobTierContract:
    """What every tier and every stack of tiers answers (``blobstore.store.tiers.BlobTier``).

    A test subclasses it and provides ``tier`` (the tier or stack under test, empty) and
    ``below`` (a function ``(id, stored)`` that writes a stored blob into the lowest layer,
    bypassing the tier, so that reading and writing are tested apart)."""

    def test_reads_a_blob_written_below(self, tier, below) -> None:
        from blobstore.store.codec import encode_blob
        from blobstore.store.digest import blob_id

        for data in (b"compressible " * 3000, bytes(range(256)) * 40):
            id, stored = blob_id(data), encode_blob(data)
            below(id, stored)
            assert tier.get(id) == data
            got = tier.fetch(id)
            assert got.data == data
            dest = bytearray(len(data))
            tier.read_into(id, memoryview(dest))
            assert bytes(dest) == data
            assert tier.has(id) and tier.stored_size(id) == len(stored)
            assert tier.get_stored(id) == stored

    def test_a_missing_blob_is_not_found_everywhere(self, tier) -> None:
        from blobstore.errors import BlobNotFound

        missing = "ab" * 32
        assert not tier.has(missing)
        for call in (lambda: tier.get(missing), lambda: tier.get_stored(missing),
                     lambda: tier.stored_size(missing),
                     lambda: tier.read_into(missing, memoryview(bytearray(3)))):
            with pytest.raises(BlobNotFound):
                call()

    def test_wrong_bytes_are_never_served(self, tier, below) -> None:
        from blobstore.errors import BlobCorrupt, BlobNotFound
        from blobstore.store.codec import encode_blob
        from blobstore.store.digest import blob_id

        id = blob_id(b"the real bytes")
        below(id, encode_blob(b"other bytes!!!"))
        with pytest.raises((BlobCorrupt, BlobNotFound)):
            tier.get(id)
        with pytest.raises((BlobCorrupt, BlobNotFound)):
            tier.read_into(id, memoryview(bytearray(14)))

    def test_sizes_are_bounded(self, tier, below) -> None:
        from blobstore.errors import BlobCorrupt
        from blobstore.store.codec import encode_blob
        from blobstore.store.digest import blob_id

        data = b"x" * 10_000
        id = blob_id(data)
        below(id, encode_blob(data))
        with pytest.raises(BlobCorrupt):
            tier.get(id, max_size=100)
        with pytest.raises(BlobCorrupt):
            tier.read_into(id, memoryview(bytearray(100)))
        assert tier.get(id) == data  # a lying size does not cost a good copy

    def test_put_stored_then_read(self, tier) -> None:
        from blobstore.store.codec import encode_blob
        from blobstore.store.digest import blob_id

        data = b"written through the tier" * 100
        id = blob_id(data)
        tier.put_stored(id, encode_blob(data))
        assert tier.get(id) == data
