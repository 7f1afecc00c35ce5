"""Read ahead the files a ``thaw`` process imports, so a cold node loads them in parallel.

On a node whose page cache is cold (just booted, or dropped), importing what ``thaw mount``
needs reads a few hundred small files one after another, each a round trip to the disk:
0.55-0.85 s, where the same imports take 0.3 s from the page cache (measured on this
project's 2-core machines). ``start`` asks the kernel to read them all at once
(``posix_fadvise(WILLNEED)``: it queues the reads and returns) from a thread, while the
interpreter imports on the main thread and finds them arriving. The list is written at
install time (``python -m thaw.warmup``, from ``make install``) by importing what a mount
imports and naming every module file, in import order; without it nothing is done.

``wait`` joins the thread; the command line calls it before running a command, so no
thread of this module is alive when a background mount forks.
"""

from __future__ import annotations

import os
import sys
import threading

LIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "startup-files.txt")
_thread: threading.Thread | None = None


def _advise(paths: list[str]) -> None:
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # gone since the list was written: the import will say so, not this
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def start(listing: str = LIST) -> None:
    """Start reading ahead what the list names (nothing if there is no list)."""
    global _thread
    if not hasattr(os, "posix_fadvise"):
        return
    try:
        with open(listing) as f:
            paths = f.read().split("\n")
    except OSError:
        return
    _thread = threading.Thread(target=_advise, args=(paths,), name="thaw-warmup",
                               daemon=True)
    _thread.start()


def wait() -> None:
    if _thread is not None:
        _thread.join()


def module_files() -> list[str]:
    """Every file of the modules loaded so far, in the order they were loaded: sources'
    compiled bytecode, extension modules and the shared libraries beside them."""
    seen: dict[str, None] = {}
    for module in list(sys.modules.values()):
        spec = getattr(module, "__spec__", None)
        for path in (getattr(spec, "cached", None), getattr(module, "__file__", None)):
            if path and os.path.isfile(path) and not path.endswith(".py"):
                seen[os.path.realpath(path)] = None
    return list(seen)


def record(listing: str = LIST) -> int:
    """Import what ``thaw mount`` imports and write the list of its files."""
    import importlib

    for name in ("thaw.main", "fusefs.cli", "fusefs.service", "blobstore.store.s3lite",
                 "blobstore.store.peers"):
        importlib.import_module(name)
    files = module_files()
    tmp = f"{listing}.tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(files) + "\n")
    os.replace(tmp, listing)
    return len(files)


if __name__ == "__main__":
    print(f"{record()} files listed in {LIST}")
