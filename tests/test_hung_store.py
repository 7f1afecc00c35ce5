"""A store that hangs: a real SeaweedFS stopped with SIGSTOP (it still accepts connections,
as a wedged server does, and never answers).

Every command ends with one line and exit 3, and a mount's read gets EIO, within the
``--store-timeout`` budget; the bounds asserted are twice the budget, never exact times.
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

pytestmark = pytest.mark.s3
BUDGET = 3.0


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


@pytest.fixture(scope="module")
def torch_start() -> float:
    """Seconds this machine takes now to start Python and import torch: the start-up of
    `thaw snapshot` and `thaw restore`, which varies with the load of the machine."""
    import subprocess
    import sys

    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import torch, safetensors"], check=True)
    return time.monotonic() - started


@pytest.mark.parametrize("args", [
    ["push", "{src}", "a:2"], ["ls"], ["inspect", "a:1"], ["export", "a:1", "{tmp}/out"],
    ["mount", "a:1", "{tmp}/mnt"], ["place", "--workloads", "{tmp}/w.json"],
    ["snapshot", "{tmp}/w.safetensors", "a:3"], ["restore", "a:1"], ["verify", "a:1"],
])
def test_every_command_against_a_hung_store_is_one_line_and_exit_3_within_the_budget(
        s3_thaw, seaweed, rich_tree, tmp_path, args, torch_start):
    (tmp_path / "mnt").mkdir()
    (tmp_path / "w.json").write_text('[{"image": "a:1", "gpus": 1}]')
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(4)}, str(tmp_path / "w.safetensors"))
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
    start_up = torch_start + 2 if args[0] in ("snapshot", "restore") else 5
    assert took < 2 * BUDGET + max(5, start_up)  # + the interpreter's start and imports


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
        assert took < 2 * BUDGET
        # The store is back: the next read works (the failed chunk is asked for again once
        # another has been fetched).
        assert (mnt / "etc" / "hostname").read_bytes() == b"thaw\n"
        assert (mnt / "bin" / "ping").read_bytes() == (rich_tree / "bin" / "ping").read_bytes()
        stats = json.loads(s3_thaw("stats", str(mnt), "--json").stdout)
        assert stats["errors"] >= 1
