"""Putting a mount together: store, disk cache, fetcher, namespace, metrics, serve.

Called from the command line on the main thread; everything after ``trio.run`` is on the
trio thread, with store calls in worker threads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

import trio

from blobstore.base import ObjectStore
from blobstore.blobs import BlobStore
from blobstore.diskcache import DiskCache
from blobstore.manifest import Manifest
from blobstore.retrying import DEFAULT_BUDGET, without_retries
from blobstore.tiers import node_tiers

from .fetch import ChunkFetcher, RetryPolicy
from .learn import Learners
from .metrics import SnapshotCollector, start_metrics
from .mount import serve
from .namespace import SingleImage, StoreImages
from .reporter import NodeReporter
from .stats import stats_doc
from .tree import FsTree

log = logging.getLogger(__name__)
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 128 << 10


def fix_mmap_threshold() -> None:
    """Make glibc give every allocation of 128 KiB or more (each chunk) its own mapping,
    returned to the system when freed. By default glibc raises that threshold as large
    blocks are freed, after which chunks come from the heap and freed ones are kept: reading
    a 1 GiB file at ``--memory 256M`` then peaked at 450 MB resident, with this 310 MB
    (bench/scale.py). Setting it also turns the raising off. Not glibc: nothing to do."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError) as exc:
        log.info("could not set malloc's mmap threshold: %s", exc)


def _parts(objects: ObjectStore, cache_dir: str, cache_bytes: int, memory_bytes: int,
           store_timeout: float):
    """The read path: memory (the fetcher) over the disk cache over the store. The fetcher
    retries within ``store_timeout`` itself, so it reads the store without ``Retrying``."""
    fix_mmap_threshold()
    tiers = node_tiers(BlobStore(without_retries(objects)), DiskCache(cache_dir, cache_bytes))
    fetcher = ChunkFetcher(lambda id, size: tiers.stack.get(id, max_size=size),
                           memory_bytes=memory_bytes, retry=RetryPolicy.within(store_timeout))
    return tiers, fetcher


def _run(namespace_for, tiers, fetcher, mountpoint: str, metrics: str | None,
         on_ready: Callable[[], None], extra=(), learners: Learners | None = None) -> None:
    collector = SnapshotCollector()
    box: dict = {}

    def statistics() -> dict:
        return stats_doc(box["ns"].images(), tiers, fetcher,
                         learners.hinted() if learners else 0)

    def publish() -> None:
        collector.snapshot = statistics()

    namespace = box["ns"] = namespace_for(statistics)
    if metrics:
        start_metrics(metrics, collector)
    trio.run(lambda: serve(namespace, fetcher, mountpoint, on_ready=on_ready, publish=publish,
                           extra=(*extra, learners.run) if learners else extra,
                           on_chunk_read=learners.read if learners else None))


def _learners(objects: ObjectStore, fetcher, hints: str | None, hints_window: float,
              cache_bytes: int) -> Learners | None:
    """With ``hints`` (a workload name): prefetch what that workload read at its last starts
    of an image, and record what it reads in the first ``hints_window`` seconds of this one.
    """
    if not hints:
        return None
    return Learners(objects, fetcher, workload=hints, window=hints_window,
                    max_bytes=cache_bytes // 2)


def mount_image(objects: ObjectStore, mid: str, manifest: Manifest, mountpoint: str, *,
                cache_dir: str, cache_bytes: int, memory_bytes: int, metrics: str | None = None,
                on_ready: Callable[[], None] = lambda: None, hints: str | None = None,
                hints_window: float = 60.0, store_timeout: float = DEFAULT_BUDGET) -> None:
    """Mount one image read-only at ``mountpoint`` until unmounted or signalled; learn its
    start (``_learners``)."""
    tiers, fetcher = _parts(objects, cache_dir, cache_bytes, memory_bytes, store_timeout)
    tree = FsTree(manifest, image_id=mid)
    learners = _learners(objects, fetcher, hints, hints_window, cache_bytes)
    if learners:
        learners.add(tree)
    _run(lambda stats: SingleImage(mid, tree, stats), tiers, fetcher, mountpoint,
         metrics, on_ready, learners=learners)


def run_daemon(objects: ObjectStore, mountpoint: str, *, cache_dir: str, cache_bytes: int,
               memory_bytes: int, metrics: str | None = None,
               on_ready: Callable[[], None] = lambda: None, node_id: str | None = None,
               gpus: list[dict] | None = None, report_interval: float = 5.0,
               hints: str | None = None, hints_window: float = 60.0,
               store_timeout: float = DEFAULT_BUDGET) -> None:
    """Serve every image of the store under ``mountpoint``: ``<id>/`` and ``refs/``; write
    this node's report to ``nodes/<node id>.json`` every ``report_interval`` seconds; learn
    each image's start from its first lookup (``_learners``)."""
    tiers, fetcher = _parts(objects, cache_dir, cache_bytes, memory_bytes, store_timeout)
    reporter = NodeReporter(objects, tiers.disk.inner, node_id=node_id, gpus=gpus,
                            interval=report_interval)
    learners = _learners(objects, fetcher, hints, hints_window, cache_bytes)

    def on_image(tree: FsTree) -> None:
        reporter.add(tree.image_id, tree.manifest)
        if learners:
            learners.add(tree)

    _run(lambda stats: StoreImages(objects, stats, on_image), tiers, fetcher, mountpoint,
         metrics, on_ready, extra=(reporter.run,), learners=learners)
