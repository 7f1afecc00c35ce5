"""A mount, put together in one place: ``Mount.run()`` makes each part, the read path
(tiers and fetcher), what learns hints and what else is prefetched, the namespace, the node
reporter (the daemon's), the lease that keeps its images from ``thaw gc``, metrics and the
FUSE session, and registers each one's teardown right after it on an ``AsyncExitStack``
(as s3ql's mount does), so whatever fails to start leaves the parts before it torn down in
reverse order.

A ``Mount`` serves one image (``image=(manifest id, manifest)``: ``thaw mount``) or every
image of a store (``thaw daemon``, with ``NodeOptions``). Built from the command line on the
main thread (after the mount point was checked there, so errors reach the person);
everything after ``trio.run`` is on the trio thread, with store calls in worker threads.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack

import trio

from blobstore.image.dirmanifest import DirManifest
from blobstore.lifecycle.leases import REFRESH, Lease
from blobstore.ops.nodereport import peer_urls
from blobstore.store.base import ObjectStore
from blobstore.store.blobs import BlobStore
from blobstore.store.diskcache import DiskCache
from blobstore.store.peers import Membership, PeerTier
from blobstore.store.retrying import without_retries
from blobstore.store.tiers import NodeTiers, node_tiers

from .fetch import ChunkFetcher, RetryPolicy
from .learn import Learners
from .materialize import Materializer
from .mount import answer_until_stopped, fuse_session
from .namespace import SingleImage, StoreImages
from .ops import ImageOps, Namespace
from .options import MountOptions, NodeOptions
from .passthrough import Passthrough
from .prefetch import Warmer, queue_image
from .reporter import NodeReporter
from .stats import MountStats
from .tree import FsTree

log = logging.getLogger(__name__)
_M_ARENA_MAX = -8  # glibc's mallopt parameter


def one_malloc_arena() -> None:
    """Make glibc serve every thread from one malloc arena. By default each of the fetch
    threads gets its own, and chunks freed in one arena are not reused by the others, so
    resident memory grows well past ``--memory``: reading a 1 GiB file at ``--memory 256M``
    peaked at 450 MB. With one arena it peaks at 340 MB at the same speed (about 600 MiB/s
    from the disk cache); fixing the mmap threshold instead kept it at 305 MB but halved
    the speed, since every chunk then costs a fresh mapping (measured side by side on a
    2-core machine). The threads allocate under the GIL anyway, so one arena adds little
    contention. Not glibc: nothing to do."""
    try:
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 1)  # this process's symbols: libc's
    except (OSError, AttributeError) as exc:
        log.info("could not limit malloc's arenas: %s", exc)


class Mount:
    """One mount's parts, made and torn down by ``run()`` (see the module docstring)."""

    def __init__(self, objects: ObjectStore, mountpoint: str, opts: MountOptions, *,
                 image: tuple[str, DirManifest] | None = None, node: NodeOptions | None = None,
                 on_ready: Callable[[], None] = lambda: None) -> None:
        self.objects, self.opts, self.image = objects, opts, image
        self.mountpoint = os.path.realpath(mountpoint)
        self.node = node or NodeOptions()
        self.on_ready = on_ready
        self.served: set[str] = set()  # every image served so far: leased against gc

    def run(self) -> None:
        """Serve until a signal or an unmount."""
        one_malloc_arena()
        trio.run(self._run)

    async def _run(self) -> None:
        opts, objects = self.opts, self.objects
        tiers = node_tiers(BlobStore(without_retries(objects)),
                           DiskCache(opts.cache_dir, opts.cache_bytes), peer_tier(objects, opts))
        # The fetcher retries within store_timeout itself: it reads the store bare.
        fetcher = ChunkFetcher(lambda id, size: tiers.stack.get(id, max_size=size),
                               memory_bytes=opts.memory_bytes,
                               retry=RetryPolicy.within(opts.store_timeout),
                               enabled=opts.prefetch != "none", on_disk=tiers.disk.has,
                               latency=tiers.store.stats.recent)
        passthrough = Passthrough(opts.passthrough)
        passthrough.say_why()
        files = Materializer(tiers.disk.inner) if passthrough.enabled else None

        def prefetched(tree: FsTree) -> None:
            if files:
                files.after_prefetch(tree, fetcher.wait_drained)

        learners = None if not opts.hints else Learners(
            objects, fetcher, workload=opts.hints, window=opts.hints_window,
            max_bytes=opts.cache_bytes // 2, on_queued=prefetched)
        reporter = None if self.image else NodeReporter(
            objects, tiers.disk.inner, node_id=self.node.node_id, gpus=self.node.gpus,
            interval=self.node.report_interval, peer_url=self.node.peer_url)
        namespace = self._namespace(tiers, fetcher, learners, reporter, prefetched)

        def statistics() -> MountStats:
            return MountStats.collect(namespace.images(), tiers, fetcher.statistics(),
                                      learners.hinted() if learners else 0, namespace.kind,
                                      passthrough=passthrough.state(),
                                      passthrough_opens=passthrough.opens,
                                      passthrough_files=files.ready_count if files else 0)

        ops = ImageOps(namespace, fetcher, learners.read if learners else None, statistics,
                       Warmer(objects, fetcher, workload=opts.hints,
                              max_bytes=opts.cache_bytes // 2, on_queued=prefetched).warm,
                       passthrough, files)
        publish = self._metrics(ops.stats_now)
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(fuse_session(ops, self.mountpoint))
            nursery = await stack.enter_async_context(trio.open_nursery())
            stack.callback(nursery.cancel_scope.cancel)  # on the way out, before the wait
            await nursery.start(fetcher.run)
            if files:
                await nursery.start(files.run)
            if learners:
                await nursery.start(learners.run)
            if reporter:
                await nursery.start(reporter.run)
                await nursery.start(prepare_store, objects)
            await nursery.start(keep_lease, Lease(objects, "mount"), lambda: tuple(self.served))
            if self.image and opts.prefetch == "all" and queue_image(
                    fetcher, namespace.tree, opts.image_budget(tiers.disk.inner)):
                prefetched(namespace.tree)
            await answer_until_stopped(ops, self.mountpoint, nursery,
                                       on_ready=self.on_ready, publish=publish)

    def _namespace(self, tiers: NodeTiers, fetcher: ChunkFetcher, learners: Learners | None,
                   reporter: NodeReporter | None,
                   prefetched: Callable[[FsTree], None]) -> Namespace:
        """One image, or every image of the store: each one, as it is first used, is
        leased, reported, learnt from, and (``--prefetch all``) queued whole."""
        if self.image:
            mid, manifest = self.image
            tree = FsTree(manifest, image_id=mid)
            self.served.add(mid)
            if learners:
                learners.add(tree)
            return SingleImage(mid, tree)

        def on_image(tree: FsTree) -> None:
            self.served.add(tree.image_id)
            reporter.add(tree.image_id, tree.manifest)
            if learners:
                learners.add(tree)
            if self.opts.prefetch == "all" and queue_image(
                    fetcher, tree, self.opts.image_budget(tiers.disk.inner)):
                prefetched(tree)

        return StoreImages(self.objects, on_image)

    def _metrics(self, statistics: Callable[[], MountStats]) -> Callable[[], None]:
        """What publishes the statistics to the Prometheus exporter, once a second; nothing
        without ``--metrics`` (prometheus_client costs 60-300 ms to import)."""
        if not self.opts.metrics:
            return lambda: None
        from .metrics import SnapshotCollector, start_metrics

        collector = SnapshotCollector()
        start_metrics(self.opts.metrics, collector)

        def publish() -> None:
            collector.snapshot = statistics()

        return publish


def peer_tier(objects: ObjectStore, opts: MountOptions) -> PeerTier | None:
    """The cache peers of ``--peers``, or None."""
    if not opts.peers:
        return None
    membership = Membership.parse(opts.peers, reports=lambda: peer_urls(objects))
    return PeerTier(membership, opts.self_url, opts.peer_token)


async def keep_lease(lease: Lease, images: Callable[[], Iterable[str]],
                     interval: float = REFRESH, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Lease the images this mount serves (``thaw gc`` keeps them), renewed every
    ``interval`` seconds, released when the mount ends."""
    task_status.started()
    try:
        while True:
            lease.add(manifests=tuple(images()))
            await trio.to_thread.run_sync(lease.refresh)
            await trio.sleep(interval)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(lease.release)


async def prepare_store(objects: ObjectStore, *, task_status=trio.TASK_STATUS_IGNORED
                        ) -> None:
    """The store's client set up before the daemon says it is ready: its first lookup
    lists the refs, and on S3 boto3's imports and set-up (~0.3 s, more on a cold page
    cache) were most of that lookup. A failure here is the listing's to report."""
    try:
        await trio.to_thread.run_sync(objects.prepare)
    except Exception as exc:  # noqa: BLE001 - only an early start; the listing raises it
        log.debug("setting up %s ahead of use: %s", objects, exc)
    task_status.started()
