"""Fetches in flight sized by the store's latency (pure), and the fetcher applying it."""

from __future__ import annotations

import trio

from blobstore.image.manifest import ChunkRef
from fusefs.fetch import ChunkFetcher
from fusefs.inflight import EVERY, in_flight, stream_window


def test_a_far_store_gets_many_fetches_in_flight_and_a_near_one_few():
    kw = {"low": 2, "high": 32, "target": 1 << 30}
    assert in_flight(0.020, 256 << 10, **kw) == 32  # 20 ms away: capped
    assert in_flight(0.001, 256 << 10, **kw) == 5  # ceil(1 GiB/s * 1 ms / 256 KiB)
    assert in_flight(0.0002, 256 << 10, **kw) == 2  # a directory on the node: the floor
    assert in_flight(0.0, 0, **kw) == 2


def test_the_stream_read_ahead_opens_wider_the_farther_the_store():
    assert stream_window(0.0003) == int(0.0003 * (128 << 20))  # a directory: under a chunk
    assert stream_window(0.004) == int(0.004 * (128 << 20))  # what a reader takes meanwhile
    assert stream_window(0.020) == 1 << 20  # 20 ms away: the most


async def test_the_fetcher_narrows_its_limits_for_a_near_store_and_keeps_them_for_a_far_one(
        nursery):
    latency = [None]
    f = ChunkFetcher(lambda id, size: b"x" * size, demand_threads=32, prefetch_threads=16,
                     latency=lambda: latency[0])
    await nursery.start(f.run)

    for i in range(EVERY):  # not measured yet: the highest limits
        await f.get(ChunkRef(f"{i:064x}", 256 << 10, 256 << 10))
    assert f.statistics().fetch_limit == 32
    latency[0] = (0.0002, 256 << 10)  # near
    for i in range(EVERY, 2 * EVERY):
        await f.get(ChunkRef(f"{i:064x}", 256 << 10, 256 << 10))
    assert f.statistics().fetch_limit == 2 and f.window < 32 << 10
    assert [limiter.total_tokens for limiter in f._limiters.values()] == [2, 2]
    latency[0] = (0.020, 256 << 10)  # far again
    for i in range(2 * EVERY, 3 * EVERY):
        await f.get(ChunkRef(f"{i:064x}", 256 << 10, 256 << 10))
    assert f.statistics().fetch_limit == 32
    assert sorted(limiter.total_tokens for limiter in f._limiters.values()) == [16, 32]
    assert f._gate.total_tokens == 16
    await trio.testing.wait_all_tasks_blocked()
