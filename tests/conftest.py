"""Shared fixtures: a SeaweedFS server, the Debian root file system, the thaw command."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from . import rootfs
from .seaweed import SeaweedServer
from .support import build_rich_tree

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_unexpected_log_warnings(caplog, request):
    """A WARNING or ERROR logged by a test that did not expect it fails the test."""
    yield
    if request.node.get_closest_marker("allow_log_warnings"):
        return
    bad = [f"{r.levelname}: {r.getMessage()}" for r in caplog.get_records("call")
           if r.levelno >= logging.WARNING]
    assert not bad, f"unexpected log lines: {bad}"


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(seaweed, monkeypatch):
    for key, value in seaweed.env().items():
        monkeypatch.setenv(key, value)
    return seaweed.env()


@pytest.fixture
def s3_url(s3_env) -> str:
    return f"s3://thaw/test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store_url(tmp_path) -> str:
    return f"file://{tmp_path / 'store'}"


@pytest.fixture
def rich_tree(tmp_path) -> Path:
    return build_rich_tree(tmp_path / "rich")


@pytest.fixture(scope="session")
def debian_tar() -> Path:
    """A Debian 12 minbase root file system with python3 and numpy, as a tar (cached)."""
    try:
        return rootfs.debian_tar()
    except rootfs.RootfsUnavailable as exc:
        pytest.fail(str(exc))


class Thaw:
    """Runs the real command line in a subprocess, with a given store.

    The environment is this process's at call time (so fixtures that set AWS variables
    apply), with ``env`` laid over it.
    """

    def __init__(self, store: str) -> None:
        self.store, self.env = store, {}

    def __call__(self, *args: str, check: bool = True, input: bytes | None = None,
                 store: str | None = None) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "thaw", "--store", store or self.store, *args]
        env = {**os.environ, **self.env}
        proc = subprocess.run(cmd, capture_output=True, env=env, input=input, cwd=REPO)
        if check and proc.returncode != 0:
            raise AssertionError(f"{cmd} exited {proc.returncode}:\n"
                                 f"{proc.stderr.decode(errors='replace')}")
        return proc


@pytest.fixture
def thaw(store_url) -> Thaw:
    return Thaw(store_url)


def rsync_diff(src: Path, dst: Path) -> str:
    """What rsync would change to make ``dst`` equal ``src``: empty when identical."""
    proc = subprocess.run(["rsync", "--dry-run", "--itemize-changes", "-aHAXc", "--numeric-ids",
                           "--delete", f"{src}/", f"{dst}/"], capture_output=True, check=True)
    return proc.stdout.decode(errors="replace")


class CountsRequests:
    """Mixed into a store class (before it): notes the keys of its gets and puts."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gets: list[str] = []
        self.puts: list[str] = []

    def get(self, key: str) -> bytes:
        self.gets.append(key)
        return super().get(key)

    def put(self, key: str, data: bytes) -> None:
        self.puts.append(key)
        super().put(key, data)


class Mounted:
    """A real ``thaw mount`` (or ``daemon``) in the background, unmounted on exit."""

    def __init__(self, thaw: Thaw, mountpoint: Path, *args: str, store: str | None = None):
        self.thaw, self.mountpoint, self.args, self.store = thaw, mountpoint, args, store

    def __enter__(self) -> Path:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.thaw(*self.args, "--background", store=self.store)
        return self.mountpoint

    def __exit__(self, *exc: object) -> None:
        unmount(self.mountpoint)


def unmount(mountpoint: Path) -> None:
    if subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def mount_pid(mountpoint: Path) -> int:
    """The pid of the thaw process serving ``mountpoint``."""
    out = subprocess.run(["pgrep", "-f", f"thaw.*mount.* {mountpoint}( |$)"],
                         capture_output=True, text=True).stdout.split()
    assert out, f"no thaw process serves {mountpoint}"
    return int(out[0])
