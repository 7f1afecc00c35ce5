"""Mounting: the trio main loop (the mount point's checks are ``mountpoint.py``'s).

``serve()`` runs on the trio thread: ``pyfuse3.init`` mounts, one nursery runs the fetcher,
the signal watcher (SIGTERM/SIGINT end the loop and unmount cleanly), the stats publisher,
and ``pyfuse3.main()``. After a crash the mount is closed without unmounting, so a dead
daemon shows "Transport endpoint is not connected", never an empty directory, and the next
``thaw mount`` clears it (``mountpoint.prepare_mountpoint``). The kernel's read-ahead for
the mount is raised to 1 MiB through ``/sys/class/bdi``, which is what makes FUSE send 1 MiB
read requests.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

import pyfuse3
import trio

from .errors import MountError
from .fetch import ChunkFetcher
from .mountpoint import mount_device
from .ops import ImageOps, Namespace
from .stats import MountStats
from .tree import FsTree

log = logging.getLogger(__name__)
READ_AHEAD_KB = 1024
SETTLE = 0.001  # seconds between checks of the read-ahead after INIT
OPTIONS = ("fsname=thaw", "subtype=thaw", "ro", "default_permissions", "allow_other")


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


async def raise_read_ahead(ops: ImageOps, mountpoint: str, kb: int = READ_AHEAD_KB,
                           on_done: Callable[[], None] = lambda: None) -> None:
    """The kernel sets read-ahead from the INIT reply, so set ours after it has landed, then
    ``on_done``: the mount is ready only then. A workload let in before, with the kernel's
    128 KiB read-ahead, made the fetcher fetch 60% more of an image (226 chunks, not 137, for
    `python3 -c 'import json'`), many times what the wait costs.

    pyfuse3 calls ``ops.init`` and libfuse writes the reply in one synchronous call on the
    trio thread, and the kernel applies a reply in that write, so by the time this task runs
    again the reply has landed. The value is still read back twice, a millisecond apart,
    before the mount is called ready (it was 10 ms apart: 20 ms of every mount's start)."""
    await ops.initialized.wait()
    settled = 0
    for _ in range(400):
        await trio.sleep(SETTLE)
        settled = settled + 1 if await trio.to_thread.run_sync(
            _write_read_ahead, mountpoint, kb) else 0
        if settled == 2:
            break
    else:
        log.warning("the read-ahead of %s did not settle at %d KiB", mountpoint, kb)
    on_done()  # not when cancelled: a mount that ended before it was ready never was


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
            nursery.start_soon(raise_read_ahead, ops, mountpoint, READ_AHEAD_KB, on_ready)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
        clean = True
    finally:
        pyfuse3.close(unmount=clean)
