#!/usr/bin/env python3
"""The collector on a store of many images with shared layers, on the file store and on
SeaweedFS, in one run.

Generated images: ``--blobs`` chunks of 512 random bytes in layers of 100; each image is one
file over 5 random layers, so images share most of their chunks, as container images do.
Everything is tagged; then half of the tags are removed and ``thaw gc`` runs twice (mark,
then sweep; grace 0 on a clock moved past it). Per run: time, store requests by kind, what
was condemned or deleted and the bytes freed, and the time and requests extrapolated to a
store of a million blobs (the collector lists and reads every manifest once, so it grows
with the blobs and the images). Usage: python bench/gc.py [--blobs 20000] [--s3-blobs 5000]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import human, table

from blobstore.image.manifest import FILE, ChunkRef, Entry, Header, Manifest, Span, encode
from blobstore.image.refs import Refs, parse_ref
from blobstore.ops.gc import collect
from blobstore.store.base import ObjectStore
from blobstore.store.blobs import BlobStore
from blobstore.store.local import LocalStore
from tests.seaweed import SeaweedServer

LAYER, PER_IMAGE = 100, 5


class Counted(ObjectStore):
    """Counts the calls that reach a store."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner, self.calls = inner, Counter()

    def __getattribute__(self, name):
        if name in ("get", "put", "create", "size", "delete", "list_info"):
            object.__getattribute__(self, "calls")[name] += 1
        return object.__getattribute__(self, name)

    def get(self, key): return self.inner.get(key)  # noqa: E704
    def put(self, key, data): return self.inner.put(key, data)  # noqa: E704
    def create(self, key, data): return self.inner.create(key, data)  # noqa: E704
    def size(self, key): return self.inner.size(key)  # noqa: E704
    def delete(self, key): return self.inner.delete(key)  # noqa: E704
    def list_info(self, prefix=""): return self.inner.list_info(prefix)  # noqa: E704

    def delete_many(self, keys):
        if type(self.inner).delete_many is ObjectStore.delete_many:
            self.calls["delete"] += len(keys)  # no batch call: one request a key
        elif keys:
            self.calls["delete_many"] += -(-len(keys) // 1000)  # S3's DeleteObjects
        return self.inner.delete_many(keys)
    def __str__(self): return str(self.inner)  # noqa: E704


def generate(objects: ObjectStore, nblobs: int, rng: random.Random) -> list[str]:
    blobs = BlobStore(objects)
    chunks = []
    for _ in range(nblobs):
        data = rng.randbytes(512)
        id, stored = blobs.put(data)
        chunks.append(ChunkRef(id, len(data), stored))
    layers = [chunks[i:i + LAYER] for i in range(0, len(chunks), LAYER)]
    refs = []
    for n in range(max(2, len(layers) // 2)):
        table_ = [c for layer in rng.sample(layers, min(PER_IMAGE, len(layers))) for c in layer]
        spans = tuple(Span(i, 0, c.size) for i, c in enumerate(table_))
        size = sum(c.size for c in table_)
        entries = (Entry("", "d", 0o755, 0, 0, 0), Entry("data", FILE, 0o644, 0, 0, 0, size,
                                                         spans=spans))
        raw = encode(Manifest(Header("image", "bench", {}, n), tuple(table_), entries))
        mid, _ = blobs.put(raw)
        ref = parse_ref(f"gen/img{n}:1")
        Refs(objects).set(ref, mid)
        refs.append(ref)
    return refs


def bench(name: str, objects: ObjectStore, nblobs: int) -> list[list[str]]:
    rng = random.Random(7)
    refs = generate(objects, nblobs, rng)
    for ref in refs[::2]:
        Refs(objects).delete(ref)
    counted = Counted(objects)
    now = [time.time() + 60]
    rows = []
    for phase in ("mark", "sweep"):
        counted.calls.clear()
        t0 = time.perf_counter()
        result = collect(counted, grace=0, clock=lambda: now[0])
        seconds = time.perf_counter() - t0
        now[0] += 60
        requests = sum(counted.calls.values())
        listed = nblobs + len(refs)
        rows.append([name, phase, f"{nblobs:,}", f"{seconds:.2f} s",
                     ", ".join(f"{k} {v}" for k, v in sorted(counted.calls.items())),
                     len(result.marked) if phase == "mark" else len(result.deleted),
                     human(result.marked_bytes if phase == "mark" else result.freed_bytes),
                     f"{seconds * 1e6 / listed / 60:.1f} min", f"{requests * 1e6 / listed:,.0f}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blobs", type=int, default=20000)
    ap.add_argument("--s3-blobs", type=int, default=5000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="thaw-bench-gc-"))
    rows = bench("file store", LocalStore(work / "store"), args.blobs)
    with SeaweedServer(work / "seaweed") as s3:
        os.environ.update(s3.env())
        from blobstore.store.s3 import S3Store

        rows += bench("SeaweedFS", S3Store("thaw", "gc"), args.s3_blobs)
    print("\nhalf of the images untagged, then two runs of `thaw gc` (grace passed)\n")
    print(table(["store", "run", "blobs", "time", "requests", "condemned / deleted",
                 "bytes", "time per 1M blobs", "requests per 1M blobs"], rows))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
