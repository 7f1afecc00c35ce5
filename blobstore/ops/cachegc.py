"""``thaw gc --cache-dir DIR``: drop a node's disk-cache entries of blobs the store no longer
has (a collector deleted them), keeping every one an image in use still needs.

The store is listed once (``blobs/``); an entry whose id is not in it is dropped, unless a
lease in the store (a mount, a daemon, a restore or a push, on any node) names an image
that uses it: then the cache may hold the only copy left, and it stays, said loudly. An
entry written or read since the listing began is left for the next run (it was fetched
from somewhere meanwhile). The manifests of leased images are read through the cache, so
one the store lost is still found. The store is never written. Synchronous.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from ..errors import BlobNotFound, ThawError
from ..image.images import load_manifest
from ..lifecycle.leases import scan_leases
from ..store.base import ObjectStore
from ..store.blobs import PREFIX as BLOBS
from ..store.blobs import BlobStore
from ..store.digest import is_blob_id
from ..store.diskcache import DiskCache
from ..store.tiers import ReadThrough

log = logging.getLogger(__name__)


@dataclass
class CachePruneResult:
    dry_run: bool
    entries: int = 0
    dropped: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    only_copies: list[str] = field(default_factory=list)  # gone from the store, still in use

    def as_json(self) -> dict:
        return {"dry_run": self.dry_run, "entries": self.entries, "dropped": len(self.dropped),
                "freed_bytes": self.freed_bytes, "only_copies": self.only_copies[:1000],
                "dropped_ids": self.dropped[:1000]}


def in_use(cache: DiskCache, objects: ObjectStore) -> set[str]:
    """The blob ids of every image a lease names (its manifest and chunks) and of every
    blob a lease names; a lease or manifest that cannot be read keeps nothing back, but is
    said (the entries it would have kept are those the store still has, or none)."""
    blobs = ReadThrough(BlobStore(objects), cache)
    ids: set[str] = set()
    manifests: set[str] = set()
    for key, lease, error in scan_leases(objects):
        if error is not None:
            log.warning("%s: %s; the images it names are not known to be in use", key, error)
            continue
        manifests.update(lease["manifests"])
        ids.update(lease["blobs"])
    for mid in manifests:
        ids.add(mid)
        try:
            ids.update(c.id for c in load_manifest(blobs, mid).chunks)
        except (BlobNotFound, ThawError) as exc:
            log.warning("manifest %s, named by a lease, cannot be read (%s)", mid, exc)
    return ids


def prune_cache(cache: DiskCache, objects: ObjectStore, *, dry_run: bool = False
                ) -> CachePruneResult:
    """One pass over ``cache``; see the module's docstring."""
    started_ns = time.time_ns()
    stored = {k.rsplit("/", 1)[-1] for k in objects.list(BLOBS)}
    needed = in_use(cache, objects)
    result = CachePruneResult(dry_run)
    for path, size, mtime_ns in sorted(cache.entries()):
        result.entries += 1
        id = os.path.basename(path)
        if not is_blob_id(id) or id in stored or mtime_ns >= started_ns:
            continue
        if id in needed:
            result.only_copies.append(id)
            continue
        if not dry_run:
            cache.drop(path, size)
        result.dropped.append(id)
        result.freed_bytes += size
    if result.only_copies:
        log.error("%d blobs that leased images use are gone from %s and kept in %s, maybe "
                  "the only copies left: %s%s", len(result.only_copies), objects, cache,
                  ", ".join(result.only_copies[:5]), " ..." if len(result.only_copies) > 5
                  else "")
    return result
