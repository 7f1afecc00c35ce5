"""Temporary names for atomic writes, in one hidden directory per store or cache, and the
sweep that removes what a killed writer left there.

A write goes to ``ROOT/.tmp/<random>-<name>`` and is renamed over its key, so readers and
crashes never see part of an object, listings never see temporaries (hidden names are not
keys), and what ``kill -9`` leaves is found by listing one directory, not the whole tree.
Files there older than ``STALE_AFTER`` belong to no live writer (one write takes seconds)
and are removed by ``sweep``. Thread- and process-safe: every name is unique.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

TMP_DIR = ".tmp"
STALE_AFTER = 3600.0  # seconds


def temp_path(root: Path, name: str) -> Path:
    """A fresh temporary path under ``root`` for an object that will be called ``name``
    (its directory is made by the writer, inside its own error handling)."""
    return root / TMP_DIR / f"{secrets.token_hex(8)}-{name}"


def sweep(root: Path, older_than: float = STALE_AFTER, now: float | None = None) -> int:
    """Remove temporaries under ``root`` older than ``older_than`` seconds; how many."""
    cutoff = (time.time() if now is None else now) - older_than
    removed = 0
    try:
        entries = list(os.scandir(root / TMP_DIR))
    except FileNotFoundError:
        return 0
    for e in entries:
        try:
            if e.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(e.path)
                removed += 1
        except FileNotFoundError:
            continue  # renamed into place or swept by another process meanwhile
    return removed
