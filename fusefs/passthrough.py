"""FUSE passthrough: an open answered with a backing file, so that the kernel serves read and
mmap of it from that file without asking the daemon (kernel >= 6.9, libfuse >= 3.16).

A backing file is registered on the session's ``/dev/fuse`` descriptor
(``FUSE_DEV_IOC_BACKING_OPEN``, which needs ``CAP_SYS_ADMIN``) and named by the id the
kernel returns; the open's reply carries the id (``FileInfo.backing_id``, in pyfuse3 as
``scripts/pyfuse3.sh`` rebuilds it), with ``keep_cache`` off (the kernel refuses both). The
kernel's rules, all kept here: one backing id per inode (a second one for the same inode is
EIO), so it is counted and closed on its inode's last release; an inode is in one mode at a
time (a normal open and a passthrough open of one file at once fail with EIO), so while a
file has handles open the normal way, its next opens go the normal way too, and while it
has a backing id, every next open reuses it. A backing file must lie on a file system that
stacks on nothing (the mount itself stacks one deep, so overlayfs can still stack on it): a
cache on a container's overlay root cannot back files.

``mode`` ``auto`` uses passthrough where pyfuse3, the kernel and the privileges allow; where
they do not, the mount serves as without it, and says why once in its log (``why``). An
ioctl that fails falls back for that open and is counted; one the kernel refuses outright
(``EPERM``: it did not grant passthrough at INIT) turns passthrough off. Nothing here may
raise into a FUSE handler. Trio thread only (the ioctls do not block).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from collections.abc import Callable

log = logging.getLogger(__name__)
BACKING_OPEN = 0x4010E501  # _IOW(229, 1, struct fuse_backing_map): {int32 fd, u32 flags, u64}
BACKING_CLOSE = 0x4004E502  # _IOW(229, 2, uint32_t)
MIN_KERNEL = (6, 9)


def support(mode: str) -> str | None:
    """Why passthrough cannot be used here (None: it can be tried)."""
    if mode == "off":
        return "--passthrough off"
    release = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
    if release < MIN_KERNEL:
        return f"the kernel is {os.uname().release}; FUSE passthrough needs 6.9 or later"
    if os.geteuid() != 0:
        return "passthrough needs CAP_SYS_ADMIN (root)"
    try:
        import pyfuse3
    except ImportError:
        return "pyfuse3 is not installed"
    if not hasattr(pyfuse3, "thaw_session_fd"):
        return "pyfuse3 was not rebuilt with passthrough (scripts/pyfuse3.sh; make install)"
    return None


_ASK = object()  # Passthrough(why=...): find out with ``support``


class Passthrough:
    def __init__(self, mode: str = "auto", *, why: str | None | object = _ASK,
                 session_fd: Callable[[], int] | None = None) -> None:
        """``why``: the reason it is off (None: it is on), when known already; by default
        ``support(mode)`` says."""
        self.why = support(mode) if why is _ASK else why
        self.opens = 0  # opens answered with a backing file
        self.fallbacks = 0  # opens that tried and fell back to the chunk path
        self._session_fd = session_fd
        self._backing: dict[int, list[int]] = {}  # inode -> [backing id, handles]
        self._normal: dict[int, int] = {}  # inode -> handles open the normal way
        self._said = False

    @property
    def enabled(self) -> bool:
        return self.why is None

    def state(self) -> str:
        return "on" if self.enabled else f"off: {self.why}"

    def say_why(self) -> None:
        """Once: why the mount serves without passthrough."""
        if not self.enabled and not self._said:
            self._said = True
            log.info("serving without FUSE passthrough: %s", self.why)

    def open(self, ino: int, path: str | os.PathLike[str]) -> int | None:
        """A backing id for a passthrough open of ``ino`` backed by the file ``path``, or
        None: serve this open the normal way (and call ``opened_normally``)."""
        if not self.enabled or self._normal.get(ino):
            return None
        held = self._backing.get(ino)
        if held is not None:
            held[1] += 1
            self.opens += 1
            return held[0]
        try:
            id = self._register(path)
        except OSError as exc:
            self.fallbacks += 1
            if exc.errno in (errno.EPERM, errno.ENOTTY, errno.EOPNOTSUPP):
                self.why = f"the kernel refused it ({os.strerror(exc.errno)})"
                self.say_why()
            else:
                log.info("passthrough of inode %d (%s) not used: %s", ino, path, exc.strerror)
            return None
        self._backing[ino] = [id, 1]
        self.opens += 1
        return id

    def _register(self, path: str | os.PathLike[str]) -> int:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:  # the kernel keeps its own reference to the file: ours can go at once
            arg = bytearray(struct.pack("iIQ", fd, 0, 0))
            return fcntl.ioctl(self._fuse_fd(), BACKING_OPEN, arg, True)
        finally:
            os.close(fd)

    def _fuse_fd(self) -> int:
        if self._session_fd is None:
            import pyfuse3

            self._session_fd = pyfuse3.thaw_session_fd
        return self._session_fd()

    def opened_normally(self, ino: int) -> None:
        self._normal[ino] = self._normal.get(ino, 0) + 1

    def released(self, ino: int, backing: bool) -> None:
        """A handle of ``ino`` was released (``backing``: one of its passthrough opens)."""
        if not backing:
            left = self._normal.get(ino, 0) - 1
            if left > 0:
                self._normal[ino] = left
            else:
                self._normal.pop(ino, None)
            return
        held = self._backing.get(ino)
        if held is None:
            return
        held[1] -= 1
        if held[1] <= 0:
            del self._backing[ino]
            try:
                fcntl.ioctl(self._fuse_fd(), BACKING_CLOSE, struct.pack("I", held[0]))
            except OSError as exc:  # the id goes with the session anyway
                log.info("backing id %d not closed: %s", held[0], exc.strerror)

    def backing_ids(self) -> int:
        return len(self._backing)
