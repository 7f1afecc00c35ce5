"""Putting a mount together, in one place: the read path (tiers and fetcher), what learns
hints and what else is prefetched, the lease that keeps its images from ``thaw gc``, the
namespace, the node reporter, metrics, and serving.

``mount_image`` (one image) and ``run_daemon`` (every image of a store) take a
``MountOptions`` record, the daemon a ``NodeOptions`` too; each builds its parts with
``_read_path`` and hands them to ``_serve``, which runs trio. Called from the command line
on the main thread (after the mount point was checked there, so errors reach the person);
everything after ``trio.run`` is on the trio thread, with store calls in worker threads.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Iterable

import trio

from blobstore.base import ObjectStore
from blobstore.blobs import BlobStore
from blobstore.dirmanifest import DirManifest
from blobstore.diskcache import DiskCache
from blobstore.leases import REFRESH, Lease
from blobstore.nodereport import peer_urls
from blobstore.peers import Membership, PeerTier
from blobstore.retrying import without_retries
from blobstore.tiers import NodeTiers, node_tiers

from .fetch import ChunkFetcher, RetryPolicy
from .learn import Learners
from .mount import serve
from .namespace import SingleImage, StoreImages
from .ops import Namespace
from .options import MountOptions, NodeOptions
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


def _read_path(objects: ObjectStore, opts: MountOptions
               ) -> tuple[NodeTiers, ChunkFetcher, Learners | None, Warmer]:
    """Memory (the fetcher) over the node's tiers (``node_tiers``: disk cache over the
    store). The fetcher retries within ``store_timeout`` itself, so it reads the store
    without ``Retrying``. With ``hints`` (a workload): prefetch what that workload read at
    its last starts of an image, and record this start (``Learners``)."""
    one_malloc_arena()
    tiers = node_tiers(BlobStore(without_retries(objects)),
                       DiskCache(opts.cache_dir, opts.cache_bytes), peer_tier(objects, opts))
    fetcher = ChunkFetcher(lambda id, size: tiers.stack.get(id, max_size=size),
                           memory_bytes=opts.memory_bytes,
                           retry=RetryPolicy.within(opts.store_timeout),
                           enabled=opts.prefetch != "none", on_disk=tiers.disk.has)
    learners = None if not opts.hints else Learners(
        objects, fetcher, workload=opts.hints, window=opts.hints_window,
        max_bytes=opts.cache_bytes // 2)
    warmer = Warmer(objects, fetcher, workload=opts.hints, max_bytes=opts.cache_bytes // 2)
    return tiers, fetcher, learners, warmer


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


def _serve(namespace: Namespace, tiers: NodeTiers, fetcher: ChunkFetcher,
           learners: Learners | None, warmer: Warmer, mountpoint: str, opts: MountOptions,
           on_ready: Callable[[], None], extra=(), objects: ObjectStore | None = None,
           leased: Callable[[], Iterable[str]] = lambda: ()) -> None:
    """``leased``: the manifests to hold against ``thaw gc`` (every image served so far:
    a tree the daemon dropped while idle may still be in a pod's use)."""
    collector = None
    if opts.metrics:  # prometheus_client costs 60-300 ms to import: only when asked for
        from .metrics import SnapshotCollector, start_metrics

        collector = SnapshotCollector()
        start_metrics(opts.metrics, collector)
    if objects is not None:
        lease = Lease(objects, "mount")
        extra = (*extra, lambda task_status=trio.TASK_STATUS_IGNORED: keep_lease(
            lease, leased, task_status=task_status))

    def statistics() -> MountStats:
        return MountStats.collect(namespace.images(), tiers, fetcher.statistics(),
                                  learners.hinted() if learners else 0, namespace.kind)

    def publish() -> None:
        if collector is not None:
            collector.snapshot = statistics()

    trio.run(lambda: serve(namespace, fetcher, mountpoint, on_ready=on_ready,
                           publish=publish, statistics=statistics,
                           extra=(*extra, learners.run) if learners else extra,
                           on_chunk_read=learners.read if learners else None,
                           on_warm=warmer.warm))


def mount_image(objects: ObjectStore, mid: str, manifest: DirManifest, mountpoint: str,
                opts: MountOptions, on_ready: Callable[[], None] = lambda: None) -> None:
    """Mount one image read-only at ``mountpoint`` until unmounted or signalled."""
    tiers, fetcher, learners, warmer = _read_path(objects, opts)
    tree = FsTree(manifest, image_id=mid)
    if learners:
        learners.add(tree)
    extra = ()
    if opts.prefetch == "all":
        async def prefetch_image(task_status=trio.TASK_STATUS_IGNORED) -> None:
            queue_image(fetcher, tree, opts.image_budget(tiers.disk.inner))
            task_status.started()

        extra = (prefetch_image,)
    _serve(SingleImage(mid, tree), tiers, fetcher, learners, warmer, mountpoint, opts,
           on_ready, extra, objects, leased=lambda: (mid,))


def run_daemon(objects: ObjectStore, mountpoint: str, opts: MountOptions,
               node: NodeOptions | None = None,
               on_ready: Callable[[], None] = lambda: None) -> None:
    """Serve every image of the store under ``mountpoint``: ``<id>/`` and ``refs/``; write
    this node's report to ``nodes/<node id>.json`` every ``report_interval`` seconds."""
    node = node or NodeOptions()
    tiers, fetcher, learners, warmer = _read_path(objects, opts)
    assert tiers.disk is not None
    reporter = NodeReporter(objects, tiers.disk.inner, node_id=node.node_id, gpus=node.gpus,
                            interval=node.report_interval, peer_url=node.peer_url)

    served: set[str] = set()

    def on_image(tree: FsTree) -> None:
        served.add(tree.image_id)
        reporter.add(tree.image_id, tree.manifest)
        if learners:
            learners.add(tree)
        if opts.prefetch == "all":
            queue_image(fetcher, tree, opts.image_budget(tiers.disk.inner))

    _serve(StoreImages(objects, on_image), tiers, fetcher, learners, warmer, mountpoint, opts,
           on_ready, extra=(reporter.run, lambda task_status=trio.TASK_STATUS_IGNORED:
                            prepare_store(objects, task_status=task_status)),
           objects=objects, leased=lambda: tuple(served))


async def prepare_store(objects: ObjectStore, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """The store's client set up before the daemon says it is ready: its first lookup
    lists the refs, and on S3 boto3's imports and set-up (~0.3 s, more on a cold page
    cache) were most of that lookup. A failure here is the listing's to report."""
    try:
        await trio.to_thread.run_sync(objects.prepare)
    except Exception as exc:  # noqa: BLE001 - only an early start; the listing raises it
        log.debug("setting up %s ahead of use: %s", objects, exc)
    task_status.started()
