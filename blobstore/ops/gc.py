"""``thaw gc``: delete what nothing references, safely while others push, mount and restore.

Two phases, as kopia and rustic do, never deleting in the run that marks. Each run:

1. takes ``gc/lock`` with a conditional write (create-if-absent), so one collector runs at
   a time. The lock says when the run started and is written again every ``LOCK_REFRESH``
   seconds; one not written for ``LOCK_STALE`` by the store's clock was left by a dead
   collector and is taken over (and a collector that could not renew its own stops before
   it deletes);
2. finds the roots, failing closed: every unexpired lease (``leases.py``; an unparsable one
   aborts), then every ref under ``refs/`` (one that does not parse, or holds no manifest
   id, aborts the run), every manifest they name (one that is missing or invalid aborts);
   the live blobs are those manifests and their chunks, and the leases' blobs. Leases are
   read before refs because a writer tags before it drops its lease: one of the two is seen;
3. sweeps what an earlier run condemned (``gc/condemned.json``): a key that is live again,
   or was written again since it was condemned (a push re-uploads a condemned blob, a node
   writes its report again), is released; one condemned at least ``grace`` ago is doomed;
4. marks: every key under ``blobs/``, ``hints/`` (of manifests not live), ``nodes/`` and
   ``leases/`` (expired ones) that is not live and was last written at least ``grace`` ago,
   by the store's own timestamps, is condemned, with the time and its timestamp then;
5. writes the record, naming what it is about to delete (``deleting``), then deletes.

So a blob goes only after two runs at least ``grace`` apart. A writer that relied on it in
between, or uploaded it again while a run was between its listing and its deletes, is
caught by the writer's fence (``lifecycle/fence.py``), which reads the lock and the record
(``lifecycle/gcrecord.py``, their formats) before it tags. ``clock`` is the store's "now":
by default the timestamp the store gives a probe object it has just written
(``store_clock``); tests pass a fake one and set a directory store's timestamps
themselves. Temporaries of a
directory store (``.tmp/``) are swept by the store itself (``tempfiles``). Synchronous, but
for the thread that renews the lock.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import StoreError, StoreUnavailable, ThawError
from ..image.images import load_manifest
from ..image.refs import Refs
from ..lifecycle.gcrecord import (
    LOCK,
    LOCK_REFRESH,
    LOCK_STALE,
    GcAborted,
    lock_info,
    read_record,
    write_record,
)
from ..lifecycle.leases import PREFIX as LEASES
from ..lifecycle.leases import scan_leases
from ..store.base import ObjectInfo, ObjectStore
from ..store.blobs import PREFIX as BLOBS
from ..store.blobs import BlobStore, blob_key
from ..store.digest import is_blob_id

log = logging.getLogger(__name__)
CLOCK = "gc/clock"
COLLECTED = (BLOBS, "hints/", "nodes/", LEASES)
MIN_GRACE = 3600.0


class GcLocked(ThawError):
    """Another collector holds the lock."""

    exit_code = 3


def store_clock(objects: ObjectStore) -> Callable[[], float]:
    """The store's "now": the timestamp it gives an object written just now."""
    def now() -> float:
        objects.put(CLOCK, b"")
        for info in objects.list_info("gc/"):
            if info.key == CLOCK:
                return info.mtime
        raise StoreUnavailable(f"{objects}: the clock probe {CLOCK} vanished")

    return now


@dataclass
class GcResult:
    dry_run: bool
    live_manifests: int = 0
    live_blobs: int = 0
    marked: list[str] = field(default_factory=list)
    marked_bytes: int = 0
    deleted: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    released: list[str] = field(default_factory=list)
    waiting: int = 0  # condemned, not yet a grace old

    def as_json(self) -> dict:
        return {"dry_run": self.dry_run, "live_manifests": self.live_manifests,
                "live_blobs": self.live_blobs, "marked": len(self.marked),
                "marked_bytes": self.marked_bytes, "deleted": len(self.deleted),
                "freed_bytes": self.freed_bytes, "released": len(self.released),
                "waiting": self.waiting, "deleted_keys": self.deleted[:1000],
                "marked_keys": self.marked[:1000]}


class _Lock:
    """``gc/lock``: taken by a conditional write, renewed by a daemon thread (``_beat``)."""

    def __init__(self, objects: ObjectStore, clock: Callable[[], float]) -> None:
        self.objects, self.clock = objects, clock
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self.renewed = 0.0  # time.monotonic() of the last write that worked
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        doc = json.dumps({"holder": self.holder, "started": self.clock()}).encode()
        for _ in range(2):
            if self.objects.create(LOCK, doc):
                self.renewed = time.monotonic()
                self._thread = threading.Thread(target=self._beat, args=(doc,), daemon=True,
                                                name="thaw-gc-lock")
                self._thread.start()
                return
            held = lock_info(self.objects)
            if held is None:
                continue  # released meanwhile
            age = self.clock() - held.mtime
            if age < LOCK_STALE:
                raise GcLocked(f"another `thaw gc` is running: {LOCK} is held by {held.holder},"
                               f" last renewed {age:.0f} s ago; it is taken over once "
                               f"{LOCK_STALE / 60:.0f} minutes pass without a renewal")
            log.warning("taking over %s from %s, not renewed for %.0f minutes", LOCK,
                        held.holder, age / 60)
            self.objects.delete(LOCK)
        raise GcLocked(f"another `thaw gc` took {LOCK} at the same moment")

    def _beat(self, doc: bytes) -> None:
        while not self._stop.wait(LOCK_REFRESH) and self._renew(doc):
            pass

    def _renew(self, doc: bytes) -> bool:
        """Write the lock again unless it was taken over; whether to go on renewing."""
        try:
            if not self._ours():
                log.error("%s was taken over; this run stops before deleting", LOCK)
                return False  # never write over the new holder's lock
            self.objects.put(LOCK, doc)
            self.renewed = time.monotonic()
        except StoreError as exc:
            log.error("%s not renewed: %s; the run stops before deleting if this lasts",
                      LOCK, exc)
        return True

    def _ours(self) -> bool:
        held = lock_info(self.objects)
        return held is not None and held.holder == self.holder

    def check(self) -> None:
        """GcAborted unless the lock is still this run's and renewed well within its
        staleness: a collector that may have been taken over must not delete."""
        held = lock_info(self.objects)
        if held is None or held.holder != self.holder:
            raise GcAborted(f"{LOCK} was taken over by {held.holder if held else 'nobody'}; "
                            "this run stops before deleting anything")
        if time.monotonic() - self.renewed > LOCK_STALE / 2:
            raise GcAborted(f"{LOCK} could not be renewed for "
                            f"{(time.monotonic() - self.renewed) / 60:.0f} minutes; this run "
                            "stops before deleting anything")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if self._ours():  # a lock taken over is the new holder's to remove
                self.objects.delete(LOCK)
        except StoreError as exc:
            log.warning("%s not released (the next run takes it over after %.0f minutes): %s",
                        LOCK, LOCK_STALE / 60, exc)


@dataclass
class _Roots:
    manifests: set[str] = field(default_factory=set)  # named by a tag or a live lease
    blobs: set[str] = field(default_factory=set)  # named by a live lease
    leases: set[str] = field(default_factory=set)  # keys of the unexpired leases


def _roots(objects: ObjectStore, now: float) -> _Roots:
    """What tags and unexpired leases hold; GcAborted for anything unreadable."""
    roots = _Roots()
    for key, lease, error in scan_leases(objects):  # before the refs: see the docstring
        if error is not None:
            raise GcAborted(f"{key}: {error}; remove it before collecting")
        if lease["expires"] > now:
            roots.manifests.update(lease["manifests"])
            roots.blobs.update(lease["blobs"])
            roots.leases.add(key)
    for name, mid, error in Refs(objects).scan_keys():
        if error is not None:
            raise GcAborted(f"tag {name} {error}; remove or fix it before collecting")
        roots.manifests.add(mid)
    return roots


def _live_blobs(objects: ObjectStore, manifests: set[str]) -> set[str]:
    blobs = BlobStore(objects)
    live = set(manifests)
    for mid in sorted(manifests):
        try:
            manifest = load_manifest(blobs, mid)
        except ThawError as exc:
            raise GcAborted(f"manifest {mid}, a root, cannot be read ({exc}); nothing was "
                            "deleted") from None
        live.update(c.id for c in manifest.chunks)
    return live


def _is_live(key: str, live: set[str], roots: _Roots) -> bool:
    if key.startswith(BLOBS):
        id = key.rsplit("/", 1)[-1]
        return not is_blob_id(id) or key != blob_key(id) or id in live  # foreign: keep
    if key.startswith("hints/"):
        return key.split("/")[1] in roots.manifests
    if key.startswith(LEASES):
        return key in roots.leases  # read once, with the roots
    return False  # node reports: by age alone


def collect(objects: ObjectStore, *, grace: float, clock: Callable[[], float] | None = None,
            dry_run: bool = False) -> GcResult:
    """One run of the collector; see the module's docstring."""
    clock = clock or store_clock(objects)
    lock = None if dry_run else _Lock(objects, clock)
    if lock is not None:
        lock.acquire()
    try:
        return _run(objects, grace, clock, lock)
    finally:
        if lock is not None:
            lock.release()


def _run(objects: ObjectStore, grace: float, clock: Callable[[], float],
         lock: _Lock | None) -> GcResult:
    now = clock()
    roots = _roots(objects, now)
    live = _live_blobs(objects, roots.manifests) | roots.blobs
    listing: dict[str, ObjectInfo] = {}
    for prefix in COLLECTED:
        listing.update((i.key, i) for i in objects.list_info(prefix))
    condemned = read_record(objects).objects
    result = GcResult(lock is None, len(roots.manifests), len(live))
    kept: dict[str, tuple[float, float]] = {}
    doomed: list[str] = []

    for key, (marked_at, mtime) in sorted(condemned.items()):  # sweep
        info = listing.get(key)
        if info is None:
            continue
        if _is_live(key, live, roots) or info.mtime > mtime:
            result.released.append(key)
        elif now - marked_at >= grace:
            doomed.append(key)
            result.deleted.append(key)
            result.freed_bytes += info.size
        else:
            kept[key] = (marked_at, mtime)
            result.waiting += 1
    for key, info in sorted(listing.items()):  # mark
        if key in condemned or now - info.mtime < grace or _is_live(key, live, roots):
            continue
        kept[key] = (now, info.mtime)
        result.marked.append(key)
        result.marked_bytes += info.size
    if lock is not None:
        # Named before they go, so a writer's fence that reads the record sees them.
        write_record(objects, lock.holder, kept, doomed)
        if doomed:
            lock.check()
            objects.delete_many(doomed)  # S3 takes a thousand a request
    return result
