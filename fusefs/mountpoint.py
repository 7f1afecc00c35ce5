"""The mount point, checked before anything is mounted there: whether something is mounted
at it (from mountinfo, touching nothing under it), a dead thaw mount cleared, a live, hung
or foreign one refused with what to do. No pyfuse3 or trio here: ``thaw mount`` checks its
mount point while those are still loading. Synchronous; ``probe`` asks in a daemon thread.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import threading

from .errors import MountError

log = logging.getLogger(__name__)
PROBE_TIMEOUT = 2.0  # seconds a live daemon has to answer statfs


def _mount_at(mountpoint: str) -> tuple[str, str] | None:
    """``(major:minor, fstype)`` of the last file system mounted at ``mountpoint``, from
    mountinfo. Touches nothing under the mount point: this process may be the one serving
    it, or its daemon may be dead. ``mountpoint`` must be absolute and resolved."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4].encode().decode("unicode_escape") == mountpoint:
                fstype = fields[fields.index("-") + 1]
                found = (fields[2], fstype)  # the last mount on top wins
    return found


def mount_device(mountpoint: str) -> str | None:
    """``major:minor`` of the file system mounted at ``mountpoint`` (absolute, resolved)."""
    found = _mount_at(mountpoint)
    return found[0] if found else None


def is_mounted(mountpoint: str) -> bool:
    """Whether something is mounted at ``mountpoint``; touches nothing under it."""
    return mount_device(_resolved(mountpoint)) is not None


def _resolved(path: str) -> str:
    """``path`` absolute, with its parent's symlinks resolved; the last part is not touched."""
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def probe(mountpoint: str, timeout: float = PROBE_TIMEOUT) -> str:
    """'alive', 'dead' or 'hung': how the file system at ``mountpoint`` answers ``statfs``,
    which the kernel always forwards to a FUSE daemon (attributes and entries it may answer
    from its cache, so a ``stat`` can succeed on a mount whose daemon was killed). Asked in
    a daemon thread, so a hung daemon costs ``timeout``, not this process."""
    result: list[str] = []

    def ask() -> None:
        try:
            os.statvfs(mountpoint)
            result.append("alive")
        except OSError as exc:
            result.append("dead" if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
                          else "alive")

    t = threading.Thread(target=ask, daemon=True, name="thaw-probe")
    t.start()
    t.join(timeout)
    return result[0] if result else "hung"


def clear_stale(mountpoint: str) -> None:
    """Lazily unmount a mount whose daemon died ("Transport endpoint is not connected")."""
    for cmd in (["fusermount3", "-u", "-z", mountpoint], ["umount", "-l", mountpoint]):
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            log.warning("cleared a stale mount at %s left by a daemon that died", mountpoint)
            return
    raise MountError(f"{mountpoint}: a dead mount is in the way and could not be cleared; "
                     f"run `umount -l {mountpoint}` as root")


def _clear_if_stale(mountpoint: str) -> None:
    """A thaw mount at ``mountpoint`` whose daemon is dead is cleared; a live or hung one,
    or another file system, is an error that says what to do. The mount point itself is
    never stat-ed here: a stat of a FUSE root can wait forever on a stopped daemon."""
    path = _resolved(mountpoint)
    found = _mount_at(path)
    if found is None:
        return
    state = probe(path) if found[1].startswith("fuse") else "alive"
    if state == "dead" and found[1] == "fuse.thaw":
        clear_stale(path)
    elif state == "hung":
        raise MountError(f"the mount at {mountpoint} does not answer (its daemon is stopped "
                         f"or stuck); `umount -l {mountpoint}` clears it")
    elif state == "alive":
        raise MountError(f"{mountpoint} is already a mount point; `thaw umount {mountpoint}` "
                         "first")
    else:
        raise MountError(f"a dead {found[1]} mount is at {mountpoint}; `umount -l "
                         f"{mountpoint}` clears it")


def prepare_mountpoint(mountpoint: str) -> None:
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: load the fuse module (modprobe fuse), or give "
                         "the container --device /dev/fuse")
    _clear_if_stale(mountpoint)
    try:
        os.stat(mountpoint)
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):  # a dead mount under another name
            clear_stale(mountpoint)
        elif exc.errno == errno.ENOENT:
            raise MountError(f"mount point {mountpoint} does not exist; create it "
                             "(mkdir -p)") from None
        else:
            raise MountError(f"mount point {mountpoint}: {exc.strerror}") from None
    if not os.path.isdir(mountpoint):
        raise MountError(f"mount point {mountpoint} is not a directory")
    if os.listdir(mountpoint):
        raise MountError(f"mount point {mountpoint} is not empty; use an empty directory")
