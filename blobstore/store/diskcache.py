"""The node's disk cache: stored blobs in a local directory, bounded in bytes, LRU.

Entries are the stored (compressed) form, exactly as fetched, at ``DIR/ab/<id>``; written
under a temporary name in ``DIR/.tmp/`` and renamed, so a reader or a crash never sees half
an entry, and what a killed process left there is swept when a cache is opened. A hit
bumps the file's mtime, which is the recency eviction sorts by: the order survives restarts
and is shared by every process using the directory (the daemon, the peer server, several
mounts). Eviction runs under an exclusive ``flock`` on ``DIR/.lock`` and removes the least
recently used entries until the cache is under 90% of its bound. Every entry is verified on
read; a corrupt one is deleted, logged, and reported as a miss so the next tier is asked.
Materialized files (``filecache``, in ``DIR/.files/``) count in the same bound and are
evicted by the same order, by unlink; ``entries`` lists blobs only. Thread-safe and
process-safe.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
from pathlib import Path

from ..errors import BlobCorrupt, BlobNotFound, StoreConfigError, StoreUnavailable
from .codec import MAX_BLOB_SIZE, decode_and_verify, read_into
from .digest import check_blob_id
from .fileio import read_whole, write_new
from .rangelocks import RangeLocks
from .tempfiles import sweep, temp_path
from .tiers import BlobTier, Fetched

log = logging.getLogger(__name__)
_LOW_WATER = 0.9
_FULL = (errno.ENOSPC, errno.EDQUOT)
FILES = ".files"  # materialized files (``filecache``), beside the blobs


class DiskCache(BlobTier):
    def __init__(self, root: str | os.PathLike[str], max_bytes: int) -> None:
        if max_bytes <= 0:
            raise StoreConfigError(f"cache size must be positive, not {max_bytes}")
        self.root = Path(root).absolute()
        self.max_bytes = max_bytes
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreConfigError(f"cannot use {self.root} as a cache: {exc.strerror}") from None
        self._lock = threading.Lock()
        self._fill_locks = RangeLocks(self.root / ".fill-locks")
        if n := sweep(self.root):
            log.info("%s: removed %d temporary files that killed writers left", self, n)
        self._size = sum(size for _, size, _ in self.all_entries())

    def _path(self, id: str) -> Path:
        return self.root / id[:2] / check_blob_id(id)

    def entries(self):
        """``(path, size, mtime_ns)`` of every blob entry."""
        yield from self._scan(self.root)

    def file_entries(self):
        """``(path, size, mtime_ns)`` of every materialized file."""
        root = self.root / FILES
        if root.is_dir():
            yield from self._scan(root)

    def all_entries(self):
        """Blobs and materialized files: what the bound counts and eviction orders."""
        yield from self.entries()
        yield from self.file_entries()

    def _scan(self, root: Path):
        for sub in os.scandir(root):
            if sub.is_dir(follow_symlinks=False) and not sub.name.startswith("."):
                with os.scandir(sub.path) as files:
                    for f in files:
                        if not f.name.startswith("."):
                            try:
                                st = f.stat()
                            except FileNotFoundError:
                                continue  # evicted by another process meanwhile
                            yield f.path, st.st_size, st.st_mtime_ns

    def added(self, size: int) -> None:
        """``size`` bytes were added beside the blobs (a materialized file); evicts if
        that puts the cache over its bound."""
        with self._lock:
            self._size += size
            over = self._size > self.max_bytes
        if over:
            self.evict()

    @property
    def size(self) -> int:
        return self._size

    def get_stored(self, id: str) -> bytes:
        """The entry's stored bytes, unverified; BlobNotFound on a miss. A hit counts as a
        use for eviction."""
        path = self._path(id)
        try:
            stored = read_whole(path)
            os.utime(path)  # recency for eviction
            return stored
        except FileNotFoundError:
            raise BlobNotFound(f"blob {id} not in the disk cache") from None
        except OSError as exc:
            raise StoreUnavailable(f"disk cache {self.root}: cannot read {id}: "
                                   f"{exc.strerror}") from None

    def fetch(self, id: str, *, max_size: int = MAX_BLOB_SIZE) -> Fetched:
        """The entry verified; BlobNotFound on a miss or a dropped corrupt entry."""
        stored = self.get_stored(id)
        where = f"cache {self.root}"
        try:
            data = decode_and_verify(stored, id, max_size=max_size, where=where)
        except BlobCorrupt as exc:
            try:  # bigger than the caller's manifest says, or damaged?
                data = decode_and_verify(stored, id, where=where)
            except BlobCorrupt:
                log.warning("dropping corrupt cache entry: %s", exc)
                self._remove(self._path(id), len(stored))
                raise BlobNotFound(f"blob {id} was corrupt in the disk cache") from None
            raise BlobCorrupt(f"blob {id} is {len(data)} bytes, more than the {max_size} "
                              "its manifest says") from None
        return Fetched(data, stored)

    def read_into(self, id: str, dest: memoryview) -> None:
        """Decode the entry straight into ``dest`` (its exact size) and verify it there;
        BlobNotFound on a miss or a dropped damaged entry (``dest`` then holds garbage)."""
        path = self._path(id)
        try:
            with open(path, "rb") as f:
                read_into(f, dest, id, what=f"blob {id} in cache {self.root}")
            os.utime(path)
        except FileNotFoundError:
            raise BlobNotFound(f"blob {id} not in the disk cache") from None
        except BlobCorrupt:
            # Either the entry is damaged or ``dest`` is the wrong size (the caller's
            # manifest disagrees with the blob): check the entry on its own before dropping.
            data = self.get(id)  # drops a damaged entry, logging it: BlobNotFound
            raise BlobCorrupt(f"blob {id} is {len(data)} bytes, not the {len(dest)} its "
                              "manifest says") from None
        except OSError as exc:
            raise StoreUnavailable(f"disk cache {self.root}: cannot read {id}: "
                                   f"{exc.strerror}") from None

    def stored_size(self, id: str) -> int:
        try:
            return self._path(id).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f"blob {id} not in the disk cache") from None

    def has(self, id: str) -> bool:
        return self._path(id).exists()

    @contextlib.contextmanager
    def fill_lock(self, id: str):
        """An exclusive lock while ``id`` is fetched to fill the cache: the node's mount,
        daemon, restores and ``thaw serve`` share this directory, and a chunk they all miss
        at once is read from upstream once. Lock number ``id[:4]`` (of 65,536, so unrelated
        chunks rarely wait on each other) in the one file ``DIR/.fill-locks``
        (``rangelocks``: no file to create per chunk, nothing to clean, released when the
        process dies)."""
        held = contextlib.ExitStack()
        try:
            held.enter_context(self._fill_locks.hold(int(check_blob_id(id)[:4], 16)))
        except OSError as exc:  # a cache that cannot lock still serves, unlocked
            log.debug("%s: filling %s unlocked: %s", self, id, exc)
        with held:
            yield

    def put_stored(self, id: str, stored: bytes) -> None:
        """Add an entry (already verified by the caller); evicts if over the bound."""
        try:
            self._write(id, stored)
        except OSError as exc:
            with self._lock:
                size = self._size
            if exc.errno not in _FULL or not size:  # nothing of ours to make room with
                raise self._write_error(id, exc) from None
            log.warning("%s: the file system is full; evicting to make room", self)
            target = size - max(size // 20, 4 * len(stored))
            self.evict(to=max(0, target))
            try:
                self._write(id, stored)
            except OSError as again:
                raise self._write_error(id, again) from None
        with self._lock:
            self._size += len(stored)
            over = self._size > self.max_bytes
        if over:
            self.evict()

    def _write(self, id: str, stored: bytes) -> None:
        path = self._path(id)
        tmp = temp_path(self.root, id)
        try:
            try:
                write_new(tmp, stored)
                os.replace(tmp, path)
            except FileNotFoundError:  # a directory not made yet (or removed meanwhile)
                tmp.parent.mkdir(exist_ok=True)
                path.parent.mkdir(exist_ok=True)
                if not tmp.exists():
                    write_new(tmp, stored)
                os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _write_error(self, id: str, exc: OSError) -> StoreUnavailable:
        reason = "no space left" if exc.errno in _FULL else str(exc.strerror)
        return StoreUnavailable(f"disk cache {self.root}: cannot write {id}: {reason}")

    def _remove(self, path: str | Path, size: int) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        with self._lock:
            self._size -= size

    def drop(self, path: str | Path, size: int) -> None:
        """Remove the entry at ``path`` (one that ``entries`` gave)."""
        self._remove(path, size)

    def evict(self, to: int | None = None) -> int:
        """Remove least recently used entries until the cache holds at most ``to`` bytes
        (default: 90% of the bound); bytes freed."""
        to = int(self.max_bytes * _LOW_WATER) if to is None else to
        with open(self.root / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = sorted(self.all_entries(), key=lambda e: e[2])
            total = sum(size for _, size, _ in entries)
            freed = 0
            for path, size, _ in entries:
                if total - freed <= to:
                    break
                try:
                    os.unlink(path)
                    freed += size
                except FileNotFoundError:
                    pass
            with self._lock:
                self._size = total - freed
        return freed

    def __str__(self) -> str:
        return f"cache {self.root}"


class CacheIndex:
    """The ids in a disk cache, kept current by rescanning only the subdirectories whose
    mtime changed since the last ``refresh`` (an entry added, renamed in or evicted changes
    its directory's mtime; a hit, which touches the file, does not). One owner thread."""

    def __init__(self, cache: DiskCache) -> None:
        self.root = cache.root
        self._dirs: dict[str, tuple[int, frozenset[str]]] = {}  # name -> (mtime_ns, ids)

    def refresh(self) -> set[str]:
        seen: dict[str, tuple[int, frozenset[str]]] = {}
        for sub in os.scandir(self.root):
            if sub.name.startswith(".") or not sub.is_dir(follow_symlinks=False):
                continue
            mtime = sub.stat().st_mtime_ns  # before the listing: a change during it rescans
            old = self._dirs.get(sub.name)
            if old is None or old[0] != mtime:
                try:
                    names = frozenset(n for n in os.listdir(sub.path) if not n.startswith("."))
                except FileNotFoundError:
                    continue
                old = (mtime, names)
            seen[sub.name] = old
        self._dirs = seen
        return set().union(*(ids for _, ids in seen.values()))
