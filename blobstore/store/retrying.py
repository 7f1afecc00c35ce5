"""``Retrying(store, budget)``: an object store whose calls retry transient failures within
a time budget, for the synchronous users (push, export, ls, restore, the daemon's metadata).

Only ``StoreUnavailable`` is retried (capped exponential back-off with jitter, as s3ql's
``@retry``); not-found, corrupt and configuration errors go up at once. The budget bounds
the whole call, attempts and pauses together: the backend bounds each attempt (an S3
request's connect and read timeouts), no new attempt starts that could not finish inside
the budget, and at most ``attempts`` are made (a refused connection fails fast). So a store
that hangs costs at most about ``budget`` seconds per call, then one ``StoreUnavailable``
that says how long it waited. A listing is retried only until it has yielded its first key
(a half-consumed listing cannot be resumed). The mount's trio fetcher keeps its own retries
and reads the backend directly. Thread-safe as the wrapped store is.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from ..errors import StoreUnavailable
from .base import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_BUDGET = 20.0


class Retrying(ObjectStore):
    def __init__(self, inner: ObjectStore, budget: float = DEFAULT_BUDGET, *,
                 attempt_timeout: float | None = None, attempts: int = 4, base: float = 0.2,
                 cap: float = 2.0,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``attempt_timeout``: how long one attempt may take (what the backend was opened
        with); no attempt starts with less than that left. Default: a third of the budget."""
        self.inner, self.budget = inner, budget
        self.attempt_timeout = budget / 3 if attempt_timeout is None else attempt_timeout
        self.attempts, self.base, self.cap = attempts, base, cap
        self._sleep, self._clock = sleep, clock

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        deadline = self._clock() + self.budget
        attempt = 0
        while True:
            try:
                return fn()
            except StoreUnavailable as exc:
                pause = min(self.cap, self.base * 2 ** attempt) * random.uniform(0.5, 1.0)
                if (attempt + 1 >= self.attempts
                        or self._clock() + pause + self.attempt_timeout > deadline):
                    raise StoreUnavailable(f"{exc} (gave up after {attempt + 1} attempts in "
                                           f"{self.budget:g}s; --store-timeout sets how long)"
                                           ) from None
                log.info("%s: %s; retrying", what, exc)
                self._sleep(pause)
                attempt += 1

    def get(self, key: str) -> bytes:
        return self._call(key, lambda: self.inner.get(key))

    def put(self, key: str, data: bytes) -> None:
        self._call(key, lambda: self.inner.put(key, data))

    def create(self, key: str, data: bytes) -> bool:
        return self._call(key, lambda: self.inner.create(key, data))

    def size(self, key: str) -> int:
        return self._call(key, lambda: self.inner.size(key))

    def delete(self, key: str) -> None:
        self._call(key, lambda: self.inner.delete(key))

    def delete_many(self, keys: list[str]) -> None:
        if keys:  # deleting again what is gone is harmless, so a batch is retried whole
            self._call(f"{keys[0]} and {len(keys) - 1} more",
                       lambda: self.inner.delete_many(keys))

    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        def first() -> tuple[Iterator[ObjectInfo], list]:
            it = self.inner.list_info(prefix)
            return it, [next(it, None)]

        it, head = self._call(f"listing {prefix or '/'}", first)
        if head[0] is not None:
            yield head[0]
            yield from it

    def prepare(self) -> None:
        self.inner.prepare()

    def close(self) -> None:
        self.inner.close()

    def __str__(self) -> str:
        return str(self.inner)


def without_retries(store: ObjectStore) -> ObjectStore:
    """The backend under a ``Retrying`` wrapper (for a caller with retries of its own)."""
    return store.inner if isinstance(store, Retrying) else store
