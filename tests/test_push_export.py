"""Push and export in-process: metadata fidelity, dedup, atomicity, failures."""

from __future__ import annotations

import io
import os
import shutil
import subprocess

import pytest

from blobstore.blobs import BlobStore, blob_key
from blobstore.codec import encode_blob
from blobstore.errors import BlobCorrupt, BlobNotFound, StoreUnavailable
from blobstore.images import open_image
from blobstore.local import LocalStore
from blobstore.memory import MemoryStore
from blobstore.refs import Refs, parse_ref
from indexer.chunker import ChunkerParams
from indexer.errors import ExportError
from indexer.export import export_tree, write_file
from indexer.push import push_tree
from indexer.sources import open_source

from .conftest import rsync_diff


def push(path, objects, ref="img:v1", **kw):
    with open_source(str(path)) as tree:
        return push_tree(tree, objects, parse_ref(ref), **kw)


def export(objects, ref, dest):
    _, m = open_image(objects, ref)
    export_tree(m, BlobStore(objects), str(dest))


@pytest.mark.parametrize("params", [ChunkerParams(), ChunkerParams("fixed", 256 << 10),
                                    ChunkerParams("fastcdc", 64 << 10)])
def test_directory_round_trip_keeps_every_kind_of_metadata(rich_tree, tmp_path, params):
    objects = LocalStore(tmp_path / "store")
    result = push(rich_tree, objects, params=params)
    assert result.files == 11 and 0 < result.new_chunks <= result.chunks
    export(objects, "img:v1", tmp_path / "out")
    assert rsync_diff(rich_tree, tmp_path / "out") == ""
    caps = os.getxattr(tmp_path / "out" / "bin" / "ping", "security.capability")
    assert caps == os.getxattr(rich_tree / "bin" / "ping", "security.capability")


def test_gnu_tar_round_trip(rich_tree, tmp_path):
    tar = tmp_path / "rich.tar"
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--sparse", "--numeric-owner",
                    "-cpf", str(tar), "-C", str(rich_tree), "."], check=True)
    gnu = tmp_path / "gnu"
    gnu.mkdir()
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf",
                    str(tar), "-C", str(gnu)], check=True)
    objects = MemoryStore()
    push(tar, objects)
    export(objects, "img:v1", tmp_path / "out")
    assert rsync_diff(gnu, tmp_path / "out") == ""
    assert os.stat(tmp_path / "out" / "sparse.img").st_size == 8 << 20


def test_second_push_uploads_nothing_and_a_change_uploads_little(rich_tree, tmp_path):
    objects = MemoryStore()
    first = push(rich_tree, objects, params=ChunkerParams("fastcdc", 64 << 10))
    second = push(rich_tree, objects, params=ChunkerParams("fastcdc", 64 << 10))
    assert second.manifest == first.manifest
    assert (second.new_chunks, second.uploaded_bytes) == (0, 0)
    (rich_tree / "etc" / "hostname").write_text("changed\n")
    third = push(rich_tree, objects, "img:v2", params=ChunkerParams("fastcdc", 64 << 10))
    assert third.manifest != first.manifest
    assert 0 < third.new_chunks <= 3
    assert third.uploaded_bytes < first.uploaded_bytes / 4


class FailAfter(MemoryStore):
    """A store that dies after ``n`` writes, as a network does mid-push."""

    def __init__(self, n: int) -> None:
        super().__init__("flaky")
        self.left = n

    def put(self, key, data):
        if self.left <= 0:
            raise StoreUnavailable(f"{self}: connection reset")
        self.left -= 1
        super().put(key, data)


def test_interrupted_push_writes_no_tag(rich_tree):
    objects = FailAfter(3)
    with pytest.raises(StoreUnavailable, match="connection reset"):
        push(rich_tree, objects, params=ChunkerParams("fastcdc", 64 << 10), jobs=2)
    assert list(Refs(objects).list()) == []
    assert list(objects.list("refs/")) == []


def test_source_that_changes_during_push(tmp_path):
    from indexer.errors import SourceError

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 1000)
    with open_source(str(src)) as tree:
        (src / "f").write_bytes(b"x" * 10)
        with pytest.raises(SourceError, match="before its recorded size"):
            push_tree(tree, MemoryStore(), parse_ref("a:b"))


def test_export_refuses_a_non_empty_destination(rich_tree, tmp_path):
    objects = MemoryStore()
    push(rich_tree, objects)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep me")
    with pytest.raises(ExportError, match="not an empty directory"):
        export(objects, "img:v1", tmp_path / "busy")
    assert (tmp_path / "busy" / "x").read_text() == "keep me"


@pytest.mark.parametrize("damage, error", [("delete", BlobNotFound), ("corrupt", BlobCorrupt)])
def test_export_with_a_bad_chunk_leaves_nothing(rich_tree, tmp_path, damage, error):
    objects = MemoryStore()
    push(rich_tree, objects, params=ChunkerParams("fastcdc", 64 << 10))
    _, m = open_image(objects, "img:v1")
    victim = m.chunks[len(m.chunks) // 2].id
    if damage == "delete":
        objects.delete(blob_key(victim))
    else:
        objects.put(blob_key(victim), encode_blob(b"wrong bytes"))
    with pytest.raises(error, match=victim):
        export(objects, "img:v1", tmp_path / "out")
    assert os.listdir(tmp_path) == ["rich"]


def test_export_to_a_full_disk_leaves_nothing(rich_tree, tmp_path):
    objects = MemoryStore()
    push(rich_tree, objects)
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        with pytest.raises(ExportError, match="no space left"):
            export(objects, "img:v1", mnt / "out")
        assert os.listdir(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_cat_writes_exact_bytes(rich_tree):
    objects = MemoryStore()
    push(rich_tree, objects, params=ChunkerParams("fastcdc", 64 << 10))
    _, m = open_image(objects, "img:v1")
    out = io.BytesIO()
    write_file(m, BlobStore(objects), "bin/ping", out)
    assert out.getvalue() == (rich_tree / "bin" / "ping").read_bytes()
    with pytest.raises(ExportError, match="symlink"):
        write_file(m, BlobStore(objects), "bin/rel-link", out)
    with pytest.raises(ExportError, match="not a regular file"):
        write_file(m, BlobStore(objects), "etc", out)


def test_single_file_image(tmp_path):
    weights = tmp_path / "model.bin"
    weights.write_bytes(os.urandom(3 << 20))
    objects = MemoryStore()
    push(weights, objects, "model:v1")
    _, m = open_image(objects, "model:v1")
    assert m.header.kind == "file"
    export(objects, "model:v1", tmp_path / "out")
    assert (tmp_path / "out" / "model.bin").read_bytes() == weights.read_bytes()
    shutil.rmtree(tmp_path / "out")
