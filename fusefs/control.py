"""The mount's control files: how `thaw stats` and `thaw warm` talk to a running mount.

They are names the root answers to but never lists (as JuiceFS's ``.stats``), each a
read-only file whose contents are made when it is opened:

- ``MNT/.thaw-stats``: the mount's statistics, JSON.
- ``MNT/.thaw-warm.INO.WORKLOAD``: open it and the daemon queues ``WORKLOAD``'s hints for
  the image whose inode is ``INO`` (``stat`` of the image's directory gives it); reading
  it gives what was queued, JSON.

Extended attributes carried this before; a file instead lets a mount whose image has no
xattrs answer ``getxattr`` with ENOSYS, after which the kernel answers every ``getxattr``
itself (``ls -l`` asks two per file). Pure: names and inode numbers only; the adapter
(``ops.py``) opens and reads them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STATS_NAME = ".thaw-stats"
WARM_PREFIX = ".thaw-warm."
CONTROL_INO = 1 << 62  # above every image's inode range
# INO, then a workload name as hints take it (blobstore/image/hints.py)
_WARM = re.compile(rb"\.thaw-warm\.([0-9]{1,20})\.([A-Za-z0-9_][A-Za-z0-9._-]{0,63})")


@dataclass(frozen=True)
class Control:
    """One opened control file: the statistics, or a warm request."""

    kind: str  # "stats" or "warm"
    image_ino: int = 0
    workload: str = ""


def parse(name: bytes) -> Control | None:
    """The control file ``name`` (looked up in the root) stands for, or None."""
    if name == STATS_NAME.encode():
        return Control("stats")
    m = _WARM.fullmatch(name)
    if m is None:
        return None
    return Control("warm", int(m.group(1)), m.group(2).decode())


def warm_name(image_ino: int, workload: str) -> str:
    return f"{WARM_PREFIX}{image_ino}.{workload}"


class ControlInodes:
    """Inode numbers for the control files looked up so far; each lookup gets a fresh one,
    so a warm request is a new file every time and the kernel never reuses its contents."""

    def __init__(self) -> None:
        self._open: dict[int, Control] = {}
        self._next = CONTROL_INO

    def add(self, control: Control) -> int:
        ino, self._next = self._next, self._next + 1
        self._open[ino] = control
        if len(self._open) > 1024:  # lookups the kernel never opened: forget the oldest
            del self._open[next(iter(self._open))]
        return ino

    def get(self, ino: int) -> Control | None:
        return self._open.get(ino) if ino >= CONTROL_INO else None

    def forget(self, ino: int) -> None:
        self._open.pop(ino, None)
