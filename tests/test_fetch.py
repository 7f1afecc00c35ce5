"""The fetcher under trio's autojump clock: single flight, LRU, limiters, retries."""

from __future__ import annotations

import threading

import pytest
import trio

from blobstore.errors import BlobCorrupt, StoreUnavailable
from blobstore.image.manifest import ChunkRef
from fusefs.fetch import ChunkFetcher, RetryPolicy, Source


@pytest.fixture
def clock():
    """Virtual time that jumps once the program idles: worker threads (real time) finish
    first, so a back-off of seconds takes none, and no test sleeps."""
    return trio.testing.MockClock(autojump_threshold=0.05)


def ref(n: int, size: int = 100) -> ChunkRef:
    return ChunkRef(f"{n:064x}", size, size)


class FakeTier:
    """A blocking tier that counts calls and can fail, hang or gate its answers."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail_times = 0
        self.corrupt = False
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        self.entered = threading.Semaphore(0)  # released once per call, as it starts

    def __call__(self, id: str, size: int) -> bytes:
        with self.lock:
            self.calls.append(id)
            failing = self.fail_times > 0
            self.fail_times -= 1
        self.entered.release()
        self.gate.wait(5)
        if self.corrupt:
            raise BlobCorrupt(f"blob {id}: content does not hash to its id")
        if failing:
            raise StoreUnavailable("s3://test: connection refused")
        return id[-1].encode() * size


async def test_many_readers_one_fetch(nursery):
    tier = FakeTier()
    tier.gate.clear()
    f = ChunkFetcher(tier)
    results = []

    async def read():
        results.append(await f.get(ref(1)))

    for _ in range(20):
        nursery.start_soon(read)
    await trio.to_thread.run_sync(tier.entered.acquire)
    await trio.testing.wait_all_tasks_blocked()
    tier.gate.set()
    while len(results) < 20:
        await trio.sleep(0.01)
    assert tier.calls == [ref(1).id]
    assert set(results) == {b"1" * 100}
    assert f.statistics().waited == 19


async def test_memory_lru_is_bounded():
    tier = FakeTier()
    f = ChunkFetcher(tier, memory_bytes=250)
    for n in range(3):
        await f.get(ref(n))
    assert f.cached(ref(0).id) is None and f.cached(ref(2).id) is not None
    await f.get(ref(2))
    assert tier.calls.count(ref(2).id) == 1
    assert f.statistics().memory_cached_bytes <= 250


async def test_store_failures_are_retried_with_back_off(clock):
    tier = FakeTier()
    tier.fail_times = 3
    f = ChunkFetcher(tier, retry=RetryPolicy(attempts=5, base=1.0, cap=8.0))
    start = trio.current_time()
    assert await f.get(ref(7)) == b"7" * 100
    assert len(tier.calls) == 4
    assert trio.current_time() - start >= 0.5 + 1 + 2  # jittered back-off happened
    assert f.statistics().retries == 3


async def test_gives_up_after_the_last_attempt_and_recovers(clock):
    tier = FakeTier()
    tier.fail_times = 100
    f = ChunkFetcher(tier, retry=RetryPolicy(attempts=3, base=0.1))
    with pytest.raises(StoreUnavailable):
        await f.get(ref(3))
    assert len(tier.calls) == 3
    tier.fail_times = 0
    assert await f.get(ref(3)) == b"3" * 100  # the next read works again


async def test_corrupt_bytes_are_not_retried_or_cached():
    tier = FakeTier()
    tier.corrupt = True
    f = ChunkFetcher(tier)
    with pytest.raises(BlobCorrupt):
        await f.get(ref(4))
    assert len(tier.calls) == 1 and f.cached(ref(4).id) is None


async def test_hung_store_times_out(clock):
    tier = FakeTier()
    tier.gate.clear()  # never answers (until the test ends)
    f = ChunkFetcher(tier, retry=RetryPolicy(attempts=2, base=0.1, attempt_timeout=3.0))
    with pytest.raises(StoreUnavailable, match="did not answer within"):
        await f.get(ref(5))
    tier.gate.set()


async def test_a_hung_store_fails_a_read_within_the_budget_not_attempts_times_timeout(clock):
    tier = FakeTier()
    tier.gate.clear()
    f = ChunkFetcher(tier, retry=RetryPolicy(attempts=6, attempt_timeout=30.0, budget=7.0))
    start = trio.current_time()
    with pytest.raises(StoreUnavailable, match="did not answer within 7s"):
        await f.get(ref(5))
    assert trio.current_time() - start <= 7.0 + 1e-6
    tier.gate.set()


def test_retry_policy_within_a_budget_leaves_room_for_several_attempts():
    policy = RetryPolicy.within(20.0)
    assert policy.budget == 20.0 and 2 * policy.attempt_timeout < policy.budget


async def test_prefetch_does_not_starve_demand(nursery):
    tier = FakeTier()
    f = ChunkFetcher(tier, demand_threads=2, prefetch_threads=1)
    await nursery.start(f.run)
    tier.gate.clear()
    f.prefetch([ref(n) for n in range(10, 20)])
    await trio.to_thread.run_sync(tier.entered.acquire)
    await trio.testing.wait_all_tasks_blocked()
    assert len(tier.calls) == 1  # one prefetch thread, the others wait for it
    got = []

    async def read():
        got.append(await f.get(ref(99), Source.DEMAND))

    nursery.start_soon(read)
    await trio.to_thread.run_sync(tier.entered.acquire)
    assert ref(99).id in tier.calls  # ran beside the blocked prefetch
    tier.gate.set()
    while not got:
        await trio.sleep(0.01)
    while f.statistics().prefetches < 10:
        await trio.sleep(0.01)
    assert len(set(tier.calls)) == 11


async def test_a_chunk_that_just_ran_out_the_budget_fails_again_at_once(clock):
    """The kernel re-asks a failed read-ahead page at once: against a hung store that must
    not add to the budget the reader waited (the README: EIO within the budget)."""
    tier = FakeTier()
    tier.gate.clear()
    f = ChunkFetcher(tier, retry=RetryPolicy(attempts=3, attempt_timeout=4.0, budget=10.0))
    with pytest.raises(StoreUnavailable):
        await f.get(ref(3))
    start = trio.current_time()
    with pytest.raises(StoreUnavailable):
        await f.get(ref(3))
    assert trio.current_time() - start == 0
    tier.gate.set()
    assert await f.get(ref(4)) == b"4" * 100  # the store answers again
    assert await f.get(ref(3)) == b"3" * 100  # and the failed chunk is asked for anew


async def test_wait_drained_returns_once_every_queued_prefetch_is_done(nursery):
    """What the materializer waits on before it looks for files prefetched whole."""
    tier = FakeTier()
    f = ChunkFetcher(tier, prefetch_threads=2)
    await nursery.start(f.run)
    await f.wait_drained()  # nothing queued: at once
    tier.gate.clear()
    f.prefetch([ref(n) for n in range(30, 36)])
    drained = trio.Event()

    async def wait():
        await f.wait_drained()
        drained.set()

    nursery.start_soon(wait)
    await trio.to_thread.run_sync(tier.entered.acquire)
    await trio.testing.wait_all_tasks_blocked()
    assert not drained.is_set()  # two in flight, four queued
    tier.gate.set()
    await drained.wait()
    assert f.statistics().prefetches == 6 and f.statistics().prefetch_queued == 0
