#!/usr/bin/env python3
"""Run one fuzz target under atheris (coverage-guided), on its seed corpus.

Usage: python fuzz/run.py TARGET [libFuzzer options, e.g. -max_total_time=60]
Targets: see fuzz/targets.py. New inputs that find new coverage go to a scratch corpus
directory, not into the repository's seeds; a crash is written as crash-* in the current
directory and reported with its traceback.
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import atheris  # noqa: E402

with atheris.instrument_imports():
    from fuzz import targets  # noqa: E402


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in targets.TARGETS:
        sys.exit(f"usage: {sys.argv[0]} TARGET [options]; targets: {', '.join(targets.TARGETS)}")
    name = sys.argv[1]
    scratch = tempfile.mkdtemp(prefix=f"thaw-fuzz-{name}-")
    for i, seed in enumerate(targets.seeds(name)):
        with open(os.path.join(scratch, f"seed-{i}"), "wb") as f:
            f.write(seed)
    atheris.Setup([sys.argv[0], scratch, *sys.argv[2:]], targets.TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
