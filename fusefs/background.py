"""Serving a mount in the background: fork, detach, log to a file, and tell the parent
when the mount answers.

The parent forks after the store is opened and the manifest loaded and checked, so errors
about them reach the person directly and the mount does not pay for a second start. The
child starts a new session, logs with timestamps to ``$XDG_STATE_HOME/thaw/log/`` (not the
cache: a cache that fills its disk must not silence its log), serves, and never returns
into the parent's code. Main thread only, before any other thread exists (fork).
"""

from __future__ import annotations

import logging
import os
import select
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from blobstore.errors import ThawError

from .errors import MountError

READY_TIMEOUT = 120.0


def default_log_dir() -> Path:
    """Where a background mount logs: the state directory, not the cache, so a cache that
    fills its disk cannot silence the log that says so."""
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "thaw" / "log"


def serve_in_background(serve_fn: Callable[[Callable[[], None]], None]) -> tuple[int, Path]:
    """Fork; the child serves the mount (``serve_fn(ready)``), the parent returns the
    child's pid and log once it answers, or raises MountError with the log's last line.

    Forking after the store is opened and the manifest loaded and checked means errors
    about them reach the person directly, and the mount does not pay for a second start.
    """
    log_dir = default_log_dir()
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MountError(f"cannot make the log directory {log_dir}: {exc.strerror}; set "
                         "XDG_STATE_HOME to a writable directory") from None
    log_path = log_dir / f"mount-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _serve_detached(serve_fn, w, log_path)
    os.close(w)
    ready, _, _ = select.select([r], [], [], READY_TIMEOUT)
    said = os.read(r, 64) if ready else b""
    os.close(r)
    if said.startswith(b"ready"):
        return pid, log_path
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        pass
    lines = log_path.read_text(errors="replace").strip().splitlines()
    detail = lines[-1].removeprefix("thaw: error: ") if lines else "no output"
    raise MountError(f"the mount did not come up: {detail} (log: {log_path})")


def _serve_detached(serve_fn, ready_fd: int, log_path: Path) -> None:
    """In the forked child: detach, log to a file, serve, and never return."""
    os.setsid()
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    for handler in logging.getLogger().handlers:  # a log file wants times; a terminal not
        handler.setFormatter(logging.Formatter("%(asctime)s thaw: %(levelname)s: %(message)s"))

    def ready() -> None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)

    code = 0
    try:
        serve_fn(ready)
    except ThawError as exc:
        print(f"thaw: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except BaseException:  # noqa: BLE001 - the child must not return into the parent's code
        traceback.print_exc()
        code = 70
    finally:
        sys.stderr.flush()
        os._exit(code)


