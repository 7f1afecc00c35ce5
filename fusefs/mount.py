"""Mounting: the mount point's checks, a stale mount's clean-up, and the trio main loop.

``serve()`` runs on the trio thread: ``pyfuse3.init`` mounts, one nursery runs the fetcher,
the signal watcher (SIGTERM/SIGINT end the loop and unmount cleanly), the stats publisher,
and ``pyfuse3.main()``. After a crash the mount is closed without unmounting, so a dead
daemon shows "Transport endpoint is not connected", never an empty directory, and the next
``thaw mount`` clears it. The kernel's read-ahead for the mount is raised to 1 MiB through
``/sys/class/bdi``, which is what makes FUSE send 1 MiB read requests.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
from collections.abc import Callable

import pyfuse3
import trio

from .errors import MountError
from .fetch import ChunkFetcher
from .ops import ImageOps, Namespace
from .tree import FsTree

log = logging.getLogger(__name__)
READ_AHEAD_KB = 1024
OPTIONS = ("fsname=thaw", "subtype=thaw", "ro", "default_permissions", "allow_other")


def mount_device(mountpoint: str) -> str | None:
    """``major:minor`` of the file system mounted at ``mountpoint``, from mountinfo.

    Touches nothing under the mount point: this process may be the one serving it.
    ``mountpoint`` must already be absolute and resolved (``os.path.realpath`` stats it).
    """
    target = mountpoint
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4].encode().decode("unicode_escape") == target:
                found = fields[2]  # the last mount on top wins
    return found


def is_mounted(mountpoint: str) -> bool:
    """Whether something is mounted at ``mountpoint``; call it only from a process that
    does not serve that mount (resolving the path stats it)."""
    return mount_device(os.path.realpath(mountpoint)) is not None


def clear_stale(mountpoint: str) -> None:
    """Lazily unmount a mount whose daemon died ("Transport endpoint is not connected")."""
    for cmd in (["fusermount3", "-u", "-z", mountpoint], ["umount", "-l", mountpoint]):
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            log.warning("cleared a stale mount at %s left by a daemon that died", mountpoint)
            return
    raise MountError(f"{mountpoint}: a dead mount is in the way and could not be cleared; "
                     f"run `umount -l {mountpoint}` as root")


def prepare_mountpoint(mountpoint: str) -> None:
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: load the fuse module (modprobe fuse), or give "
                         "the container --device /dev/fuse")
    try:
        os.stat(mountpoint)
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):  # its daemon died
            clear_stale(mountpoint)
        elif exc.errno == errno.ENOENT:
            raise MountError(f"mount point {mountpoint} does not exist; create it "
                             "(mkdir -p)") from None
        else:
            raise MountError(f"mount point {mountpoint}: {exc.strerror}") from None
    if not os.path.isdir(mountpoint):
        raise MountError(f"mount point {mountpoint} is not a directory")
    if is_mounted(mountpoint):
        raise MountError(f"{mountpoint} is already a mount point; `thaw umount {mountpoint}` "
                         "first")
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
                on_chunk_read: Callable[[FsTree, int], None] | None = None) -> None:
    """Mount ``namespace`` at ``mountpoint`` and serve it until a signal or an unmount.

    Nothing on this thread may touch the mount point once it is mounted: the requests it
    makes would wait for this very loop.
    """
    prepare_mountpoint(mountpoint)
    mountpoint = os.path.realpath(mountpoint)
    ops = ImageOps(namespace, fetcher, on_chunk_read)
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
