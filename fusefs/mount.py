"""Mounting: the mount point's checks, a stale mount's clean-up, and the trio main loop.

``serve()`` runs on the trio thread: ``pyfuse3.init`` mounts, one nursery runs the fetcher,
the signal watcher (SIGTERM/SIGINT end the loop and unmount cleanly), the stats publisher,
and ``pyfuse3.main()``. After a crash the mount is closed without unmounting, so a dead
daemon shows "Transport endpoint is not connected", never an empty directory, and the next
``thaw mount`` clears it: found in mountinfo and probed with ``statfs``, which the kernel
cannot answer from its caches. The kernel's read-ahead for the mount is raised to 1 MiB
through ``/sys/class/bdi``, which is what makes FUSE send 1 MiB read requests.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable

import pyfuse3
import trio

from .errors import MountError
from .fetch import ChunkFetcher
from .ops import ImageOps, Namespace
from .stats import MountStats
from .tree import FsTree

log = logging.getLogger(__name__)
READ_AHEAD_KB = 1024
PROBE_TIMEOUT = 2.0  # seconds a live daemon has to answer statfs
OPTIONS = ("fsname=thaw", "subtype=thaw", "ro", "default_permissions", "allow_other")


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


def _write_read_ahead(mountpoint: str, kb: int) -> bool:
    """Set the mount's read-ahead; True if it reads back as set."""
    dev = mount_device(mountpoint)
    path = f"/sys/class/bdi/{dev}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(kb))
        with open(path) as f:
            return int(f.read()) == kb
    except (OSError, ValueError) as exc:
        log.info("could not raise read-ahead of %s: %s", mountpoint, exc)
        return True  # nothing more to try


async def raise_read_ahead(ops: ImageOps, mountpoint: str, kb: int = READ_AHEAD_KB) -> None:
    """The kernel sets read-ahead from the INIT reply, so set ours after it has landed."""
    await ops.initialized.wait()
    settled = 0
    for _ in range(40):
        await trio.sleep(0.05)
        settled = settled + 1 if await trio.to_thread.run_sync(
            _write_read_ahead, mountpoint, kb) else 0
        if settled == 2:
            return


async def _watch_signals(cancel: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("signal %s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


async def _publish(snapshot: Callable[[], None]) -> None:
    while True:
        snapshot()
        await trio.sleep(1)


async def serve(namespace: Namespace, fetcher: ChunkFetcher, mountpoint: str, *,
                on_ready: Callable[[], None] = lambda: None,
                publish: Callable[[], None] = lambda: None, extra=(),
                on_chunk_read: Callable[[FsTree, int], None] | None = None,
                statistics: Callable[[], MountStats] | None = None,
                on_warm=None) -> None:
    """Mount ``namespace`` at ``mountpoint`` (checked by the caller with
    ``prepare_mountpoint``) and serve it until a signal or an unmount.

    Nothing on this thread may touch the mount point once it is mounted: the requests it
    makes would wait for this very loop.
    """
    mountpoint = os.path.realpath(mountpoint)
    ops = ImageOps(namespace, fetcher, on_chunk_read, statistics, on_warm)
    try:
        pyfuse3.init(ops, mountpoint, set(OPTIONS))
    except RuntimeError as exc:
        raise MountError(f"cannot mount at {mountpoint}: {exc}") from None
    clean = False
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(fetcher.run)
            for task in extra:  # long-lived parts: the daemon's node reporter, hints
                await nursery.start(task)
            nursery.start_soon(_watch_signals, nursery.cancel_scope)
            nursery.start_soon(_publish, publish)
            nursery.start_soon(raise_read_ahead, ops, mountpoint)
            on_ready()
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
        clean = True
    finally:
        pyfuse3.close(unmount=clean)
