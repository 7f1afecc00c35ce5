"""Every object store against the one contract; backend-specific failures after it."""

from __future__ import annotations

import os
import subprocess
import uuid

import boto3
import pytest

from blobstore.errors import (
    BlobCorrupt,
    BlobNotFound,
    StoreConfigError,
    StoreUnavailable,
)
from blobstore.store.blobs import BlobStore
from blobstore.store.codec import RAW, ZSTD, decode_blob, encode_blob
from blobstore.store.digest import blob_id, is_blob_id
from blobstore.store.local import LocalStore
from blobstore.store.memory import MemoryStore
from blobstore.store.s3 import S3Store
from blobstore.store.url import default_store_url, open_store

from .contract import ObjectStoreContract


class TestMemoryStore(ObjectStoreContract):
    @pytest.fixture
    def store(self):
        return MemoryStore("test")

    @pytest.fixture
    def raw(self, store):
        class Raw:
            def put(self, key, data):
                store._objects[key] = data

            def get(self, key):
                return store._objects.get(key)

        return Raw()


class TestLocalStore(ObjectStoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        return LocalStore(tmp_path / "store")

    @pytest.fixture
    def raw(self, tmp_path):
        root = tmp_path / "store"

        class Raw:
            def put(self, key, data):
                (root / key).parent.mkdir(parents=True, exist_ok=True)
                (root / key).write_bytes(data)

            def get(self, key):
                p = root / key
                return p.read_bytes() if p.exists() else None

        return Raw()


@pytest.mark.s3
class TestS3Store(ObjectStoreContract):
    @pytest.fixture
    def store(self, s3_env):
        return S3Store("thaw", f"contract-{uuid.uuid4().hex[:8]}")

    @pytest.fixture
    def raw(self, store, s3_env):
        client = boto3.client("s3")

        class Raw:
            def put(self, key, data):
                client.put_object(Bucket="thaw", Key=store.prefix + key, Body=data)

            def get(self, key):
                try:
                    return client.get_object(Bucket="thaw", Key=store.prefix + key)["Body"].read()
                except client.exceptions.NoSuchKey:
                    return None

        return Raw()


# -- blobs on top of a store -----------------------------------------------------------------


def test_blob_round_trip_and_verification():
    blobs = BlobStore(MemoryStore())
    data = b"chunk " * 10_000
    id, stored = blobs.put(data)
    assert is_blob_id(id) and id == blob_id(data)
    assert stored < len(data)
    assert blobs.get(id) == data
    assert list(blobs.iter_ids()) == [id]


def test_corrupt_blob_is_never_served():
    objects = MemoryStore()
    blobs = BlobStore(objects)
    id, _ = blobs.put(b"x" * 1000)
    key = f"blobs/{id[:2]}/{id}"
    objects.put(key, encode_blob(b"y" * 1000))
    with pytest.raises(BlobCorrupt, match="does not hash"):
        blobs.get(id)
    objects.put(key, b"\x01not zstd")
    with pytest.raises(BlobCorrupt, match="zstd"):
        blobs.get(id)
    objects.put(key, b"\x07")
    with pytest.raises(BlobCorrupt, match="type byte"):
        blobs.get(id)
    with pytest.raises(BlobNotFound):
        blobs.get("0" * 64)


def test_incompressible_data_is_stored_raw_and_bombs_are_bounded():
    noise = os.urandom(4096)
    assert encode_blob(noise)[0] == RAW
    zeros = encode_blob(b"\0" * (1 << 20))
    assert zeros[0] == ZSTD and len(zeros) < 1000
    with pytest.raises(BlobCorrupt, match="limit"):
        decode_blob(zeros, max_size=1000)


# -- opening stores and their failures -------------------------------------------------------


def test_open_store_urls(tmp_path, monkeypatch):
    assert isinstance(open_store(f"file://{tmp_path}"), LocalStore)
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    with pytest.raises(StoreConfigError, match="unknown store URL"):
        open_store("ftp://x/y")
    with pytest.raises(StoreConfigError, match="absolute path"):
        open_store("file://relative/dir")
    with pytest.raises(StoreConfigError, match="not a valid bucket"):
        open_store("s3://A_B/x")
    monkeypatch.delenv("THAW_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_store_url() == f"file://{tmp_path}/thaw/store"
    monkeypatch.setenv("THAW_STORE", "s3://b/p")
    assert default_store_url() == "s3://b/p"


def test_local_store_on_a_file_is_a_config_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreConfigError, match="not a directory"):
        LocalStore(tmp_path / "f")


@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_full_disk_is_unavailable_and_leaves_no_temporary(tiny_fs):
    store = LocalStore(tiny_fs / "store")
    store.put("blobs/aa/small", b"x" * 1000)
    with pytest.raises(StoreUnavailable, match="no space left"):
        store.put("blobs/aa/big", os.urandom(200_000))
    assert sorted(store.list()) == ["blobs/aa/small"]
    assert [p.name for p in (tiny_fs / "store" / "blobs" / "aa").iterdir()] == ["small"]


@pytest.mark.s3
def test_dead_s3_endpoint_is_unavailable(monkeypatch):
    from .seaweed import free_ports

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_ports(1)[0]}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    store = open_store("s3://thaw/x")
    with pytest.raises(StoreUnavailable, match=r"s3://thaw/x \(http://127.0.0.1"):
        store.get("refs/a/b")


@pytest.mark.s3
def test_missing_bucket_is_a_config_error(s3_env):
    store = open_store("s3://no-such-bucket-here/x")
    with pytest.raises(StoreConfigError, match="no-such-bucket-here"):
        store.put("refs/a/b", b"x")


def test_a_file_store_keeps_temporaries_in_one_hidden_place_and_sweeps_old_ones(tmp_path):
    from blobstore.store.local import LocalStore

    store = LocalStore(tmp_path)
    store.put("refs/a/b", b"x")
    tmp = tmp_path / ".tmp"
    assert tmp.is_dir() and not list(tmp.iterdir())
    old = tmp / "1234-left-by-kill-9"
    old.write_bytes(b"part")
    os.utime(old, (os.path.getmtime(old) - 7200,) * 2)
    fresh = tmp / "5678-in-progress"
    fresh.write_bytes(b"part")
    assert list(store.list()) == ["refs/a/b"]
    LocalStore(tmp_path).put("refs/a/c", b"y")  # a new process's first write sweeps
    assert not old.exists() and fresh.exists()
