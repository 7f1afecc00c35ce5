"""A writer's fence against ``thaw gc``: what a push or a snapshot checks before it tags.

A writer decides early which blobs the store already has (and which a collector has
condemned, to upload those again), and tags at the end. A collector run in between can
delete a blob the writer relies on: it lists the store, a writer uploads a condemned blob
again (too late for that listing to see it), and the run deletes it. ``GcFence`` closes that
gap. It reads the collector's state when the writer starts (``GcFence(objects)``) and, with
``cross`` just before the tag:

1. reads the record (``gc/condemned.json``: what is condemned or being deleted) and adds
   the writer's blobs named there to its lease, then writes the lease: a collector that
   starts after that write keeps them;
2. reads the lock: a live collector that started before the lease was written may delete
   what the record names, so while one holds it and the writer has a blob at risk, it
   waits (``POLL``) until that run ends or its lock goes stale, up to ``MAX_WAIT``, then
   fails (``GcBusy``); steps 1 and 2 repeat until the record stays the same;
3. if any collector ran or held the lock since the writer started, checks that every blob
   it names is in the store; a missing one fails the write (``BlobsCollected``) before the
   tag, so a tag never names a deleted blob.

When no collector ran during the write (the usual case) this costs two listings of
``gc/`` and two reads of the record. Times compared are the store's own timestamps: the
lease's and the lock's. Synchronous; ``cross`` is called once, from the writer's thread.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from ..errors import BlobNotFound, NotFound, ThawError
from ..store.base import ObjectStore
from ..store.blobs import BlobStore
from .gcrecord import LOCK_REFRESH, LOCK_STALE, LockInfo, Record, lock_info, read_record
from .leases import PREFIX as LEASES
from .leases import Lease

log = logging.getLogger(__name__)
POLL = 5.0  # seconds between looks at a running collector's lock
MAX_WAIT = LOCK_STALE + 3 * LOCK_REFRESH  # a dead collector's lock is stale by then


class GcBusy(ThawError):
    """A collector that may delete what the writer uses ran for longer than it waits."""

    exit_code = 1


class BlobsCollected(ThawError):
    """A collector deleted a blob the writer used; nothing was tagged."""

    exit_code = 1


def _record(objects: ObjectStore) -> Record:
    try:
        return read_record(objects)
    except ThawError:
        return Record({})  # an unreadable record stops every collector: it deletes nothing


class GcFence:
    def __init__(self, objects: ObjectStore, *, sleep: Callable[[float], None] | None = None,
                 max_wait: float | None = None) -> None:
        self.objects, self.sleep = objects, sleep or time.sleep
        self.max_wait = MAX_WAIT if max_wait is None else max_wait
        self.lock_at_start = lock_info(objects) is not None
        self.record_at_start = _record(objects)
        self.condemned = frozenset(self.record_at_start.blob_ids())  # upload these again

    def cross(self, lease: Lease, used: Iterable[str]) -> None:
        """Before the tag: return when no collector can delete a blob of ``used`` (all of
        which the writer has stored or found), or raise GcBusy or BlobsCollected."""
        used = set(used)
        deadline = time.monotonic() + self.max_wait
        waited = False
        while True:
            seen = _record(self.objects)
            at_risk = used & seen.blob_ids()
            lease.add(blobs=tuple(at_risk))
            written = _stamped_write(self.objects, lease)
            lock = lock_info(self.objects)
            settled = _digest(_record(self.objects)) == _digest(seen)
            if settled and not (at_risk and _may_delete(lock, written)):
                break
            if time.monotonic() >= deadline:
                raise GcBusy(f"`thaw gc` ({lock.holder if lock else '?'}) has run for longer "
                             f"than this write waits ({self.max_wait / 60:.0f} minutes) and "
                             "may delete blobs it uses; nothing was tagged: run it again when "
                             "gc has ended")
            if not settled:
                continue  # a run wrote the record meanwhile: lease what it names, look again
            if not waited:
                log.info("waiting for `thaw gc` (%s) to end: it may delete %d blobs this "
                         "write uses", lock.holder, len(at_risk))
            waited = True
            self.sleep(POLL)
        if (self.lock_at_start or lock is not None or waited
                or _digest(seen) != _digest(self.record_at_start)):
            _verify(BlobStore(self.objects), used)  # a collector ran: it may have deleted


def _digest(record: Record) -> bytes:
    return hashlib.blake2b(record.raw, digest_size=16).digest()


def _may_delete(lock: LockInfo | None, written: float) -> bool:
    """Whether the lock's holder may still delete something it condemned without seeing the
    lease written at ``written``: it started no later, and its lock is not stale."""
    return lock is not None and lock.started <= written and written - lock.mtime < LOCK_STALE


def _stamped_write(objects: ObjectStore, lease: Lease) -> float:
    """Write the lease; the store's timestamp of that write."""
    lease.write()
    info = next((i for i in objects.list_info(LEASES) if i.key == lease.key), None)
    if info is None:
        raise NotFound(f"{lease.key}: the lease just written is not in {objects}")
    return info.mtime


def _verify(blobs: BlobStore, used: set[str]) -> None:
    def missing(id: str) -> str | None:
        try:
            blobs.stored_size(id)
            return None
        except BlobNotFound:
            return id

    with ThreadPoolExecutor(8, thread_name_prefix="thaw-fence") as pool:
        gone = [id for id in pool.map(missing, sorted(used)) if id is not None]
    if gone:
        raise BlobsCollected(f"`thaw gc` deleted {len(gone)} blobs this write uses (first: "
                             f"{gone[0]}) while it ran; nothing was tagged: run it again, and "
                             "it uploads what is missing")
