"""The chunk fetcher: memory LRU, one fetch per chunk, separate thread limiters, retries.

Threading model: every method runs on the trio thread. Store calls (disk cache, S3, which
block and decompress) go to worker threads through ``trio.to_thread.run_sync`` with one
``CapacityLimiter`` for demand reads and another for prefetch, so prefetch never starves a
reader. A chunk asked for while it is in flight is waited for, never fetched twice. A store
that fails or hangs is retried with capped exponential back-off and jitter (``trio.sleep``,
so tests run it on trio's autojump clock), each attempt bounded by ``attempt_timeout`` and
all of them together by ``budget`` (``--store-timeout``); then the error goes up and that
read gets EIO, while the mount stays up. A chunk that has failed so in the last
``FAILED_TTL`` seconds (and the store has not answered since) gets one short attempt, not a
whole budget: the kernel re-asks a failed read-ahead page synchronously, and that second ask
must not double the time a reader waits on a hung store. Bytes that fail verification are
never cached or served: the tier below raises ``BlobCorrupt`` and it is not retried.
"""

from __future__ import annotations

import enum
import logging
import math
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

from blobstore.errors import StoreUnavailable
from blobstore.manifest import ChunkRef
from blobstore.tiers import percentiles

from .stats import FetcherStats

log = logging.getLogger(__name__)
FAILED_TTL = 2.0
QUICK_ATTEMPT = 1.0  # seconds: the one attempt a chunk that just failed gets


class Source(enum.Enum):
    DEMAND = "demand"
    PREFETCH = "prefetch"


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
                 memory_bytes: int = 256 << 20, demand_threads: int = 16,
                 prefetch_threads: int = 4, retry: RetryPolicy = RetryPolicy()) -> None:
        self._fetch_sync = fetch_sync  # (id, size) -> verified bytes; blocking
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._memory_bytes = 0
        self.memory_limit = memory_bytes
        self._inflight: dict[str, _Flight] = {}
        self._failed: dict[str, float] = {}  # id -> until when it gets one short attempt
        self._limiters = {Source.DEMAND: trio.CapacityLimiter(demand_threads),
                          Source.PREFETCH: trio.CapacityLimiter(prefetch_threads)}
        self._prefetchers = prefetch_threads
        # One queue and a fixed set of workers: a task per prefetched chunk cost more than
        # the reads it sped up (bench/coldstart.py, py-spy).
        self._queued: set[str] = set()
        self._send, self._recv = trio.open_memory_channel[ChunkRef](math.inf)
        self.retry = retry
        self._running = False
        self.counts = {"memory_hits": 0, "memory_bytes": 0, "waited": 0, "demand_fetches": 0,
                       "prefetches": 0, "errors": 0, "retries": 0}
        self._latencies: deque = deque(maxlen=10_000)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run the prefetch workers until cancelled."""
        async with trio.open_nursery() as nursery:
            for _ in range(self._prefetchers):
                nursery.start_soon(self._prefetch_worker)
            self._running = True
            task_status.started()

    # -- memory ------------------------------------------------------------------------------

    def cached(self, id: str) -> bytes | None:
        data = self._memory.get(id)
        if data is not None:
            self._memory.move_to_end(id)
        return data

    def _remember(self, id: str, data: bytes) -> None:
        if id in self._memory or len(data) > self.memory_limit:
            return
        self._memory[id] = data
        self._memory_bytes += len(data)
        while self._memory_bytes > self.memory_limit:
            _, old = self._memory.popitem(last=False)
            self._memory_bytes -= len(old)

    # -- fetching ----------------------------------------------------------------------------

    async def get(self, chunk: ChunkRef, source: Source = Source.DEMAND) -> bytes:
        """The chunk's verified bytes; raises the store's error after the last retry."""
        data = self.cached(chunk.id)
        if data is not None:
            self.counts["memory_hits"] += 1
            self.counts["memory_bytes"] += len(data)
            return data
        flight = self._inflight.get(chunk.id)
        if flight is not None:
            self.counts["waited"] += 1
            await flight.event.wait()
            if flight.error is not None:
                raise flight.error
            return flight.data  # type: ignore[return-value]
        return await self._fly(chunk, source)

    async def _fly(self, chunk: ChunkRef, source: Source) -> bytes:
        flight = self._inflight[chunk.id] = _Flight()
        started = time.monotonic()
        try:
            flight.data = await self._fetch_with_retries(chunk, source, self._policy(chunk.id))
            self._failed.clear()  # the store answers again
            self._remember(chunk.id, flight.data)
            key = "demand_fetches" if source is Source.DEMAND else "prefetches"
            self.counts[key] += 1
            if source is Source.DEMAND:
                self._latencies.append(time.monotonic() - started)
            return flight.data
        except BaseException as exc:
            flight.error = exc
            self.counts["errors"] += 1
            if isinstance(exc, StoreUnavailable):
                self._failed[chunk.id] = trio.current_time() + FAILED_TTL
            raise
        finally:
            del self._inflight[chunk.id]
            flight.event.set()

    def _policy(self, id: str) -> RetryPolicy:
        if self._failed.get(id, -math.inf) > trio.current_time():
            return RetryPolicy(attempts=1, attempt_timeout=min(QUICK_ATTEMPT,
                               self.retry.attempt_timeout), budget=QUICK_ATTEMPT)
        return self.retry

    async def _fetch_with_retries(self, chunk: ChunkRef, source: Source,
                                  policy: RetryPolicy) -> bytes:
        last: Exception | None = None
        with trio.move_on_after(policy.budget):
            for attempt in range(policy.attempts):
                try:
                    with trio.fail_after(policy.attempt_timeout):
                        return await trio.to_thread.run_sync(
                            self._fetch_sync, chunk.id, chunk.size,
                            limiter=self._limiters[source], abandon_on_cancel=True)
                except (StoreUnavailable, trio.TooSlowError) as exc:
                    last = exc
                    if attempt + 1 == policy.attempts:
                        break
                    self.counts["retries"] += 1
                    log.info("chunk %s: %s; retrying", chunk.id,
                             exc if str(exc) else "no answer within "
                             f"{policy.attempt_timeout:g}s")
                    await trio.sleep(policy.delay(attempt))
        if isinstance(last, StoreUnavailable):
            raise StoreUnavailable(f"{last} (gave up after {policy.budget:g}s)") from None
        raise StoreUnavailable(f"chunk {chunk.id}: the store did not answer within "
                               f"{policy.budget:g}s") from None

    # -- prefetch ----------------------------------------------------------------------------

    def prefetch(self, chunks: list[ChunkRef]) -> None:
        """Fetch these chunks in the background, in order, unless cached, queued or in
        flight already."""
        if not self._running:
            return
        for c in chunks:
            if c.id not in self._memory and c.id not in self._inflight and (
                    c.id not in self._queued):
                self._queued.add(c.id)
                self._send.send_nowait(c)

    async def _prefetch_worker(self) -> None:
        async for chunk in self._recv:
            self._queued.discard(chunk.id)
            if chunk.id in self._memory or chunk.id in self._inflight:
                continue
            try:
                await self._fly(chunk, Source.PREFETCH)
            except Exception as exc:  # noqa: BLE001 - a demand read will report it
                log.debug("prefetch of %s failed: %s", chunk.id, exc)

    def statistics(self) -> FetcherStats:
        return FetcherStats(**self.counts, memory_cached_bytes=self._memory_bytes,
                            fetch_latency_ms=percentiles(sorted(self._latencies)))
