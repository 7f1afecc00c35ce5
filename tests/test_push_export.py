"""Push and export in-process: metadata fidelity, dedup, atomicity, failures."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from blobstore.errors import BlobCorrupt, BlobNotFound, StoreUnavailable
from blobstore.image.images import open_image
from blobstore.image.refs import Refs, parse_ref
from blobstore.store.blobs import BlobStore, blob_key
from blobstore.store.codec import encode_blob
from blobstore.store.local import LocalStore
from blobstore.store.memory import MemoryStore
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
    assert second.manifest_id == first.manifest_id
    assert (second.new_chunks, second.uploaded_bytes) == (0, 0)
    (rich_tree / "etc" / "hostname").write_text("changed\n")
    third = push(rich_tree, objects, "img:v2", params=ChunkerParams("fastcdc", 64 << 10))
    assert third.manifest_id != first.manifest_id
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


def test_the_first_push_a_newcomer_tries_works_on_debian(thaw):
    """`thaw push /usr/lib/python3.11 demo:1`: its config directory holds a link that climbs
    out of the tree (python3-dev, which `make install` installs, puts it there)."""
    lib = sorted(Path("/usr/lib").glob("python3.[0-9]*"))[-1]
    climbing = [p for p in lib.rglob("*") if p.is_symlink()
                and os.readlink(p).startswith("../../")]
    assert climbing, f"{lib} has no link that climbs out: the case this test is for"
    proc = thaw("push", str(lib), "demo:1")
    assert b"Traceback" not in proc.stderr
    proc = thaw("push", str(lib), "demo:2", "--trust-links")
    assert b"--trust-links changes nothing" in proc.stderr


@pytest.fixture
def hostile_links(tmp_path) -> Path:
    tree = tmp_path / "links"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "data").write_bytes(b"inside\n" * 100)
    for name, target in (("up", "../../../../../tmp"), ("abs", "/etc"), ("dot", "."),
                         ("self", "self"), ("shadow", "../../../../etc/shadow")):
        (tree / "etc" / name).symlink_to(target)
    return tree


def test_export_writes_hostile_links_as_links_and_nothing_outside(thaw, hostile_links,
                                                                  tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    thaw("push", str(hostile_links), "links:1")
    dest = tmp_path / "sub" / "dest"
    dest.parent.mkdir()
    thaw("export", "links:1", str(dest))
    assert rsync_diff(hostile_links, dest) == ""
    for name in ("up", "abs", "dot", "self", "shadow"):
        assert (dest / "etc" / name).is_symlink()
    assert list(outside.iterdir()) == []


def test_export_never_follows_a_link_swapped_in_while_it_writes(thaw, hostile_links, tmp_path,
                                                                monkeypatch):
    """A directory of the tree being written is replaced by a link to another directory
    (a race: injected, since a real one cannot be timed): the files go where the tree's
    own directory went, never through the link."""
    import indexer.export as export

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data").write_bytes(b"victim")  # what a write through the link would hit
    thaw("push", str(hostile_links), "links:1")
    real = export._write_files

    def swapped(w, files, *args):
        partial = next(tmp_path.glob(".dest.thaw-partial-*"))
        (partial / "etc").rename(partial / "etc-moved")
        (partial / "etc").symlink_to(outside)
        return real(w, files, *args)

    monkeypatch.setattr(export, "_write_files", swapped)
    from blobstore.image.images import open_image
    from blobstore.store.blobs import BlobStore
    from blobstore.store.url import open_store

    objects = open_store(thaw.store)
    _, manifest = open_image(objects, "links:1")
    try:
        export.export_tree(manifest, BlobStore(objects), str(tmp_path / "dest"))
    except ExportError:  # the directory's own metadata, set last, met the link
        assert not (tmp_path / "dest").exists()  # and nothing was left behind
    assert [p.name for p in outside.iterdir()] == ["data"]
    assert (outside / "data").read_bytes() == b"victim"
