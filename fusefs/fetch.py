"""The chunk fetcher: memory LRU, one fetch per chunk, separate thread limiters, retries.

Threading model: every method runs on the trio thread. Store calls (disk cache, S3, which
block and decompress) go to long-lived worker threads (``threads.WorkerThreads``) under one
``CapacityLimiter`` for demand reads and another for prefetch, so prefetch never starves a
reader. Prefetch is a priority queue drained by a fixed set of workers: hinted chunks in
their order first, then read-ahead, then the rest of an image (``Priority``); a chunk queued
again at a higher priority moves up, and a worker takes the best chunk only once there is
room for it. The limits follow the store's measured latency (``inflight``): up to 32 in
flight for a store 20 ms away, whose latency they overlap (``bench/fetch_concurrency.py``
for the ceiling), and as few as 2 for one that answers at once, where each thread more
only contends for the GIL. A chunk asked for while it is in flight is waited for, never
fetched twice. A store
that fails or hangs is retried with capped exponential back-off and jitter (``trio.sleep``,
so tests run it on trio's autojump clock), each attempt bounded by ``attempt_timeout`` and
all of them together by ``budget`` (``--store-timeout``); then the error goes up and that
read gets EIO, while the mount stays up. The kernel re-asks a failed read-ahead page
synchronously, and that second ask must not add to what a reader already waited: a chunk
whose fetch ran out the budget (a hung store) in the last ``FAILED_TTL`` seconds fails
again at once, so a read gets EIO within the budget (it took the budget and a second when
the re-ask got an attempt too); one that failed sooner (a store that refuses at once) gets
one short attempt. Any answer from the store clears that record. Bytes that fail
verification are never cached or served: the tier below raises ``BlobCorrupt`` and it is
not retried.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

import trio

from blobstore.errors import StoreUnavailable
from blobstore.image.manifest import ChunkRef
from blobstore.store.lru import BytesLRU
from blobstore.store.tiers import percentiles

from .inflight import EVERY, WINDOW, in_flight, stream_window
from .stats import FetcherCounters, FetcherStats
from .threads import WorkerThreads

log = logging.getLogger(__name__)
FAILED_TTL = 2.0  # seconds a failure is remembered, while the store answers nothing
QUICK_ATTEMPT = 1.0  # seconds: the attempt a chunk gets that just failed quickly


DEMAND_THREADS = 32  # at most, reads in flight against the store at once
PREFETCH_THREADS = 32  # at most, prefetches in flight; the store client's pool holds both


class _OutOfBudget(StoreUnavailable):
    """The store did not answer within the whole budget (it hangs)."""


class Source(enum.Enum):
    DEMAND = "demand"
    PREFETCH = "prefetch"


class Priority(enum.IntEnum):
    """Which prefetched chunks go first (lower first)."""

    HINTS = 0  # what the workload read at its last start, in that order
    READ_AHEAD = 1  # ahead of sequential reads, in a file or along the data stream
    WARM = 2  # `thaw warm` of another workload's hints (a restore), into the disk cache only
    IMAGE = 3  # the rest of an image (--prefetch all), into the disk cache only


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    base: float = 0.2  # seconds before the second attempt
    cap: float = 2.0
    attempt_timeout: float = 8.0  # a hung store call is abandoned after this
    budget: float = 20.0  # every attempt and pause of one fetch together

    @classmethod
    def within(cls, budget: float) -> RetryPolicy:
        """A policy that gives up after ``budget`` seconds, each attempt a third of it (the
        S3 client's own request timeout) plus a second."""
        return cls(attempt_timeout=budget / 3 + 1, budget=budget)

    def delay(self, attempt: int) -> float:
        return min(self.cap, self.base * 2 ** attempt) * random.uniform(0.5, 1.0)


class _Flight:
    __slots__ = ("event", "data", "error")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None


class ChunkFetcher:
    def __init__(self, fetch_sync: Callable[[str, int], bytes], *,
                 memory_bytes: int = 256 << 20, demand_threads: int = DEMAND_THREADS,
                 prefetch_threads: int = PREFETCH_THREADS,
                 retry: RetryPolicy = RetryPolicy(), enabled: bool = True,
                 on_disk: Callable[[str], bool] = lambda id: False,
                 latency: Callable[[], tuple[float, float] | None] = lambda: None) -> None:
        """``enabled``: False for ``--prefetch none``: ``prefetch`` then queues nothing.
        ``on_disk(id)`` (blocking): whether the disk cache holds a chunk, so that what is
        prefetched for the disk only is not fetched again (``thaw warm`` twice).
        ``latency()``: the store's least recent latency and mean stored chunk size, or
        None while unknown (``TierStats.recent``); it sets how many fetches are in flight
        (``inflight``), at most ``demand_threads`` and ``prefetch_threads``."""
        self._on_disk = on_disk
        self._fetch_sync = fetch_sync  # (id, size) -> verified bytes; blocking
        self._memory = BytesLRU(memory_bytes)
        self._inflight: dict[str, _Flight] = {}
        # id -> (until when it is remembered, whether it ran out the budget)
        self._failed: dict[str, tuple[float, bool]] = {}
        self._limiters = {Source.DEMAND: trio.CapacityLimiter(demand_threads),
                          Source.PREFETCH: trio.CapacityLimiter(prefetch_threads)}
        self._gate = trio.CapacityLimiter(prefetch_threads)  # prefetches taken off the queue
        self._highest = {Source.DEMAND: demand_threads, Source.PREFETCH: prefetch_threads}
        self._latency = latency
        self._fetches = 0
        self.limit = max(demand_threads, prefetch_threads)
        self.window = WINDOW[1]  # the stream read-ahead's first window, by the latency
        self._prefetchers = prefetch_threads
        self._threads = WorkerThreads(demand_threads + prefetch_threads)
        self.enabled = enabled
        # One queue and a fixed set of workers: a task per prefetched chunk cost more than
        # the reads it sped up (bench/coldstart.py, py-spy).
        self._queue: list[tuple[int, int, ChunkRef]] = []  # heap of (priority, seq, chunk)
        self._queued: dict[str, int] = {}  # id -> best priority it is queued at
        self._seq = itertools.count()
        self._pending = trio.Semaphore(0)  # one token per heap item
        self._unread: dict[str, int] = {}  # prefetched, never read since: id -> bytes
        self._kept: set[str] = set()  # put in the disk cache by a disk-only prefetch
        self._unread_bytes = 0
        self._working = 0  # prefetch workers busy with a chunk
        self._drained = trio.Event()  # set while nothing is queued or being prefetched
        self._drained.set()
        self.retry = retry
        self._running = False
        self.counters = FetcherCounters()
        self._latencies: deque = deque(maxlen=10_000)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Start the fetch threads, and run the prefetch workers until cancelled."""
        self._threads.start()
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self._prefetchers):
                    nursery.start_soon(self._prefetch_worker)
                self._running = True
                task_status.started()
        finally:
            self._threads.stop()

    # -- memory ------------------------------------------------------------------------------

    def cached(self, id: str) -> bytes | None:
        return self._memory.get(id)

    # -- fetching ----------------------------------------------------------------------------

    def used(self, chunk: ChunkRef) -> None:
        """A reader used the chunk without asking for it here (a passthrough open): what
        was prefetched for it is not waste."""
        if chunk.id in self._unread:
            self._unread_bytes -= self._unread.pop(chunk.id)

    async def get(self, chunk: ChunkRef, source: Source = Source.DEMAND) -> bytes:
        """The chunk's verified bytes; raises the store's error after the last retry."""
        if source is Source.DEMAND:
            self.used(chunk)
        data = self.cached(chunk.id)
        if data is not None:
            self.counters.memory_hits += 1
            self.counters.memory_bytes += len(data)
            return data
        started = trio.current_time()
        try:
            flight = self._inflight.get(chunk.id)
            if flight is not None:
                self.counters.waited += 1
                await flight.event.wait()
                if flight.error is not None:
                    raise flight.error
                return flight.data  # type: ignore[return-value]
            return await self._fly(chunk, source)
        finally:
            if source is Source.DEMAND:
                self.counters.wait_seconds += trio.current_time() - started

    async def _fly(self, chunk: ChunkRef, source: Source, remember: bool = True) -> bytes:
        flight = self._inflight[chunk.id] = _Flight()
        started = time.monotonic()
        try:
            flight.data = await self._fetch_with_retries(chunk, source, self._policy(chunk.id))
            self._failed.clear()  # the store answers again
            if remember or flight.event.statistics().tasks_waiting:
                self._memory.put(chunk.id, flight.data)
            if source is Source.DEMAND:
                self.counters.demand_fetches += 1
                self._latencies.append(time.monotonic() - started)
            else:
                self.counters.prefetches += 1
                self.counters.prefetched_bytes += chunk.size
                if not flight.event.statistics().tasks_waiting and (  # no reader wanted it
                        chunk.id not in self._unread):
                    self._unread[chunk.id] = chunk.size
                    self._unread_bytes += chunk.size
            return flight.data
        except BaseException as exc:
            flight.error = exc
            self.counters.errors += 1
            if isinstance(exc, StoreUnavailable) and source is Source.DEMAND:
                # (a prefetch that failed is no reader's wait: the first read asks anew)
                self._failed[chunk.id] = (trio.current_time() + FAILED_TTL,
                                          isinstance(exc, _OutOfBudget))
            raise
        finally:
            del self._inflight[chunk.id]
            flight.event.set()

    def _policy(self, id: str) -> RetryPolicy:
        until, out_of_budget = self._failed.get(id, (-math.inf, False))
        if until <= trio.current_time():
            return self.retry
        if out_of_budget:
            raise _OutOfBudget(f"chunk {id}: the store did not answer it within "
                               f"{self.retry.budget:g}s moments ago, nor anything since")
        return RetryPolicy(attempts=1, attempt_timeout=min(QUICK_ATTEMPT,
                           self.retry.attempt_timeout), budget=QUICK_ATTEMPT)

    async def _fetch_with_retries(self, chunk: ChunkRef, source: Source,
                                  policy: RetryPolicy) -> bytes:
        last: Exception | None = None
        started = trio.current_time()
        with trio.move_on_after(policy.budget):
            for attempt in range(policy.attempts):
                try:
                    with trio.fail_after(policy.attempt_timeout):
                        return await self._fetch_once(chunk, source)
                except (StoreUnavailable, trio.TooSlowError) as exc:
                    last = exc
                    if attempt + 1 == policy.attempts:
                        break
                    self.counters.retries += 1
                    log.info("chunk %s: %s; retrying", chunk.id,
                             exc if str(exc) else "no answer within "
                             f"{policy.attempt_timeout:g}s")
                    await trio.sleep(policy.delay(attempt))
        ran_out = trio.current_time() - started >= policy.budget
        error = _OutOfBudget if ran_out else StoreUnavailable
        if isinstance(last, StoreUnavailable):
            raise error(f"{last} (gave up after {policy.budget:g}s)") from None
        raise error(f"chunk {chunk.id}: the store did not answer within "
                    f"{policy.budget:g}s") from None

    async def _fetch_once(self, chunk: ChunkRef, source: Source) -> bytes:
        """One attempt, in a worker thread, under its source's limit."""
        async with self._limiters[source]:
            data = await self._threads.run(self._fetch_sync, chunk.id, chunk.size)
        self._fetches += 1
        if self._fetches % EVERY == 0:
            self._size_limits()
        return data

    def _size_limits(self) -> None:
        """Fetches in flight, by the store's latency now (``inflight``)."""
        sample = self._latency()
        if sample is None:
            return
        self.window = stream_window(sample[0])
        limit = in_flight(*sample, low=2, high=max(self._highest.values()))
        if limit == self.limit:
            return
        self.limit = limit
        for source, limiter in self._limiters.items():
            limiter.total_tokens = max(1, min(limit, self._highest[source]))
        self._gate.total_tokens = self._limiters[Source.PREFETCH].total_tokens
        log.debug("fetches in flight against the store: at most %d (its latency %.1f ms)",
                  limit, sample[0] * 1000)

    # -- prefetch ----------------------------------------------------------------------------

    def prefetch(self, chunks: list[ChunkRef], priority: Priority = Priority.READ_AHEAD
                 ) -> int:
        """Fetch these chunks in the background, in this order after every chunk queued at
        a higher priority, unless cached, in flight or queued at that priority or higher
        already. Returns how many were queued."""
        if not self._running or not self.enabled:
            return 0
        queued = 0
        for c in chunks:
            if c.id in self._memory or c.id in self._inflight or (
                    self._queued.get(c.id, math.inf) <= priority):
                continue
            self._queued[c.id] = priority
            heapq.heappush(self._queue, (priority, next(self._seq), c))
            self._pending.release()
            queued += 1
        if queued and self._drained.is_set():
            self._drained = trio.Event()
        return queued

    async def wait_drained(self) -> None:
        """Until nothing is queued or being prefetched (a demand read may still fly)."""
        while self._queued or self._working:
            await self._drained.wait()

    async def _on_disk_now(self, id: str) -> bool:
        async with self._limiters[Source.PREFETCH]:
            return await self._threads.run(self._on_disk, id)

    def queued(self) -> int:
        return len(self._queued)

    def requested(self, id: str) -> bool:
        """Whether this chunk is in memory, in flight or queued."""
        return id in self._memory or id in self._inflight or id in self._queued

    async def _prefetch_worker(self) -> None:
        while True:
            await self._pending.acquire()
            async with self._gate:  # the best chunk is taken when there is room for it
                priority, _, chunk = heapq.heappop(self._queue)
                if self._queued.get(chunk.id) != priority:
                    continue  # moved up: this is the stale copy
                del self._queued[chunk.id]
                self._working += 1
                try:
                    await self._prefetch_one(priority, chunk)
                finally:
                    self._working -= 1
                    if not self._queued and not self._working:
                        self._drained.set()

    async def _prefetch_one(self, priority: int, chunk: ChunkRef) -> None:
        if chunk.id in self._memory or chunk.id in self._inflight:
            return
        try:
            if priority < Priority.WARM:
                await self._fly(chunk, Source.PREFETCH)
            # These go to the disk cache only: keeping them in memory would push out
            # what the workload reads now.
            elif chunk.id not in self._kept and not await self._on_disk_now(chunk.id) \
                    and not self.requested(chunk.id) and chunk.id not in self._kept:
                # (asked for again while the disk was looked at: that one fetches it)
                await self._fly(chunk, Source.PREFETCH, remember=False)
                self._kept.add(chunk.id)
        except Exception as exc:  # noqa: BLE001 - a demand read will report it
            log.debug("prefetch of %s failed: %s", chunk.id, exc)

    def statistics(self) -> FetcherStats:
        return FetcherStats(**asdict(self.counters), memory_cached_bytes=self._memory.size,
                            prefetched_unread_bytes=self._unread_bytes,
                            prefetch_queued=len(self._queued),
                            fetch_latency_ms=percentiles(sorted(self._latencies)),
                            fetch_limit=self.limit)
