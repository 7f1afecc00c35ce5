"""The daemon's namespace: images load on first lookup, trees are bounded, and a dropped
tree comes back (same inodes) when the kernel asks about one of its inodes."""

from __future__ import annotations

import pytest

from blobstore.image.refs import parse_ref
from blobstore.store.memory import MemoryStore
from fusefs.namespace import StoreImages
from indexer.push import push_tree
from indexer.sources import open_source


@pytest.fixture
def three_images(tmp_path):
    objects = MemoryStore()
    mids = []
    for i in range(3):
        src = tmp_path / f"img{i}"
        (src / "d").mkdir(parents=True)
        for j in range(50):
            (src / "d" / f"f{j}").write_text(f"{i}-{j}")
        with open_source(str(src)) as tree:
            mids.append(push_tree(tree, objects, parse_ref(f"img:{i}")).manifest_id)
    return objects, mids


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_idle_trees_are_dropped_past_the_bound_and_reload_with_the_same_inodes(
        three_images):
    objects, mids = three_images
    clock = Clock()
    ns = StoreImages(objects, max_entries=120, idle=10.0, clock=clock)
    roots = {}
    for mid in mids:
        roots[mid] = await ns.lookup(1, mid.encode())
        clock.now += 11.0  # each is idle by the time the next loads
    assert list(ns.trees) == mids[1:]  # 52 entries each: the oldest goes for the third
    d = await ns.lookup(roots[mids[0]], b"d")  # the kernel still knows this inode
    assert mids[0] in ns.trees
    tree = ns.trees[mids[0]]
    assert tree.root == roots[mids[0]]
    assert tree.entry(d).path == "d"  # the old inode names the same entry in the new tree
    assert tree.entry(await ns.lookup(d, b"f7")).path == "d/f7"
    assert [n for n, _ in await ns.children(1)][1:] == sorted(m.encode() for m in mids)
    assert set(ns.images()) == set(mids)


async def test_a_tree_in_use_is_kept_over_the_bound(three_images):
    objects, mids = three_images
    clock = Clock()
    ns = StoreImages(objects, max_entries=60, idle=10.0, clock=clock)
    for mid in mids:
        await ns.lookup(1, mid.encode())  # all within the idle time
    assert list(ns.trees) == mids


async def test_ready_reloads_a_dropped_tree_for_a_sync_call(three_images):
    objects, mids = three_images
    clock = Clock()
    ns = StoreImages(objects, max_entries=1, idle=0.0, clock=clock)
    root0 = await ns.lookup(1, mids[0].encode())
    clock.now += 1
    await ns.lookup(1, mids[1].encode())
    assert mids[0] not in ns.trees
    await ns.ready(root0)
    assert ns.attrs(root0).ino == root0


async def test_only_image_inodes_are_immutable(three_images):
    """readdir keeps listings of immutable directories only: the root gains images."""
    objects, mids = three_images
    ns = StoreImages(objects)
    root = await ns.lookup(1, mids[0].encode())
    assert ns.immutable(root) and not ns.immutable(1) and not ns.immutable(2)


async def test_a_big_directory_is_decoded_in_a_worker_thread_and_a_small_one_inline(
        three_images, monkeypatch):
    import trio

    import fusefs.namespace as namespace

    objects, mids = three_images
    ns = StoreImages(objects)
    root = await ns.lookup(1, mids[0].encode())
    threads = []
    real = trio.to_thread.run_sync

    async def counting(fn, *args, **kwargs):
        threads.append(getattr(fn, "__name__", repr(fn)))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(trio.to_thread, "run_sync", counting)
    d = await ns.lookup(root, b"d")  # the root's listing: a few bytes, decoded inline
    assert threads == []
    monkeypatch.setattr(namespace, "DECODE_INLINE", 16)  # d holds 50 entries: "big" now
    assert len(await ns.children(d)) == 50
    assert threads == ["listing_cost"]
    assert await ns.lookup(d, b"f7") is not None  # decoded already: no thread again
    assert threads == ["listing_cost"]
