"""A store that hangs: a real SeaweedFS stopped with SIGSTOP (it still accepts connections,
as a wedged server does, and never answers).

Every command ends with one line and exit 3 within the ``--store-timeout`` budget plus its
start-up, and a mount's read gets EIO within the budget: the README's figures, each with
half a second for a loaded machine's scheduling, never exact times.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import time

import pytest

from .conftest import Mounted
from .support import safetensors_bytes

pytestmark = pytest.mark.s3
BUDGET = 3.0
SLACK = 0.5  # seconds of scheduling on a loaded two-core machine


@contextlib.contextmanager
def paused(seaweed):
    os.killpg(seaweed.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(seaweed.proc.pid, signal.SIGCONT)


@pytest.fixture
def s3_thaw(thaw, s3_url):
    thaw.store = s3_url
    return thaw


def _start_up(*args: str) -> float:
    import subprocess
    import sys

    started = time.monotonic()
    subprocess.run([sys.executable, *args], check=True, capture_output=True)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def start_up(tmp_path_factory) -> dict[str, float]:
    """Seconds this machine takes now to start a command: `thaw ls` of an empty file store
    (no store I/O to wait on), and Python importing torch (`thaw snapshot` and `thaw
    restore`), which vary with the load of the machine."""
    empty = tmp_path_factory.mktemp("empty-store")
    return {"thaw": _start_up("-m", "thaw", "--store", f"file://{empty}", "ls"),
            "torch": _start_up("-c", "import torch, safetensors")}


@pytest.mark.parametrize("args", [
    ["push", "{src}", "a:2"], ["ls"], ["inspect", "a:1"], ["export", "a:1", "{tmp}/out"],
    ["mount", "a:1", "{tmp}/mnt"], ["place", "--workloads", "{tmp}/w.json"],
    ["snapshot", "{tmp}/w.safetensors", "a:3"], ["restore", "a:1"], ["verify", "a:1"],
    ["gc", "--force", "--grace", "0"], ["check"], ["tag", "a:1", "b:1"], ["rm", "a:1"],
    ["cat", "a:1", "etc/hostname"],
])
def test_every_command_against_a_hung_store_is_one_line_and_exit_3_within_the_budget(
        s3_thaw, seaweed, rich_tree, tmp_path, args, start_up):
    (tmp_path / "mnt").mkdir()
    (tmp_path / "w.json").write_text('[{"image": "a:1", "gpus": 1}]')
    (tmp_path / "w.safetensors").write_bytes(safetensors_bytes())
    s3_thaw("push", str(rich_tree), "a:1")
    args = [a.format(src=rich_tree, tmp=tmp_path) for a in args]
    with paused(seaweed):
        started = time.monotonic()
        proc = s3_thaw("--store-timeout", str(BUDGET), *args, check=False)
        took = time.monotonic() - started
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert err.startswith("thaw: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    own = start_up["torch" if args[0] in ("snapshot", "restore") else "thaw"]
    assert took < BUDGET + own + SLACK, (took, own)


@pytest.mark.mount
@pytest.mark.allow_log_warnings
def test_a_read_against_a_hung_store_gets_eio_within_the_budget_and_works_after(
        s3_thaw, seaweed, rich_tree, tmp_path):
    s3_thaw("push", str(rich_tree), "a:1", "--chunker", "fastcdc:64K")
    mnt = tmp_path / "mnt"
    with Mounted(s3_thaw, mnt, "--store-timeout", str(BUDGET), "mount", "a:1", str(mnt),
                 "--cache-dir", str(tmp_path / "cache"), "--no-hints"):
        with paused(seaweed):
            started = time.monotonic()
            with pytest.raises(OSError) as info:
                (mnt / "bin" / "ping").read_bytes()
            took = time.monotonic() - started
        assert info.value.errno == errno.EIO
        assert took < BUDGET + SLACK, took
        # The store is back: the next read works (the failed chunk is asked for again once
        # another has been fetched).
        assert (mnt / "etc" / "hostname").read_bytes() == b"thaw\n"
        assert (mnt / "bin" / "ping").read_bytes() == (rich_tree / "bin" / "ping").read_bytes()
        stats = json.loads(s3_thaw("stats", str(mnt), "--json").stdout)
        assert stats["errors"] >= 1


def test_the_store_timeout_is_20_seconds_by_default(s3_thaw, seaweed, rich_tree, start_up):
    """Without --store-timeout a command against a hung store gives up after the README's
    20 s: not before a third of it (one S3 request's own wait), not after it."""
    s3_thaw("push", str(rich_tree), "a:1")
    with paused(seaweed):
        started = time.monotonic()
        proc = s3_thaw("ls", check=False)
        took = time.monotonic() - started
    assert proc.returncode == 3, proc.stderr
    assert 20 / 3 <= took < 20 + start_up["thaw"] + SLACK, took
