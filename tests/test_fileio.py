"""Whole-file reads and writes of the chunk path, and the disk cache's directories."""

from __future__ import annotations

import shutil

import pytest

from blobstore.store.blobs import BlobStore
from blobstore.store.diskcache import DiskCache
from blobstore.store.fileio import read_whole, write_new
from blobstore.store.memory import MemoryStore


def test_read_whole_reads_any_size_and_says_what_is_wrong_as_open_does(tmp_path):
    for size in (0, 1, 4095, 1 << 20):
        path = tmp_path / f"f{size}"
        path.write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
        assert read_whole(path) == path.read_bytes()
    with pytest.raises(FileNotFoundError):
        read_whole(tmp_path / "missing")
    with pytest.raises(IsADirectoryError):
        read_whole(tmp_path)


def test_write_new_never_overwrites(tmp_path):
    write_new(tmp_path / "a", memoryview(b"abc"), fsync=True)
    assert (tmp_path / "a").read_bytes() == b"abc"
    with pytest.raises(FileExistsError):
        write_new(tmp_path / "a", b"xyz")
    assert (tmp_path / "a").read_bytes() == b"abc"


def test_the_disk_cache_makes_its_directories_again_if_they_go(tmp_path):
    store = BlobStore(MemoryStore())
    ids = [store.put(bytes([i]) * 1000)[0] for i in range(3)]
    cache = DiskCache(tmp_path / "c", 1 << 20)
    cache.put_stored(ids[0], store.get_stored(ids[0]))
    shutil.rmtree(tmp_path / "c" / ids[0][:2])
    shutil.rmtree(tmp_path / "c" / ".tmp")
    for id in ids:
        cache.put_stored(id, store.get_stored(id))
        assert cache.get(id) == store.get(id)
    assert not list((tmp_path / "c" / ".tmp").iterdir())
