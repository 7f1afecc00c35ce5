#!/usr/bin/env python3
"""Which chunker and average size: dedup across versions and bytes touched at start-up.

Inputs, all real: a Debian 12 root file system (python3 + numpy) and the same with one more
package installed; all-MiniLM-L6-v2's safetensors and a fine-tuned variant (the last layer
and the pooler changed, the header grown by metadata, which shifts every byte after it).
Start-up sets are the files ``python3 -c 'import json'`` and ``'import numpy'`` open in a
chroot of the tree (strace). For each chunker it prints:

- update: bytes of the new version that are in chunks the old one lacks (what a push of
  the new version uploads, before compression);
- start-up: bytes of the distinct chunks holding the files a start opens (what a lazy
  mount fetches), with the requests that takes, against the files' own size.

The default is the chunker with the least update + start-up bytes over all inputs.
Usage: python bench/chunking.py
"""

from __future__ import annotations

import bisect
import json
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from common import add_package, debian_tar, extract, human, model_file, table

from blobstore.store.digest import blob_id
from indexer.chunker import ChunkerParams, cut
from indexer.sources import open_source
from indexer.stream import DataStream

CONFIGS = [ChunkerParams(a, s << 10) for a in ("fastcdc", "fixed") for s in (256, 512, 1024,
                                                                              2048)]
WORKLOADS = {"import json": "import json", "import numpy": "import numpy"}


def chunk_tree(path: Path, params: ChunkerParams):
    """(chunk ids and sizes in stream order, {path: (stream offset, size)})."""
    with open_source(str(path)) as tree:
        files = list(tree.data_nodes())
        where, pos = {}, 0
        for _, node in files:
            where[id(node)] = (pos, node.size)
            pos += node.size
        offsets = {p: where[id(n)] for p, n in tree.nodes.items() if id(n) in where}
        chunks = [(blob_id(v), len(v)) for v in cut(DataStream(files), params)]
    return chunks, offsets


def update_bytes(old, new) -> int:
    have = {c for c, _ in old}
    return sum(size for c, size in {c: s for c, s in new}.items() if c not in have)


def startup(chunks, offsets, paths: set[str]) -> tuple[int, int, int]:
    """(bytes of touched chunks, number of them, bytes of the files themselves)."""
    starts, pos = [], 0
    for _, size in chunks:
        starts.append(pos)
        pos += size
    touched, own = set(), 0
    for p in paths:
        if p not in offsets:
            continue
        off, size = offsets[p]
        own += size
        i = bisect.bisect_right(starts, off) - 1
        while i < len(chunks) and starts[i] < off + size:
            touched.add(i)
            i += 1
    return sum(chunks[i][1] for i in touched), len(touched), own


def resolve_in(root: Path, path: str) -> str | None:
    """``path`` resolved inside ``root`` as a chroot would (symlinks stay inside)."""
    parts, done, hops = [p for p in path.split("/") if p], [], 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            done = done[:-1]
            continue
        full = root.joinpath(*done, part)
        if full.is_symlink():
            hops += 1
            if hops > 40:
                return None
            target = str(full.readlink())
            parts = [p for p in target.split("/") if p] + parts
            if target.startswith("/"):
                done = []
            continue
        done.append(part)
    return "/".join(done) if root.joinpath(*done).is_file() else None


def opened_files(root: Path, code: str) -> set[str]:
    with tempfile.NamedTemporaryFile(mode="r", suffix=".strace") as log:
        subprocess.run(["strace", "-f", "-qq", "-e", "trace=open,openat,execve", "-o", log.name,
                        "chroot", str(root), "/usr/bin/python3", "-c", code], check=True,
                       capture_output=True)
        text = log.read()
    paths = set()
    for m in re.finditer(r'(?:openat\([^,]+, |open\(|execve\()"([^"]+)".*= (\d+)', text):
        resolved = resolve_in(root, m.group(1))
        if resolved:
            paths.add(resolved)
    return paths


def fine_tuned(src: Path, dest: Path) -> Path:
    """The model with its last layer and pooler changed and a grown header."""
    raw = src.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data = bytearray(raw[8 + n:])
    for name, info in header.items():
        if name != "__metadata__" and (".5." in name or "pooler" in name):
            b, e = info["data_offsets"]
            data[b:e] = bytes((x + 1) & 0xFF for x in data[b:e])
    header["__metadata__"] = {**header.get("__metadata__", {}),
                              "fine_tuned_on": "thaw-bench " * 40}
    new_header = json.dumps(header).encode()
    new_header += b" " * (-len(new_header) % 8)
    dest.write_bytes(struct.pack("<Q", len(new_header)) + new_header + data)
    return dest


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="thaw-bench-chunking-"))
    print("preparing inputs in", work, file=sys.stderr)
    v1 = extract(debian_tar(), work / "debian-v1")
    v2 = extract(debian_tar(), work / "debian-v2")
    add_package(v2, "less", work / "debs")
    starts = {name: opened_files(v1, code) for name, code in WORKLOADS.items()}
    model = model_file()
    tuned = fine_tuned(model, work / "model-tuned.safetensors")
    rows, costs = [], {}
    for params in CONFIGS:
        print("chunking with", params, file=sys.stderr)
        c1, off1 = chunk_tree(v1, params)
        c2, _ = chunk_tree(v2, params)
        m1, _ = chunk_tree(model, params)
        m2, _ = chunk_tree(tuned, params)
        up_rootfs, up_model = update_bytes(c1, c2), update_bytes(m1, m2)
        row = [str(params), human(up_rootfs), human(up_model)]
        total = up_rootfs + up_model
        for name in WORKLOADS:
            touched, requests, own = startup(c1, off1, starts[name])
            row += [f"{human(touched)} / {requests}", f"{touched / own:.2f}x"]
            total += touched
        costs[str(params)] = total
        rows.append(row + [human(total)])
    headers = ["chunker", "update rootfs (+less)", "update model (tuned)"]
    for name in WORKLOADS:
        headers += [f"start `{name}` bytes / requests", "vs files"]
    print(table(headers + ["update + start-up"], rows))
    model_size = model.stat().st_size
    best = min(costs, key=costs.get)
    fixed_same = best.replace("fastcdc", "fixed")
    print(f"\nmodel: {human(model_size)}; rootfs v1: {human(sum(s for _, s in c1))}")
    print(f"winner: {best} ({human(costs[best])} moved); ratio against fixed-size chunks of the "
          f"same size: {costs[best] / costs[fixed_same]:.2f}")
    print("subprocess strace start-up files:", {k: len(v) for k, v in starts.items()})
    subprocess.run(["rm", "-rf", str(work)], check=True)


if __name__ == "__main__":
    main()
