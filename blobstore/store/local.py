"""A directory as an object store (``file://DIR``): the embedded default, no server.

Keys map to files under the root. A write goes to a temporary name in ``DIR/.tmp/``
(``tempfiles``), is fsynced and renamed over the key, so a reader or a crash never sees part
of an object and a concurrent writer of the same key is harmless. Names starting with '.'
are never keys, so temporaries never show up in listings; the first write of a process
sweeps temporaries that killed writers left more than an hour ago. Thread- and process-safe.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from ..errors import NotFound, StoreConfigError, StoreError, StoreUnavailable
from .base import ObjectInfo, ObjectStore, check_key, check_prefix
from .fileio import read_whole, write_new
from .tempfiles import sweep, temp_path

log = logging.getLogger(__name__)

_CONFIG_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR}
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


class LocalStore(ObjectStore):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        if self.root.exists() and not self.root.is_dir():
            raise StoreConfigError(f"{self}: {self.root} exists and is not a directory")
        self._swept = threading.Event()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _error(self, exc: OSError, doing: str) -> StoreError:
        where = f"{self}: cannot {doing}"
        if exc.errno in _FULL_ERRNOS:
            return StoreUnavailable(f"{where}: no space left on the device; free some and retry")
        if exc.errno in _CONFIG_ERRNOS:
            return StoreConfigError(f"{where}: {exc.strerror}")
        return StoreUnavailable(f"{where}: {exc.strerror or exc}")

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return read_whole(path)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{key} not found in {self}") from None
        except IsADirectoryError:
            raise NotFound(f"{key} not found in {self} (it is a directory)") from None
        except OSError as exc:
            raise self._error(exc, f"read {key}") from None

    def put(self, key: str, data: bytes) -> None:
        try:
            with self._staged(key, data) as (path, tmp):
                os.replace(tmp, path)
        except OSError as exc:
            raise self._error(exc, f"write {key}") from None

    def create(self, key: str, data: bytes) -> bool:
        """The bytes go to a temporary file, which is then hard-linked to the key: ``link``
        fails if the key exists, atomically, on every local file system and NFS."""
        try:
            with self._staged(key, data) as (path, tmp):
                os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            raise self._error(exc, f"create {key}") from None

    @contextlib.contextmanager
    def _staged(self, key: str, data: bytes) -> Iterator[tuple[Path, Path]]:
        """``(the key's path, a temporary file holding data)``; the temporary is gone after.
        The first write of a process sweeps what killed writers left."""
        path = self._path(key)
        if not self._swept.is_set():
            self._swept.set()
            if n := sweep(self.root):
                log.info("%s: removed %d temporary files that killed writers left", self, n)
        tmp = temp_path(self.root, path.name)
        try:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_new(tmp, data, fsync=True)
            yield path, tmp
        finally:
            tmp.unlink(missing_ok=True)

    def size(self, key: str) -> int:
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{key} not found in {self}") from None
        except OSError as exc:
            raise self._error(exc, f"look up {key}") from None
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(f"{key} not found in {self} (not a file)")
        return st.st_size

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise self._error(exc, f"delete {key}") from None

    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        top = self.root / check_prefix(prefix)
        stack = [top] if top.is_dir() else []
        while stack:
            yield from self._list_dir(stack.pop(), stack, prefix)

    def _list_dir(self, path: str | Path, stack: list, prefix: str) -> Iterator[ObjectInfo]:
        """The files in one directory; its subdirectories go on ``stack``. What is removed
        while listing is skipped, and only that: ending the listing there would hide every
        key after it (the collector takes a listing for the store's whole contents)."""
        try:
            with os.scandir(path) as entries:
                for e in entries:
                    if e.name.startswith("."):
                        continue  # temporaries of writes in progress
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(e.path)
                        elif e.is_file(follow_symlinks=False):
                            st = e.stat(follow_symlinks=False)
                            yield ObjectInfo(os.path.relpath(e.path, self.root), st.st_size,
                                             st.st_mtime)
                    except FileNotFoundError:
                        continue  # deleted since the directory was read
        except FileNotFoundError:
            return  # the directory was removed while listing
        except OSError as exc:
            raise self._error(exc, f"list {prefix or '/'}") from None

    def __str__(self) -> str:
        return f"file://{self.root}"
