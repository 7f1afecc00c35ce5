"""Long-lived worker threads for the fetcher's blocking store calls.

``trio.to_thread`` starts a thread for each call that finds no idle one and lets idle ones
exit after 10 s; starting one waits (in ``Thread.start``, on the trio thread) until the new
thread has taken the GIL. In a daemon whose first image use fires 64 fetches at once while
30 other threads decompress and verify, that wait was a quarter of the trio thread's time
and made a start with every chunk already prefetched 5x slower than with warm threads
(py-spy). ``WorkerThreads`` starts its threads once, from a thread of its own while the
mount comes up (``start``), and keeps them; a call from trio waits without holding a
thread of its own and, if cancelled, abandons the call (its result is dropped), as
``abandon_on_cancel``.
How many run at once is the callers' business (the fetcher's limiters); the pool has a
thread for each, and up to as many again while abandoned calls (a hung store) hold some of
them. Threads that were never started by ``start`` (tests that call the fetcher
without running it) are started as needed and exit after ``idle`` seconds.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import outcome
import trio

IDLE = 10.0


class WorkerThreads:
    def __init__(self, size: int, name: str = "thaw-fetch") -> None:
        self.size, self.name = size, name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._keep = False

    def start(self) -> None:
        """Start every thread, to live until ``stop``: from a thread of its own, so that the
        mount's INIT is not kept waiting for 64 of them (~6 ms); a call that finds none idle
        meanwhile starts one itself, as ever."""
        with self._lock:
            self._keep = True
        threading.Thread(target=self._fill, name=f"{self.name}-start", daemon=True).start()

    def _fill(self) -> None:
        while True:
            with self._lock:
                if not self._keep or self._threads >= self.size:
                    return
            self._spawn()

    def stop(self) -> None:
        with self._lock:
            self._keep = False
            threads = self._threads
        for _ in range(threads):
            self._jobs.put(None)

    def _spawn(self) -> None:
        with self._lock:
            self._threads += 1
            n = self._threads
        threading.Thread(target=self._work, name=f"{self.name}-{n}", daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
                keep = self._keep
            try:
                job = self._jobs.get(timeout=None if keep else IDLE)
            except queue.Empty:
                job = None
            with self._lock:
                self._idle -= 1
                if job is None:
                    self._threads -= 1
                    return
            fn, args, deliver = job
            deliver(outcome.capture(fn, *args))

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a worker thread; cancellation abandons it."""
        token = trio.lowlevel.current_trio_token()
        task = trio.lowlevel.current_task()
        abandoned = False

        def resume(result: outcome.Outcome) -> None:
            if not abandoned:
                trio.lowlevel.reschedule(task, result)

        def deliver(result: outcome.Outcome) -> None:
            try:
                token.run_sync_soon(resume, result)
            except trio.RunFinishedError:
                pass

        def abort(_raise_cancel) -> trio.lowlevel.Abort:
            nonlocal abandoned
            abandoned = True
            return trio.lowlevel.Abort.SUCCEEDED

        with self._lock:
            spawn = self._idle == 0 and self._threads < 2 * self.size
        if spawn:
            self._spawn()
        self._jobs.put((fn, args, deliver))
        return await trio.lowlevel.wait_task_rescheduled(abort)
