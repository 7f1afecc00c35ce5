"""A store written by an earlier thaw (commit 5b9b8c0, before the storage redesign) reads
identically: its tags, manifest, chunks, hints and node report. The store and the tree it
was pushed from are kept as tars in tests/data/."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from blobstore.image.hints import load_hints
from blobstore.image.images import open_image
from blobstore.ops.nodereport import read_reports
from blobstore.store.local import LocalStore

from .conftest import Mounted, rsync_diff

DATA = Path(__file__).parent / "data"
MID = "1b65d2322bee04fc127bacd1f2d6120952ec70738debc74ccad039bb43a505b9"


def untar(name: str, dest: Path) -> Path:
    dest.mkdir()
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpzf",
                    str(DATA / name), "-C", str(dest)], check=True)
    return dest


@pytest.fixture
def old_store(tmp_path, thaw):
    store = untar("store-5b9b8c0.tar.gz", tmp_path / "store")
    thaw.store = f"file://{store}"
    return store


def test_an_old_store_lists_verifies_and_exports_identically(old_store, thaw, tmp_path):
    assert json.loads(thaw("ls", "--json").stdout) == [{"ref": "old:v1", "manifest": MID}]
    assert json.loads(thaw("verify", "old:v1", "--json").stdout)["ok"] >= 1
    thaw("export", "old:v1", str(tmp_path / "out"))
    source = untar("store-5b9b8c0-source.tar.gz", tmp_path / "source")
    assert rsync_diff(source, tmp_path / "out") == ""


def test_an_old_stores_hints_and_node_report_read_back(old_store):
    objects = LocalStore(old_store)
    mid, manifest = open_image(objects, "old:v1")
    assert mid == MID
    n = len(manifest.chunks)
    assert load_hints(objects, mid, "start", n) == list(range(n))  # by time of first read
    ((key, raw),) = read_reports(objects)
    assert key == "nodes/old-node.json" and json.loads(raw)["cached"] == {MID: 123}


@pytest.mark.mount
def test_an_old_store_mounts(old_store, thaw, tmp_path):
    source = untar("store-5b9b8c0-source.tar.gz", tmp_path / "source")
    mnt = tmp_path / "mnt"
    with Mounted(thaw, mnt, "mount", "old:v1", str(mnt), "--cache-dir",
                 str(tmp_path / "cache"), "--no-hints"):
        assert rsync_diff(source, mnt) == ""
