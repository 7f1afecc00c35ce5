"""The data stream: every regular file's bytes laid end to end in the manifest's order.

``DataStream`` is a raw, read-only file over that concatenation, for the chunker to read
with ``readinto``. Each file must give exactly the size its metadata said: a short or long
file (changed during the push, or a lying archive) is a SourceError, never a torn chunk.
Single-threaded.
"""

from __future__ import annotations

import io
from collections.abc import Callable

from .errors import SourceError
from .tree import Node


class DataStream(io.RawIOBase):
    def __init__(self, files: list[tuple[str, Node]],
                 on_read: Callable[[int], None] | None = None) -> None:
        self._files = files
        self._next = 0
        self._current = None
        self._left = 0
        self._path = ""
        self._on_read = on_read

    def readable(self) -> bool:
        return True

    def _open_next(self) -> bool:
        self._close_current()
        if self._next >= len(self._files):
            return False
        self._path, node = self._files[self._next]
        self._next += 1
        self._current = node.data.open()  # type: ignore[union-attr]
        self._left = node.size
        return True

    def _close_current(self) -> None:
        if self._current is not None:
            try:
                more = self._current.read(1)
            except OSError as exc:
                raise SourceError(f"{self._path}: cannot read ({exc.strerror or exc})") from None
            if more:
                raise SourceError(f"{self._path}: has more bytes than its recorded size "
                                  "(changed while pushing?)")
            self._current.close()
            self._current = None

    def readinto(self, b) -> int:  # type: ignore[override]
        view = memoryview(b).cast("B")
        while self._left == 0:
            if not self._open_next():
                return 0
        try:
            n = self._current.readinto(view[:self._left])  # type: ignore[union-attr]
        except OSError as exc:  # EIO from a failing disk or a remote file system
            raise SourceError(f"{self._path}: cannot read ({exc.strerror or exc})") from None
        if not n:
            raise SourceError(f"{self._path}: ended {self._left} bytes before its recorded "
                              "size (truncated, or changed while pushing)")
        self._left -= n
        if self._on_read:
            self._on_read(n)
        return n

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
        super().close()
