"""``in_order``: run a fetch for each index in a pool, ahead of the consumer but at most a
window ahead, and hand the results over in order. Export and the restorer read images
through it (bounded memory, parallel requests, the consumer sees the stream's order).

Closing the generator early (the consumer failed or stopped) cancels the fetches not yet
started and waits for the running ones; a fetch's error is raised when its turn comes, so
nothing after it is consumed. The generator belongs to one consumer thread; ``fetch`` runs
in the pool's threads and must be thread-safe.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def in_order(order: Iterable[int], fetch: Callable[[int], T], *, jobs: int = 8,
             window: int = 16, thread_name: str = "thaw-fetch") -> Iterator[tuple[int, T]]:
    """``(index, fetch(index))`` for each index of ``order``, in that order."""
    pending: deque[tuple[int, Future]] = deque()
    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix=thread_name) as pool:
        try:
            for index in order:
                pending.append((index, pool.submit(fetch, index)))
                if len(pending) >= window:
                    i, fut = pending.popleft()
                    yield i, fut.result()
            while pending:
                i, fut = pending.popleft()
                yield i, fut.result()
        finally:
            for _, fut in pending:
                fut.cancel()
