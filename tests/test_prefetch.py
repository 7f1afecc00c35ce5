"""What is fetched ahead of reads: read-ahead along the data stream, the priority queue,
``--prefetch none|all``, and hints requested before the workload reaches them. Trio's
autojump clock, no timing asserts."""

from __future__ import annotations

import itertools
import random

import pytest
import trio

from blobstore.image.hints import save_hints
from blobstore.image.images import open_image
from blobstore.image.refs import parse_ref
from blobstore.store.blobs import BlobStore
from blobstore.store.memory import MemoryStore
from blobstore.store.tiers import node_tiers
from fusefs.fetch import ChunkFetcher, Priority, RetryPolicy, Source
from fusefs.learn import StartLearner
from fusefs.namespace import SingleImage
from fusefs.ops import ImageOps
from fusefs.prefetch import Warmer, image_order
from fusefs.readahead import StreamReadAhead
from fusefs.tree import FsTree
from indexer.chunker import ChunkerParams
from indexer.push import push_tree
from indexer.sources import open_source

from .test_fetch import FakeTier, ref
from .test_fuse_ops import path_ino, read_all


@pytest.fixture
def clock():
    return trio.testing.MockClock(autojump_threshold=0.05)


# -- read-ahead along the stream (pure) --------------------------------------------------------


def test_random_reads_in_the_middle_of_files_queue_nothing_ahead():
    ra = StreamReadAhead([100_000] * 1000)
    rng = random.Random(7)
    opened = [r for _ in range(300) if (r := ra.read(rng.randrange(1000), file_start=False))]
    assert not opened


def test_one_miss_is_no_pattern_and_the_next_file_continues_the_stream():
    ra = StreamReadAhead([100_000] * 100, min_bytes=250_000)
    assert not ra.read(10)  # a miss at the start of a file: nothing queued yet
    assert list(ra.read(11)) == [12, 13]  # the next file: its first window
    assert not ra.read(50, missed=False)  # someone had asked for it: no news
    assert not ra.read(70, file_start=False)
    assert ra.read(13, file_start=False)[0] == 14  # it reached what the stream queued


def test_against_a_far_store_a_first_miss_queues_its_neighbours():
    ra = StreamReadAhead([100_000] * 100, around=500_000)
    assert list(ra.read(10)) == [11, 12]  # the next files at once, half of around at first
    assert ra.read(11, missed=False)[0] == 13  # reached: the stream goes on from there
    assert not ra.read(50, missed=False)  # a hit is no miss: nothing around it
    assert not ra.read(70, file_start=False)


def test_a_first_miss_queues_as_many_neighbours_as_were_read_lately():
    scattered = StreamReadAhead([10_000] * 100_000, around=100_000)
    for k in range(2000):  # a file here and there: what is queued around is never read
        scattered.read(k * 40)
    assert scattered.useful < 0.15 and len(scattered.read(99_000)) <= 1  # from 5
    packages = StreamReadAhead([10_000] * 100_000, around=100_000)
    for k in range(500):  # whole packages: the neighbours are read
        for i in list(packages.read(k * 40)):
            packages.read(i, missed=False)
    assert packages.useful > 0.9 and len(packages.read(99_000)) >= 9


@pytest.mark.parametrize("seed", range(5))
def test_stream_read_ahead_never_queues_past_its_budget(seed):
    rng = random.Random(seed)
    sizes = [rng.randrange(1, 600_000) for _ in range(2000)]
    ends = list(itertools.accumulate(sizes))
    budget = 3 << 20
    ra = StreamReadAhead(sizes, min_bytes=256 << 10, max_bytes=budget)
    queued: set[int] = set()
    index, widest = 0, 0
    while index < len(sizes):
        for i in ra.read(index, missed=index not in queued):
            assert i > index and ends[i] - ends[index] <= budget  # within the budget
            assert i not in queued  # each chunk once
            queued.add(i)
            widest = max(widest, ends[i] - ends[index])
        index += rng.choice([1, 1, 1, 2, 3])  # forward, skipping files nobody reads
    assert widest > budget // 2  # a long forward run opened it (nearly) all the way


def test_forward_reads_widen_the_window_and_a_jump_starts_another_stream():
    ra = StreamReadAhead([1 << 20] * 100, min_bytes=1 << 20, max_bytes=8 << 20)
    assert not ra.read(10)  # one miss is no pattern (its neighbours are more than 256K)
    assert list(ra.read(11)) == [12]  # the second one, a chunk on, is: 1 MiB ahead
    widths = [len(ra.read(i, missed=False)) for i in range(12, 40)]
    assert 4 < max(widths) <= 8  # doubled up to the budget
    assert not ra.read(90)  # a jump: a new stream, nothing ahead yet
    assert list(ra.read(91)) == [92]


def test_interleaved_forward_streams_are_each_read_ahead():
    """An import reads a package's modules between the libraries they load."""
    ra = StreamReadAhead([100_000] * 1000, min_bytes=300_000)
    queued: set[int] = set()
    for a, b in zip(range(100, 140, 2), range(600, 640, 2), strict=True):
        for i in (a, b):
            queued.update(ra.read(i, missed=i not in queued))
    assert {i for i in queued if i < 500} and {i for i in queued if i >= 500}
    assert all(i in queued for i in range(104, 140, 2))  # each stream's reads came ahead


# -- the priority queue ----------------------------------------------------------------------


async def test_hints_go_before_read_ahead_before_the_rest_of_the_image(nursery):
    tier = FakeTier()
    tier.gate.clear()
    f = ChunkFetcher(tier, prefetch_threads=1)
    await nursery.start(f.run)
    f.prefetch([ref(0)], Priority.IMAGE)
    await trio.to_thread.run_sync(tier.entered.acquire)  # the one worker is busy with it
    f.prefetch([ref(1), ref(2)], Priority.IMAGE)
    f.prefetch([ref(3)], Priority.READ_AHEAD)
    f.prefetch([ref(4), ref(5)], Priority.HINTS)
    f.prefetch([ref(2)], Priority.HINTS)  # moves up, behind the hints queued before it
    tier.gate.set()
    while f.statistics().prefetches < 6:
        await trio.sleep(0.01)
    assert tier.calls == [ref(n).id for n in (0, 4, 5, 2, 3, 1)]


async def test_a_demand_read_overtakes_queued_prefetch(nursery):
    tier = FakeTier()
    tier.gate.clear()
    f = ChunkFetcher(tier, prefetch_threads=1)
    await nursery.start(f.run)
    f.prefetch([ref(n) for n in range(10)], Priority.HINTS)
    await trio.to_thread.run_sync(tier.entered.acquire)
    got = []

    async def read():
        got.append(await f.get(ref(9), Source.DEMAND))  # queued last

    nursery.start_soon(read)
    await trio.to_thread.run_sync(tier.entered.acquire)
    assert tier.calls == [ref(0).id, ref(9).id]  # now, not after the eight before it
    tier.gate.set()
    while not got:
        await trio.sleep(0.01)
    while f.queued():
        await trio.sleep(0.01)
    assert tier.calls.count(ref(9).id) == 1


async def test_prefetch_none_fetches_nothing_ahead(nursery):
    tier = FakeTier()
    f = ChunkFetcher(tier, enabled=False)
    await nursery.start(f.run)
    assert f.prefetch([ref(n) for n in range(5)], Priority.HINTS) == 0
    await trio.testing.wait_all_tasks_blocked()
    assert tier.calls == []
    await f.get(ref(1))
    assert tier.calls == [ref(1).id]


async def test_prefetched_bytes_never_read_are_reported_as_waste(nursery):
    tier = FakeTier()
    f = ChunkFetcher(tier)
    await nursery.start(f.run)
    f.prefetch([ref(n, size=1000) for n in range(4)], Priority.HINTS)
    while f.statistics().prefetches < 4:
        await trio.sleep(0.01)
    assert f.statistics().prefetched_unread_bytes == 4000
    await f.get(ref(0, size=1000))
    await f.get(ref(1, size=1000))
    stats = f.statistics()
    assert (stats.prefetched_bytes, stats.prefetched_unread_bytes) == (4000, 2000)


async def test_warm_and_whole_image_prefetch_go_to_the_disk_cache_not_memory(nursery):
    tier = FakeTier()
    f = ChunkFetcher(tier)
    await nursery.start(f.run)
    f.prefetch([ref(1)], Priority.WARM)
    f.prefetch([ref(2)], Priority.IMAGE)
    f.prefetch([ref(3)], Priority.HINTS)
    while f.statistics().prefetches < 3:
        await trio.sleep(0.01)
    assert f.cached(ref(1).id) is None and f.cached(ref(2).id) is None
    assert f.cached(ref(3).id) is not None


def test_the_whole_image_is_queued_in_stream_order_up_to_the_budget(rich_tree):
    objects = MemoryStore()
    with open_source(str(rich_tree)) as src:
        push_tree(src, objects, parse_ref("t:1"), params=ChunkerParams("fastcdc", 64 << 10))
    _, manifest = open_image(objects, "t:1")
    everything = image_order(manifest, 1 << 62)
    assert len({c.id for c in everything}) == len(everything)
    assert [c.id for c in everything] == list(dict.fromkeys(c.id for c in manifest.chunks))
    budget = sum(c.stored_size for c in everything) // 3
    some = image_order(manifest, budget)
    assert some == everything[:len(some)] and 0 < len(some) < len(everything)
    assert sum(c.stored_size for c in some) <= budget
    assert image_order(manifest, 0) == []


# -- through the read handlers ---------------------------------------------------------------


@pytest.fixture
def many_files(tmp_path):
    """200 files of ~48 KiB in path order: an interpreter's start, in miniature."""
    root = tmp_path / "many"
    rng = random.Random(3)
    for i in range(200):
        d = root / f"d{i // 20:02}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"m{i:03}.py").write_bytes(rng.randbytes(48 << 10))
    objects = MemoryStore()
    with open_source(str(root)) as src:
        push_tree(src, objects, parse_ref("many:1"),
                  params=ChunkerParams("fastcdc", 64 << 10))
    return objects, *open_image(objects, "many:1")


class Node:
    """One mount's read path on a store, with the requests it sent to the store logged."""

    def __init__(self, objects, mid, manifest, *, enabled: bool = True) -> None:
        tiers = node_tiers(BlobStore(objects), None)
        self.fetched: list[str] = []

        def fetch(id: str, size: int) -> bytes:
            self.fetched.append(id)
            return tiers.stack.get(id, max_size=size)

        self.fetcher = ChunkFetcher(fetch, retry=RetryPolicy(attempts=1), enabled=enabled)
        self.learner = StartLearner(objects, mid, manifest, self.fetcher)
        self.not_requested: list[int] = []  # reads whose chunk nobody had asked for

        def on_read(tree, chunk: int) -> None:
            if not self.fetcher.requested(manifest.chunks[chunk].id):
                self.not_requested.append(chunk)
            self.learner.read(chunk)

        self.tree = FsTree(manifest, image_id=mid)
        self.ops = ImageOps(SingleImage(mid, self.tree), self.fetcher, on_read)
        self.warmer = Warmer(objects, self.fetcher, workload="start", max_bytes=1 << 62)


async def start_files(node: Node, manifest, step: int = 2) -> None:
    """Read every ``step``-th file in path order, as a start does."""
    files = [e.path for e in manifest.entries if e.spans][::step]
    for path in files:
        await read_all(node.ops, await path_ino(node.ops, path), 128 << 10)


async def test_with_hints_every_hinted_chunk_is_requested_before_the_workload_reaches_it(
        many_files, clock):
    objects, mid, manifest = many_files
    first = Node(objects, mid, manifest)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.fetcher.run)
        await nursery.start(first.learner.run)
        await start_files(first, manifest)
        nursery.cancel_scope.cancel()
    second = Node(objects, mid, manifest)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.fetcher.run)
        await nursery.start(second.learner.run)  # as a mount: before it answers
        assert second.learner.hinted > 50
        # The workload's first read comes a kernel round trip later, not in the same
        # scheduling tick as the queueing: let the prefetch workers take their first chunks.
        await trio.testing.wait_all_tasks_blocked()
        await start_files(second, manifest)
        nursery.cancel_scope.cancel()
    assert second.not_requested == []
    assert second.fetcher.statistics().demand_fetches == 0


async def test_without_hints_reads_along_the_stream_are_fetched_ahead(many_files, clock):
    objects, mid, manifest = many_files
    plain = Node(objects, mid, manifest, enabled=False)
    ahead = Node(objects, mid, manifest)
    for node in (plain, ahead):
        async with trio.open_nursery() as nursery:
            await nursery.start(node.fetcher.run)
            await start_files(node, manifest)
            nursery.cancel_scope.cancel()
    assert plain.fetcher.statistics().prefetches == 0  # --prefetch none: nothing ahead
    waited = ahead.fetcher.statistics().demand_fetches
    assert waited < plain.fetcher.statistics().demand_fetches // 4


async def test_warm_queues_another_workloads_hints_for_the_disk_cache(many_files, clock):
    objects, mid, manifest = many_files
    save_hints(objects, mid, "restore", {i: float(i) for i in range(0, 40, 2)})
    node = Node(objects, mid, manifest)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.fetcher.run)
        doc = await node.warmer.warm(node.tree, "restore")
        while node.fetcher.queued() or node.fetcher.statistics().prefetches < 20:
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert doc["hinted_chunks"] == 20 and doc["queued"] == 20
    assert set(node.fetched) == {manifest.chunks[i].id for i in range(0, 40, 2)}
    assert node.fetcher.statistics().memory_cached_bytes == 0  # for the disk, not memory


