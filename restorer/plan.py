"""The restore plan: which pieces of which chunks fill which bytes of which storage.

Pure (no torch, no I/O): from a manifest and a validated ``Layout`` to, per chunk, the
pieces it contributes, and the order to fetch chunks in: the hinted order of the last
restore first, then the rest in stream order. Thread-safe.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from blobstore.errors import EntryNotFound
from blobstore.image.manifest import FILE, FileSpans, Manifest

from .layout import Layout, LayoutError


@dataclass(frozen=True, slots=True)
class Piece:
    chunk_offset: int
    length: int
    storage: int
    storage_offset: int


def file_sizes(manifest: Manifest) -> dict[str, int]:
    return {e.path: e.size for e in manifest.entries if e.type == FILE}


def pieces(manifest: Manifest, layout: Layout) -> dict[int, list[Piece]]:
    """Chunk index -> the pieces it holds, for every storage of ``layout``."""
    out: dict[int, list[Piece]] = defaultdict(list)
    for k, s in enumerate(layout.storages):
        try:
            entry = manifest.entry(s.path)
        except EntryNotFound:
            raise LayoutError(f"the image has no {s.path!r}") from None
        pos = 0
        for span in FileSpans(entry.spans).lookup(s.offset, s.nbytes):
            out[span.chunk].append(Piece(span.offset, span.length, k, pos))
            pos += span.length
        if pos != s.nbytes:
            raise LayoutError(f"storage {k} ({s.path!r}) is not covered by its chunks")
    return dict(out)


def fetch_order(plan: dict[int, list[Piece]], hints: list[int]) -> list[int]:
    """Chunks in the order the last restore first read them, then the rest in order."""
    hinted = [i for i in dict.fromkeys(hints) if i in plan]
    seen = set(hinted)
    return hinted + [i for i in sorted(plan) if i not in seen]
