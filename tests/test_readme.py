"""The README holds what it promises: its quick start runs as it stands, it stays short,
and no page narrates a change (a change's effect goes in its commit message)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NARRATION = ("since the previous", "since the last", "before that", "this stop",
             "the last stop", "previous tables", "from the previous", "was measured before",
             "before this work", "before this change")


def quick_start() -> list[tuple[str, list[str]]]:
    """(command, expected output lines) of the README's quick-start console session."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Quick start.*?```console\n(.*?)```", text, re.S)
    assert block, "the README has no quick start session"
    steps: list[tuple[str, list[str]]] = []
    for line in block.group(1).splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return steps


def pattern(expected: str) -> re.Pattern:
    """An expected line as a regex: ``...`` matches anything, ``<manifest id>`` an id; runs
    of spaces are one space."""
    parts = re.split(r"(\.\.\.|<manifest id>)", " ".join(expected.split()))
    return re.compile("".join(".*" if p == "..." else "[0-9a-f]{64}" if p == "<manifest id>"
                              else re.escape(p) for p in parts))


@pytest.mark.mount
def test_the_quick_start_runs_as_the_readme_shows_it(tmp_path):
    """One shell, every command as written, in a scratch directory of the test's own (the
    session's `mktemp -d`, under this test's TMPDIR) with `.venv/bin` on the PATH."""
    steps = quick_start()
    marker = "@@thaw-readme-step@@"
    script = "set -e\n" + "".join(f"echo {marker}\n{cmd}\n" for cmd, _ in steps)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "TMPDIR": str(tmp_path), "HOME": str(tmp_path)}
    env.pop("THAW_STORE", None)
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # stderr is a line or two per command (thaw's notes): where each belongs is found
        # by matching, since a pipe orders the two streams differently from a terminal
        outputs = proc.stdout.split(marker + "\n")[1:]
        notes = [n for n in proc.stderr.splitlines() if n.strip()]
        for (cmd, expected), got in zip(steps, outputs, strict=True):
            lines = [*got.splitlines()]
            for want in expected:
                rx = pattern(want)
                hit = next((x for x in lines if rx.fullmatch(" ".join(x.split()))), None)
                if hit is None:
                    hit = next((n for n in notes if rx.fullmatch(" ".join(n.split()))), None)
                    assert hit is not None, f"{cmd!r}: no line matches {want!r} in {got!r}"
                    notes.remove(hit)
                else:
                    lines.remove(hit)
            assert lines == [], f"{cmd!r} printed more than the README shows: {lines}"
        assert notes == [], f"notes the README does not show: {notes}"
    finally:
        for mnt in tmp_path.glob("tmp.*/mnt"):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_the_readme_is_a_page_a_newcomer_finishes():
    assert len((REPO / "README.md").read_text().splitlines()) < 300


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_no_page_narrates_a_change(path):
    text = " ".join(path.read_text().lower().split())
    assert [p for p in NARRATION if p in text] == []


def test_every_link_between_the_pages_leads_to_one():
    broken = []
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", path.read_text()):
            if not (path.parent / target).exists():
                broken.append(f"{path.name} -> {target}")
    assert broken == []


EXAMPLES = {"hello.py", "model.safetensors", "work.json", "reports.json"}  # a reader's files


def test_every_file_a_page_names_exists():
    """A path in backticks (``fusefs/mount.py``, ``store/peers.py``, ``peerhedge.py``)
    names a file of the repository (the end of its path); a move must not leave a page
    pointing at none."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    missing = []
    for path in DOCS:
        text = path.read_text()
        for token in re.findall(r"`([a-z][\w./-]*\.(?:py|sh|md|yaml|toml))`", text):
            if token not in EXAMPLES and not any(f == token or f.endswith("/" + token)
                                                 for f in files):
                missing.append(f"{path.name}: {token}")
    assert missing == []
