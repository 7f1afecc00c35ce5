"""What a mount fetches ahead besides read-ahead: the rest of an image, and what ``thaw
warm`` asks for.

``--prefetch all`` queues an image's chunks in data-stream order at the lowest priority,
into the disk cache only, up to a byte budget that is also kept within the disk cache's
free room, so it never evicts what mounted images are using (``image_order`` is the pure
part). ``Warmer`` serves ``thaw warm``: it loads the hints a workload recorded for an image
and queues them; the mount's own workload at hint priority, any other (a restore, which
reads in another process) into the disk cache only. trio thread; store calls in threads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from blobstore.image.dirmanifest import AnyManifest
from blobstore.image.hints import hints_key, load_hints
from blobstore.image.manifest import ChunkRef
from blobstore.store.base import ObjectStore

from .errors import BadWorkload
from .fetch import ChunkFetcher, Priority
from .learn import hinted_chunks
from .tree import FsTree

log = logging.getLogger(__name__)
MODES = ("hints", "all", "none")


def image_order(manifest: AnyManifest, budget: int) -> list[ChunkRef]:
    """The image's distinct chunks in stream order, while their stored bytes fit ``budget``."""
    seen: set[str] = set()
    out: list[ChunkRef] = []
    total = 0
    for c in manifest.chunks:
        if c.id in seen:
            continue
        if total + c.stored_size > budget:
            break
        seen.add(c.id)
        total += c.stored_size
        out.append(c)
    return out


def queue_image(fetcher: ChunkFetcher, tree: FsTree, budget: int) -> int:
    """``--prefetch all``: queue the image behind everything else; returns the chunks
    queued."""
    chunks = image_order(tree.manifest, budget)
    queued = fetcher.prefetch(chunks, Priority.IMAGE)
    if queued:
        log.info("image %s: prefetching %d chunks (%d bytes) of the whole image into the "
                 "disk cache", tree.image_id[:12], queued, sum(c.stored_size for c in chunks))
    return queued


class Warmer:
    def __init__(self, objects: ObjectStore, fetcher: ChunkFetcher, *,
                 workload: str | None, max_bytes: int,
                 on_queued: Callable[[FsTree], None] | None = None) -> None:
        """``workload``: the one the mount learns (kept in memory too); ``max_bytes``:
        queue at most this much of the hinted chunks; ``on_queued``: called with the tree
        when something was queued."""
        self.objects, self.fetcher, self.on_queued = objects, fetcher, on_queued
        self.workload, self.max_bytes = workload, max_bytes

    async def warm(self, tree: FsTree, workload: str) -> dict:
        """Queue what ``workload`` read from this image last time; returns what was queued."""
        mid, manifest = tree.image_id, tree.manifest
        try:
            hints_key(mid, workload)
        except ValueError:
            raise BadWorkload(workload) from None
        order = await trio.to_thread.run_sync(load_hints, self.objects, mid, workload,
                                              len(manifest.chunks))
        chunks = hinted_chunks(manifest, order, self.max_bytes)
        priority = Priority.HINTS if workload == self.workload else Priority.WARM
        queued = self.fetcher.prefetch(chunks, priority)
        if queued and self.on_queued:
            self.on_queued(tree)
        log.info("image %s: warm %r: %d hinted chunks, %d queued", mid[:12], workload,
                 len(chunks), queued)
        return {"image": mid, "workload": workload, "hinted_chunks": len(chunks),
                "hinted_bytes": sum(c.stored_size for c in chunks), "queued": queued,
                "prefetch": self.fetcher.enabled}
