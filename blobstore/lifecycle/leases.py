"""Leases: what a push, a mount or a daemon holds so that ``thaw gc`` keeps it.

A lease is ``leases/<holder>-<random>.json``: ``{"version", "kind", "holder", "expires",
"manifests", "blobs"}`` (``expires`` in the collector's clock, unix seconds). A push leases
the chunks it has relied on (found in the store and not uploaded), a mount or daemon the
manifests it serves. The holder writes it again every ``REFRESH`` seconds; the collector
keeps every lease whose ``expires`` has not passed, and the holder removes it as it ends.
Since the collector deletes only what it condemned at least its grace (1 h or more) before,
and ``REFRESH`` is far shorter, whatever a holder adds to its lease is in it before any run
could delete it. ``parse_lease`` treats its input as hostile. Thread-safe: one lock per
lease.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

from ..errors import NotFound, StoreError, ThawError
from ..store.base import ObjectStore
from ..store.digest import is_blob_id

log = logging.getLogger(__name__)
PREFIX = "leases/"
FORMAT_VERSION = 1
REFRESH = 300.0  # seconds between writes of a held lease
TTL = 1800.0  # a lease not written again for this long is stale
MAX_LEASE = 64 << 20


class LeaseInvalid(ThawError):
    exit_code = 1


def parse_lease(raw: bytes) -> dict:
    """The lease's fields, checked; LeaseInvalid for anything else."""
    try:
        if len(raw) > MAX_LEASE:
            raise ValueError("too large")
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
            raise ValueError("not a version 1 lease")
        expires = float(doc["expires"])
        ids = [*doc.get("manifests", []), *doc.get("blobs", [])]
        if not all(isinstance(i, str) and is_blob_id(i) for i in ids):
            raise ValueError("an id that is not a blob id")
        return {"holder": str(doc.get("holder", "?"))[:200], "expires": expires,
                "manifests": list(doc.get("manifests", [])), "blobs": list(doc.get("blobs", []))}
    except (ValueError, KeyError, TypeError) as exc:
        raise LeaseInvalid(f"invalid lease: {exc}") from None


def scan_leases(objects: ObjectStore) -> Iterator[tuple[str, dict | None, str | None]]:
    """``(key, lease, None)`` for every lease in the store, ``(key, None, reason)`` for one
    that does not parse; one removed while listing is skipped."""
    for key in objects.list(PREFIX):
        try:
            yield key, parse_lease(objects.get(key)), None
        except NotFound:
            continue  # released meanwhile
        except LeaseInvalid as exc:
            yield key, None, str(exc)


class Lease:
    """One lease, written at ``start``/``refresh``, removed at ``release``."""

    def __init__(self, objects: ObjectStore, kind: str, *, clock: Callable[[], float] = time.time,
                 ttl: float = TTL) -> None:
        self.objects, self.kind, self.clock, self.ttl = objects, kind, clock, ttl
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self.key = f"{PREFIX}{kind}-{os.urandom(8).hex()}.json"
        self.manifests: set[str] = set()
        self.blobs: set[str] = set()
        self._lock = threading.Lock()
        self.failing = False

    def write(self) -> None:
        """Write the lease now (StoreError if the store refuses)."""
        with self._lock:
            doc = {"version": FORMAT_VERSION, "kind": self.kind, "holder": self.holder,
                   "expires": self.clock() + self.ttl, "manifests": sorted(self.manifests),
                   "blobs": sorted(self.blobs)}
        self.objects.put(self.key, json.dumps(doc, sort_keys=True).encode())

    def refresh(self) -> bool:
        """Write it again; a failure is said loudly (the collector may take what it holds
        once it is stale), and True is returned when it worked."""
        try:
            self.write()
        except StoreError as exc:
            log.error("lease %s could not be renewed: %s; if this lasts %d minutes, `thaw gc` "
                      "may delete what it holds", self.key, exc, self.ttl // 60)
            self.failing = True
            return False
        if self.failing:
            log.warning("lease %s renewed again", self.key)
        self.failing = False
        return True

    def add(self, *, manifests: tuple[str, ...] = (), blobs: tuple[str, ...] = ()) -> None:
        with self._lock:
            self.manifests.update(manifests)
            self.blobs.update(blobs)

    def release(self) -> None:
        try:
            self.objects.delete(self.key)
        except StoreError as exc:
            log.warning("lease %s not removed (it goes stale by itself): %s", self.key, exc)


class LeaseKeeper:
    """Refreshes a lease from a daemon thread until ``stop``, then releases it."""

    def __init__(self, lease: Lease, interval: float = REFRESH) -> None:
        self.lease, self.interval = lease, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="thaw-lease")

    def start(self) -> LeaseKeeper:
        self.lease.write()  # before anything relies on the store's contents
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.lease.refresh()

    def stop(self, release: bool = True) -> None:
        self._stop.set()
        self._thread.join()
        if release:
            self.lease.release()
