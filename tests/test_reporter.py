"""The daemon's node report: no manifest decoded at start, served images remembered across
a restart, and the cache rescanned only where it changed."""

from __future__ import annotations

import os

from blobstore.image.images import open_image
from blobstore.image.refs import parse_ref
from blobstore.store.blobs import BlobStore
from blobstore.store.diskcache import CacheIndex, DiskCache
from blobstore.store.memory import MemoryStore
from fusefs.reporter import NodeReporter
from indexer.push import push_tree
from indexer.sources import open_source

from .conftest import CountsRequests


class CountingStore(CountsRequests, MemoryStore):
    pass


def pushed(rich_tree, n: int = 2):
    objects = CountingStore()
    for i in range(n):
        with open_source(str(rich_tree)) as tree:
            push_tree(tree, objects, parse_ref(f"img:{i}"))
    objects.gets.clear()
    return objects


def fill_cache(cache: DiskCache, objects, manifest) -> None:
    blobs = BlobStore(objects)
    for c in manifest.chunks:
        cache.put_stored(c.id, blobs.get_stored(c.id))


def test_a_report_at_start_reads_no_manifest(rich_tree, tmp_path):
    objects = pushed(rich_tree)
    reporter = NodeReporter(objects, DiskCache(tmp_path / "c", 1 << 30), node_id="n",
                            gpus=list)
    assert reporter.report().cached == {}
    assert not [k for k in objects.gets if k.startswith("blobs/")]


def test_served_images_are_reported_across_a_restart_and_forgotten_when_evicted(
        rich_tree, tmp_path):
    objects = pushed(rich_tree, 1)
    mid, manifest = open_image(objects, "img:0")
    cache = DiskCache(tmp_path / "c", 1 << 30)
    reporter = NodeReporter(objects, cache, node_id="n", gpus=list)
    reporter.add(mid, manifest)
    assert reporter.report().cached == {}  # served, nothing read yet
    fill_cache(cache, objects, manifest)
    distinct = sum({c.id: c.size for c in manifest.chunks}.values())
    assert reporter.report().cached == {mid: distinct}
    objects.gets.clear()
    restarted = NodeReporter(objects, DiskCache(tmp_path / "c", 1 << 30), node_id="n",
                             gpus=list)
    assert restarted.report().cached == reporter.report().cached
    assert not objects.gets  # from the chunk table kept in the cache, not the manifest
    for id in {c.id for c in manifest.chunks}:
        os.unlink(cache.root / id[:2] / id)
    assert restarted.report().cached == {}
    assert not (cache.root / ".images" / mid).exists()


def test_the_cache_index_rescans_only_changed_directories(tmp_path, monkeypatch):
    cache = DiskCache(tmp_path / "c", 1 << 30)
    objects = MemoryStore()
    blobs = BlobStore(objects)
    ids = [blobs.put(bytes([i]) * 1000)[0] for i in range(40)]
    for id in ids:
        cache.put_stored(id, blobs.get_stored(id))
    index = CacheIndex(cache)
    assert index.refresh() == set(ids)
    listed = []
    real = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p: listed.append(p) or real(p))
    assert index.refresh() == set(ids)
    assert listed == []
    new = blobs.put(b"new" * 100)[0]
    cache.put_stored(new, blobs.get_stored(new))
    assert index.refresh() == {*ids, new}
    assert listed == [str(cache.root / new[:2])]
