"""``thaw gc``: delete what nothing references, safely while others push, mount and restore.

Two phases, as kopia and rustic do, never deleting in the run that marks. Each run:

1. takes ``gc/lock`` with a conditional write (create-if-absent), so one collector runs at
   a time; a lock older than ``LOCK_TTL`` by the store's clock was left by a dead collector
   and is taken over;
2. finds the roots, failing closed: every ref under ``refs/`` (one that does not parse, or
   holds no manifest id, aborts the run), every unexpired lease (``leases.py``; an
   unparsable one aborts), every manifest they name (one that is missing or invalid
   aborts); the live blobs are those manifests and their chunks, and the leases' blobs;
3. sweeps what an earlier run condemned (``gc/condemned.json``): a key that is live again,
   or was written again since it was condemned (a push re-uploads a condemned blob, a node
   writes its report again), is released; one condemned at least ``grace`` ago is deleted;
4. marks: every key under ``blobs/``, ``hints/`` (of manifests not live), ``nodes/`` and
   ``leases/`` (expired ones) that is not live and was last written at least ``grace`` ago,
   by the store's own timestamps, is condemned, with the time and its timestamp then.

So a blob goes only after two runs at least ``grace`` apart, and a push that relied on it
in between either leased it (a lease is renewed far more often than any grace) or finds it
condemned when it starts and uploads it again. ``clock`` is the store's "now": by default
the timestamp the store gives a probe object it has just written (``store_clock``); tests
pass a fake one and set a directory store's timestamps themselves. Temporaries of a
directory store (``.tmp/``) are swept by the store itself (``tempfiles``). Synchronous.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from .base import ObjectInfo, ObjectStore
from .blobs import PREFIX as BLOBS
from .blobs import BlobStore, blob_key
from .digest import is_blob_id
from .errors import NotFound, StoreError, StoreUnavailable, ThawError
from .images import load_manifest
from .leases import PREFIX as LEASES
from .leases import scan_leases
from .refs import Refs

log = logging.getLogger(__name__)
LOCK = "gc/lock"
CONDEMNED = "gc/condemned.json"
CLOCK = "gc/clock"
LOCK_TTL = 6 * 3600.0
COLLECTED = (BLOBS, "hints/", "nodes/", LEASES)
MIN_GRACE = 3600.0


class GcAborted(ThawError):
    """A root could not be read: nothing was deleted."""

    exit_code = 1


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
    def __init__(self, objects: ObjectStore, clock: Callable[[], float]) -> None:
        self.objects, self.clock = objects, clock
        self.holder = f"{socket.gethostname()}:{os.getpid()}"

    def acquire(self) -> None:
        doc = json.dumps({"holder": self.holder}).encode()
        for _ in range(2):
            if self.objects.create(LOCK, doc):
                return
            held = next((i for i in self.objects.list_info("gc/") if i.key == LOCK), None)
            if held is None:
                continue  # released meanwhile
            try:
                holder = json.loads(self.objects.get(LOCK)).get("holder", "?")
            except (NotFound, ValueError, AttributeError):
                holder = "?"
            age = self.clock() - held.mtime
            if age < LOCK_TTL:
                raise GcLocked(f"another `thaw gc` is running: {LOCK} is held by {holder} "
                               f"since {age / 60:.0f} minutes ago; it is taken over after "
                               f"{LOCK_TTL / 3600:.0f} h")
            log.warning("taking over %s from %s, %.0f h old", LOCK, holder, age / 3600)
            self.objects.delete(LOCK)
        raise GcLocked(f"another `thaw gc` took {LOCK} at the same moment")

    def release(self) -> None:
        try:
            self.objects.delete(LOCK)
        except StoreError as exc:
            log.warning("%s not released (the next run takes it over after %.0f h): %s",
                        LOCK, LOCK_TTL / 3600, exc)


@dataclass
class _Roots:
    manifests: set[str] = field(default_factory=set)  # named by a tag or a live lease
    blobs: set[str] = field(default_factory=set)  # named by a live lease
    leases: set[str] = field(default_factory=set)  # keys of the unexpired leases


def _roots(objects: ObjectStore, now: float) -> _Roots:
    """What tags and unexpired leases hold; GcAborted for anything unreadable."""
    roots = _Roots()
    for name, mid, error in Refs(objects).scan_keys():
        if error is not None:
            raise GcAborted(f"tag {name} {error}; remove or fix it before collecting")
        roots.manifests.add(mid)
    for key, lease, error in scan_leases(objects):
        if error is not None:
            raise GcAborted(f"{key}: {error}; remove it before collecting")
        if lease["expires"] > now:
            roots.manifests.update(lease["manifests"])
            roots.blobs.update(lease["blobs"])
            roots.leases.add(key)
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


def _read_condemned(objects: ObjectStore) -> dict[str, tuple[float, float]]:
    try:
        doc = json.loads(objects.get(CONDEMNED))
        return {k: (float(v[0]), float(v[1])) for k, v in doc["objects"].items()}
    except NotFound:
        return {}
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        raise GcAborted(f"{CONDEMNED} is unreadable; remove it (the next runs mark again)") \
            from None


def condemned_blobs(objects: ObjectStore) -> set[str]:
    """The ids of the blobs a collector has condemned (a push uploads them again); none if
    the record is missing or unreadable (a push never fails on it)."""
    try:
        return {k.rsplit("/", 1)[-1] for k in _read_condemned(objects) if k.startswith(BLOBS)}
    except GcAborted:
        return set()


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
    lock = _Lock(objects, clock)
    if not dry_run:
        lock.acquire()
    try:
        return _run(objects, grace, clock, dry_run)
    finally:
        if not dry_run:
            lock.release()


def _run(objects: ObjectStore, grace: float, clock: Callable[[], float],
         dry_run: bool) -> GcResult:
    now = clock()
    roots = _roots(objects, now)
    live = _live_blobs(objects, roots.manifests) | roots.blobs
    listing: dict[str, ObjectInfo] = {}
    for prefix in COLLECTED:
        listing.update((i.key, i) for i in objects.list_info(prefix))
    condemned = _read_condemned(objects)
    result = GcResult(dry_run, len(roots.manifests), len(live))
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
    if not dry_run:
        objects.delete_many(doomed)  # S3 takes a thousand a request
    for key, info in sorted(listing.items()):  # mark
        if key in condemned or now - info.mtime < grace or _is_live(key, live, roots):
            continue
        kept[key] = (now, info.mtime)
        result.marked.append(key)
        result.marked_bytes += info.size
    if not dry_run:
        objects.put(CONDEMNED, json.dumps({"version": 1, "objects": kept},
                                          sort_keys=True).encode())
    return result
