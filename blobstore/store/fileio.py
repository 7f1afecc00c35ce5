"""Whole-file reads and writes in the fewest system calls, for the chunk path.

Python's ``open()`` costs an ``ioctl``, an ``lseek`` and a second ``fstat`` and ``read``
beyond the work; each is a point where a thread gives up the GIL, and with many fetch
threads each give-up is a hand-off between threads that costs more than the call
(``bench/datapath.py``'s cold row, with ``perf``). These use the ``os`` calls directly.
Thread-safe; they block.
"""

from __future__ import annotations

import os

_READ = os.O_RDONLY | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def read_whole(path: str | os.PathLike[str]) -> bytes:
    """The file's bytes: open, fstat, one read of its size (then to the end if that one
    came up short), close.
    OSError as ``open`` raises it (FileNotFoundError, IsADirectoryError, ...)."""
    fd = os.open(path, _READ)
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size) if size else b""
        if len(data) < size:  # shrank under us: read what there is, to the end
            parts = [data]
            while part := os.read(fd, 1 << 20):
                parts.append(part)
            data = b"".join(parts)
        return data
    finally:
        os.close(fd)


def write_new(path: str | os.PathLike[str], data: bytes | memoryview, *,
              fsync: bool = False, mode: int = 0o644) -> None:
    """Create ``path`` (it must not exist) holding ``data``; fsynced if asked."""
    fd = os.open(path, _CREATE, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
