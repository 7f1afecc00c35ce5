"""What commands show people: JSON, tables, progress bars and one-line errors.

A ``Console`` is handed to every subcommand, so package ``cli.py`` modules never import
``thaw``. Progress bars go to stderr, only when stdout is a terminal (piped output and
``--json`` stay clean).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager


class Console:
    def __init__(self, *, json_output: bool = False, quiet: bool = False) -> None:
        self.json_output = json_output
        self.quiet = quiet

    @property
    def interactive(self) -> bool:
        return sys.stdout.isatty() and not self.json_output and not self.quiet

    def json(self, doc: object) -> None:
        print(json.dumps(doc, indent=2, sort_keys=True))

    def line(self, text: str = "") -> None:
        print(text)

    def note(self, text: str) -> None:
        """A remark for the person, on stderr."""
        if not self.quiet:
            print(text, file=sys.stderr)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        cells = [[str(c) for c in r] for r in rows]
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
        for r in [list(headers), *cells]:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())

    @contextmanager
    def progress(self, total: int | None, desc: str) -> Iterator[Callable[[int], None]]:
        """A callable that advances a byte-count bar (of unknown length when ``total`` is
        None); a no-op when not interactive."""
        if not self.interactive:
            yield lambda n: None
            return
        from tqdm import tqdm

        with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                  file=sys.stderr, leave=False, dynamic_ncols=True) as bar:
            yield bar.update

