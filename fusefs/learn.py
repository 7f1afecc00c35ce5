"""Learn what a workload reads as it starts, and prefetch it the next time.

A mount records, for the first ``window`` seconds, the chunks of its image in the order they
were first read (``blobstore.image.hints.HintRecorder``), and saves them as
``hints/<manifest id>/<workload>`` when the window closes or the mount ends; runs are
merged, so the order settles over several starts. A later mount of the same image and
workload queues those chunks for prefetch, in that order, as soon as it is mounted: they
are on their way before the workload asks for them, at the prefetch priority, which never
starves a read. ``Learners`` keeps one learner per image a mount serves, started as the
image is first loaded (at once for ``thaw mount``, on first lookup in ``thaw daemon``).
trio: ``run`` is a task of the mount's nursery; store calls run in worker threads; ``read``
is called from the read handler.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import trio

from blobstore.errors import ThawError
from blobstore.image.dirmanifest import AnyManifest
from blobstore.image.hints import START, HintRecorder, load_hints, save_hints
from blobstore.image.manifest import ChunkRef
from blobstore.store.base import ObjectStore

from .fetch import ChunkFetcher, Priority
from .tree import FsTree

log = logging.getLogger(__name__)


def hinted_chunks(manifest: AnyManifest, order: list[int], max_bytes: int) -> list[ChunkRef]:
    """The chunks of ``order`` (hint indexes), first first, while their stored bytes fit
    ``max_bytes``."""
    out, total = [], 0
    for i in order:
        total += manifest.chunks[i].stored_size
        if total > max_bytes:
            break
        out.append(manifest.chunks[i])
    return out


class StartLearner:
    def __init__(self, objects: ObjectStore, manifest_id: str, manifest: AnyManifest,
                 fetcher: ChunkFetcher, *, workload: str = START, window: float = 60.0,
                 max_bytes: int = 1 << 62, on_queued: Callable[[], None] | None = None
                 ) -> None:
        """``max_bytes``: prefetch at most this much of the hinted chunks (the first ones,
        in order), so that a start which read a lot does not evict it all again;
        ``on_queued``: called once the hinted chunks are queued, if any were."""
        self.objects, self.mid, self.manifest = objects, manifest_id, manifest
        self.fetcher, self.workload, self.window = fetcher, workload, window
        self.max_bytes, self.on_queued = max_bytes, on_queued
        self.recorder: HintRecorder | None = HintRecorder()
        self.hinted = 0  # chunks queued from earlier starts

    def read(self, chunk_index: int) -> None:
        """The read handler fetched this chunk for the workload."""
        if self.recorder is not None:
            self.recorder.read(chunk_index)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Queue the hinted chunks, then record until the window closes or the mount ends."""
        try:
            order = await trio.to_thread.run_sync(load_hints, self.objects, self.mid,
                                                  self.workload, len(self.manifest.chunks))
        except ThawError as exc:
            log.warning("image %s: hints not loaded, nothing prefetched: %s", self.mid[:12],
                        exc)
            order = []
        queued = hinted_chunks(self.manifest, order, self.max_bytes)
        self.hinted = self.fetcher.prefetch(queued, Priority.HINTS)
        if self.hinted:
            log.info("image %s: prefetching %d chunks that %r read last time", self.mid[:12],
                     self.hinted, self.workload)
            if self.on_queued:
                self.on_queued()
        task_status.started()
        try:
            await trio.sleep(self.window)
        finally:
            with trio.CancelScope(shield=True):  # an unmount still saves what it saw
                await self._save()
            self.manifest = None  # the daemon may drop the image's tree: hold nothing of it

    async def _save(self) -> None:
        recorder, self.recorder = self.recorder, None
        seen = recorder.recording() if recorder is not None else {}
        if not seen:
            return
        try:
            wrote = await trio.to_thread.run_sync(save_hints, self.objects, self.mid,
                                                  self.workload, seen)
            if wrote:
                log.info("image %s: saved the order of %d chunks read as hints %r",
                         self.mid[:12], len(seen), self.workload)
            else:
                log.info("image %s: %d chunks read in the order of hints %r, left as they "
                         "were", self.mid[:12], len(seen), self.workload)
        except ThawError as exc:
            log.warning("image %s: hints not saved: %s", self.mid[:12], exc)


class Learners:
    """A ``StartLearner`` for each image of a mount, started when the image is added."""

    def __init__(self, objects: ObjectStore, fetcher: ChunkFetcher, *, workload: str = START,
                 window: float = 60.0, max_bytes: int = 1 << 62,
                 on_queued: Callable[[FsTree], None] | None = None) -> None:
        """``on_queued``: called with an image's tree once its hinted chunks are queued."""
        self.objects, self.fetcher, self.on_queued = objects, fetcher, on_queued
        self.options = {"workload": workload, "window": window, "max_bytes": max_bytes}
        self.learners: dict[str, StartLearner] = {}
        self._send, self._recv = trio.open_memory_channel[StartLearner](math.inf)

    def add(self, tree: FsTree) -> None:
        """Learn for this image from now on (trio thread; does not block)."""
        if tree.image_id and tree.image_id not in self.learners:
            on_queued = self.on_queued
            learner = StartLearner(self.objects, tree.image_id, tree.manifest, self.fetcher,
                                   **self.options,
                                   on_queued=on_queued and (lambda: on_queued(tree)))
            self.learners[tree.image_id] = learner
            self._send.send_nowait(learner)

    def hinted(self) -> int:
        """Chunks queued for prefetch from hints, over every image."""
        return sum(learner.hinted for learner in self.learners.values())

    def read(self, tree: FsTree, chunk_index: int) -> None:
        learner = self.learners.get(tree.image_id)
        if learner is not None:
            learner.read(chunk_index)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            while True:  # images added before the mount is up are queued before it answers
                try:
                    learner = self._recv.receive_nowait()
                except trio.WouldBlock:
                    break
                await nursery.start(learner.run)
            task_status.started()
            async for learner in self._recv:
                nursery.start_soon(learner.run)
