"""Hints in the FUSE mount: a start is recorded, and the next start prefetches it."""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
import trio

from blobstore.errors import StoreUnavailable
from blobstore.image.hints import hints_key, load_hints
from blobstore.image.images import open_image
from blobstore.image.refs import parse_ref
from blobstore.store.blobs import BlobStore
from blobstore.store.memory import MemoryStore
from blobstore.store.tiers import node_tiers
from fusefs.fetch import ChunkFetcher, RetryPolicy
from fusefs.learn import StartLearner
from fusefs.namespace import SingleImage
from fusefs.ops import ImageOps
from fusefs.tree import FsTree
from indexer.chunker import ChunkerParams
from indexer.push import push_tree
from indexer.sources import open_source

from .test_fuse_ops import path_ino, read_all


@pytest.fixture
def clock():
    return trio.testing.MockClock(autojump_threshold=0.05)


@pytest.fixture
def pushed(rich_tree):
    objects = MemoryStore()
    with open_source(str(rich_tree)) as src:
        push_tree(src, objects, parse_ref("t:1"), params=ChunkerParams("fastcdc", 64 << 10))
    return objects, *open_image(objects, "t:1")


class Node:
    """One mount's parts on the same store: a fetcher that logs what it fetched, a learner,
    and the handlers that tell it what was read."""

    def __init__(self, objects, mid, manifest, window: float = 30.0,
                 max_bytes: int = 1 << 62) -> None:
        tiers = node_tiers(BlobStore(objects), None)
        self.fetched: list[str] = []

        def fetch(id: str, size: int) -> bytes:
            self.fetched.append(id)
            return tiers.stack.get(id, max_size=size)

        self.fetcher = ChunkFetcher(fetch, retry=RetryPolicy(attempts=1))
        self.learner = StartLearner(objects, mid, manifest, self.fetcher, window=window,
                                    max_bytes=max_bytes)
        self.ops = ImageOps(SingleImage(mid, FsTree(manifest, image_id=mid)),
                            self.fetcher, lambda tree, chunk: self.learner.read(chunk))


@asynccontextmanager
async def mounted(node: Node):
    """The node's fetcher and learner running, as in a mount; leaving it unmounts."""
    async with trio.open_nursery() as nursery:
        await nursery.start(node.fetcher.run)
        await nursery.start(node.learner.run)
        yield node
        nursery.cancel_scope.cancel()


def chunks_of(manifest, path: str) -> list[int]:
    return [s.chunk for s in manifest.entry(path).spans]


async def test_a_start_is_recorded_and_the_next_one_prefetches_it(pushed, clock):
    objects, mid, manifest = pushed
    first = Node(objects, mid, manifest, window=30)
    async with mounted(first):
        assert first.learner.hinted == 0  # nothing learned yet
        await read_all(first.ops, await path_ino(first.ops, "bin/ping"), 1 << 20)
        await trio.sleep(31)  # the window closes: the start is saved
        assert load_hints(objects, mid, "start") == chunks_of(manifest, "bin/ping")
        await read_all(first.ops, await path_ino(first.ops, "etc/hostname"), 4096)
    assert load_hints(objects, mid, "start") == chunks_of(manifest, "bin/ping")  # not after

    second = Node(objects, mid, manifest)
    ping = {manifest.chunks[i].id for i in chunks_of(manifest, "bin/ping")}
    async with mounted(second):
        assert second.learner.hinted == len(chunks_of(manifest, "bin/ping"))
        await trio.sleep(1)  # the prefetch workers run before anything is read
        assert set(second.fetched) == ping
        before = second.fetcher.statistics().demand_fetches
        await read_all(second.ops, await path_ino(second.ops, "bin/ping"), 1 << 20)
        assert second.fetcher.statistics().demand_fetches == before  # all there already


async def test_prefetch_from_hints_is_bounded(pushed, clock):
    objects, mid, manifest = pushed
    first = Node(objects, mid, manifest)
    async with mounted(first):
        await read_all(first.ops, await path_ino(first.ops, "bin/ping"), 1 << 20)
    hinted = chunks_of(manifest, "bin/ping")
    room = sum(manifest.chunks[i].stored_size for i in hinted[:2])
    second = Node(objects, mid, manifest, max_bytes=room)
    async with mounted(second):
        assert second.learner.hinted == 2  # the first two, in the order they were read


async def test_an_unmount_inside_the_window_still_saves(pushed, clock):
    objects, mid, manifest = pushed
    node = Node(objects, mid, manifest, window=600)
    async with mounted(node):
        await read_all(node.ops, await path_ino(node.ops, "etc/hostname"), 4096)
    assert load_hints(objects, mid, "start") == chunks_of(manifest, "etc/hostname")


class DeadHints(MemoryStore):
    """Serves the image, but its hints cannot be read or written."""

    def get(self, key: str) -> bytes:
        if key.startswith("hints/"):
            raise StoreUnavailable("memory://: hints unreachable")
        return super().get(key)

    def put(self, key: str, data: bytes) -> None:
        if key.startswith("hints/"):
            raise StoreUnavailable("memory://: hints unreachable")
        super().put(key, data)


@pytest.mark.allow_log_warnings
async def test_a_store_without_hints_still_mounts_and_reads(pushed, clock, caplog):
    objects, mid, manifest = pushed
    dead = DeadHints()
    for key in objects.list(""):
        dead.put(key, objects.get(key))
    node = Node(dead, mid, manifest)
    async with mounted(node):
        assert await read_all(node.ops, await path_ino(node.ops, "etc/hostname"), 4096)
    assert "hints not loaded" in caplog.text and "hints not saved" in caplog.text
    assert hints_key(mid, "start") not in set(dead.list("hints/"))

