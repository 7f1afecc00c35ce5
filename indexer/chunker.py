"""Cutting the data stream into chunks: content-defined (FastCDC) or fixed-size.

``bench/chunking.py`` chose the default (see its table in the README): FastCDC keeps chunks
identical across versions when bytes are inserted or removed, where fixed-size cuts shift.
Pure and single-threaded; the chunk views are only valid until the next one is produced.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from blobstore.errors import UsageError
from blobstore.store.codec import read_full
from blobstore.units import parse_size

ALGORITHMS = ("fastcdc", "fixed")


@dataclass(frozen=True, slots=True)
class ChunkerParams:
    algorithm: str = "fastcdc"
    avg_size: int = 256 << 10  # bench/chunking.py: least bytes moved (README)

    @property
    def min_size(self) -> int:
        return self.avg_size // 4 if self.algorithm == "fastcdc" else self.avg_size

    @property
    def max_size(self) -> int:
        return self.avg_size * 4 if self.algorithm == "fastcdc" else self.avg_size

    def header(self) -> dict:
        return {"algorithm": self.algorithm, "avg": self.avg_size, "min": self.min_size,
                "max": self.max_size}

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.avg_size >> 10}K"


DEFAULT = ChunkerParams()


def parse_chunker(spec: str) -> ChunkerParams:
    """``fastcdc``, ``fastcdc:512K``, ``fixed:1M``."""
    algorithm, _, size = spec.partition(":")
    if algorithm not in ALGORITHMS:
        raise UsageError(f"unknown chunker {algorithm!r}; use fastcdc[:SIZE] or fixed[:SIZE]")
    avg = parse_size(size) if size else DEFAULT.avg_size
    if not (64 << 10) <= avg <= (4 << 20):
        raise UsageError(f"chunk size {size} out of range: 64K to 4M")
    return ChunkerParams(algorithm, avg)


def cut(stream, params: ChunkerParams) -> Iterator[memoryview]:
    """Chunks of ``stream`` (an object with ``readinto``), in order."""
    if params.algorithm == "fastcdc":
        import pyfastcdc  # here: every `thaw` command imports this module to parse options

        cdc = pyfastcdc.FastCDC(avg_size=params.avg_size, min_size=params.min_size,
                                max_size=params.max_size)
        for chunk in cdc.cut_stream(stream):
            yield chunk.data
        return
    buf = bytearray(params.avg_size)
    view = memoryview(buf)
    while True:
        n = read_full(stream, view)
        if n == 0:
            return
        yield view[:n]
        if n < len(view):
            return

