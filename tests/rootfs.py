"""The one builder of a real container root file system, for tests and benchmarks: Debian 12
minbase with python3 and numpy (~260 MB of files), made once with mmdebstrap as a tar and
kept in ``$THAW_TEST_CACHE`` (default ``~/.cache/thaw-test``)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CACHE = Path(os.environ.get("THAW_TEST_CACHE", Path.home() / ".cache" / "thaw-test"))
DEBIAN_INCLUDE = "python3,python3-numpy"


class RootfsUnavailable(RuntimeError):
    """mmdebstrap is missing, or it failed."""


def debian_tar() -> Path:
    """The tar, built on first use (written under a temporary name, then renamed)."""
    path = CACHE / "rootfs-py.tar"
    if path.exists():
        return path
    if not shutil.which("mmdebstrap"):
        raise RootfsUnavailable("mmdebstrap is not installed; run `make install`")
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    subprocess.run(["mmdebstrap", "--variant=minbase", f"--include={DEBIAN_INCLUDE}",
                    "--format=tar", "--quiet", "bookworm", str(tmp),
                    "http://deb.debian.org/debian"], check=True)
    tmp.rename(path)
    return path
