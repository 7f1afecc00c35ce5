"""``thaw check``: the whole store, or the images named, is whole.

Every manifest named by a tag or an unexpired lease (or by the arguments) must decode, and
every chunk it names must be in one listing of the store's blobs; with a subset, that share
of the distinct chunks (at random, or the ``n/N`` slice by id, so N runs cover everything
once) is downloaded and re-hashed, as restic's ``check --read-data-subset`` does. A tag
that holds no manifest id, or a lease that does not parse, is reported, never skipped.
Synchronous; downloads in a pool of ``jobs`` threads.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..errors import BlobCorrupt, BlobNotFound, ThawError, UsageError
from ..image.images import load_manifest
from ..image.refs import Refs
from ..lifecycle.leases import scan_leases
from ..store.base import ObjectStore
from ..store.blobs import BlobStore


@dataclass
class ImageCheck:
    name: str  # the tag, lease or id it was named by
    manifest: str | None
    chunks: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    read: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.missing and not self.corrupt

    def as_json(self) -> dict:
        return {"name": self.name, "manifest": self.manifest, "chunks": self.chunks,
                "missing": self.missing, "corrupt": self.corrupt, "read": self.read,
                "error": self.error, "ok": self.ok}


def parse_subset(text: str | None) -> Callable[[str], bool]:
    """``10%`` (at random) or ``n/N`` (the n-th of N slices, by id) as a chooser."""
    if text is None:
        return lambda id: False
    m = re.fullmatch(r"(\d+(?:\.\d+)?)%", text.strip())
    if m and 0 <= float(m.group(1)) <= 100:
        share = float(m.group(1)) / 100
        rng = random.Random(time.time_ns())
        return lambda id: rng.random() < share
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if m and 1 <= int(m.group(1)) <= int(m.group(2)):
        n, total = int(m.group(1)), int(m.group(2))
        return lambda id: int(id[:12], 16) % total == n - 1
    raise UsageError(f"--read-data-subset {text!r}: use a share such as 10% or a slice n/N")


def _named(objects: ObjectStore, refs: list[str]) -> list[tuple[str, str | None, str | None]]:
    """(name, manifest id or None, error) of every image to check."""
    if refs:
        out = []
        for text in refs:
            try:
                out.append((text, Refs(objects).resolve(text), None))
            except ThawError as exc:
                out.append((text, None, str(exc)))
        return out
    out = list(Refs(objects).scan_keys())
    for key, lease, error in scan_leases(objects):
        out.extend([(key, None, error)] if error else
                   ((key, mid, None) for mid in lease["manifests"]))
    return out


def check(objects: ObjectStore, refs: list[str], subset: Callable[[str], bool],
          jobs: int = 8) -> list[ImageCheck]:
    blobs = BlobStore(objects)
    present = dict(blobs.iter_stored_sizes())
    results, to_read = [], {}
    for name, mid, error in _named(objects, refs):
        result = ImageCheck(name, mid, error=error)
        results.append(result)
        if mid is None:
            continue
        try:
            manifest = load_manifest(blobs, mid)
        except ThawError as exc:
            result.error = str(exc)
            continue
        unique = {c.id: c.size for c in manifest.chunks}
        result.chunks = len(unique)
        result.missing = sorted(i for i in unique if i not in present)
        for id, size in unique.items():
            if id in present and subset(id):
                to_read.setdefault(id, (size, []))[1].append(result)
    def read(id: str) -> tuple[str, str]:
        try:
            blobs.get(id, max_size=to_read[id][0])
            return id, "ok"
        except BlobNotFound:
            return id, "missing"
        except BlobCorrupt:
            return id, "corrupt"
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for id, outcome in pool.map(read, sorted(to_read)):
            for result in to_read[id][1]:
                result.read += 1
                if outcome == "corrupt":
                    result.corrupt.append(id)
                elif outcome == "missing":
                    result.missing.append(id)
    return results
