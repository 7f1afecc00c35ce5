"""The collector's documents in the store, as the collector writes them and the writer's
fence reads them: the lock (``gc/lock``: who holds it, when its run started, renewed every
``LOCK_REFRESH`` seconds and stale after ``LOCK_STALE``) and the record
(``gc/condemned.json``: what is condemned, and what the run that wrote it was about to
delete). Here, not in the collector, so that writing an image never imports it.
Synchronous; thread-safe as the store is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import NotFound, ThawError
from ..store.base import ObjectStore
from ..store.blobs import PREFIX as BLOBS

LOCK = "gc/lock"
CONDEMNED = "gc/condemned.json"
LOCK_REFRESH = 60.0  # seconds between writes of a held lock
LOCK_STALE = 600.0  # a lock not written again for this long was left by a dead collector


class GcAborted(ThawError):
    """A root could not be read: nothing was deleted."""

    exit_code = 1


@dataclass(frozen=True)
class LockInfo:
    holder: str
    started: float  # the run's start, by the store's clock
    mtime: float  # its last renewal, by the store's clock


def lock_info(objects: ObjectStore) -> LockInfo | None:
    """The collector's lock, or None when no collector holds it. A lock that does not parse
    counts as one that started at its timestamp."""
    held = next((i for i in objects.list_info("gc/") if i.key == LOCK), None)
    if held is None:
        return None
    try:
        doc = json.loads(objects.get(LOCK))
    except NotFound:
        return None
    except ValueError:
        doc = {}
    doc = doc if isinstance(doc, dict) else {}
    try:
        started = float(doc.get("started", held.mtime))
    except (ValueError, TypeError):
        started = held.mtime
    return LockInfo(str(doc.get("holder", "?"))[:200], started, held.mtime)


@dataclass(frozen=True)
class Record:
    """``gc/condemned.json``: what is condemned (key -> (marked at, its timestamp then)),
    and what the run that wrote it was about to delete."""

    objects: dict[str, tuple[float, float]]
    deleting: frozenset[str] = frozenset()
    raw: bytes = b""

    def blob_ids(self) -> set[str]:
        """The blobs condemned or being deleted."""
        return {k.rsplit("/", 1)[-1] for k in (*self.objects, *self.deleting)
                if k.startswith(BLOBS)}


def read_record(objects: ObjectStore) -> Record:
    """The record (empty if there is none); GcAborted if it does not parse."""
    try:
        raw = objects.get(CONDEMNED)
        doc = json.loads(raw)
        return Record({k: (float(v[0]), float(v[1])) for k, v in doc["objects"].items()},
                      frozenset(str(k) for k in doc.get("deleting", [])), raw)
    except NotFound:
        return Record({})
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        raise GcAborted(f"{CONDEMNED} is unreadable; remove it (the next runs mark again)") \
            from None


def write_record(objects: ObjectStore, holder: str, condemned: dict[str, tuple[float, float]],
                 deleting: list[str]) -> None:
    """The record of a run (``holder``'s), written before it deletes ``deleting``."""
    objects.put(CONDEMNED, json.dumps({"version": 1, "run": holder, "objects": condemned,
                                       "deleting": deleting}, sort_keys=True).encode())
