"""Where each tensor's bytes are in an image, as one table for snapshots and safetensors.

A ``Layout`` lists storages (runs of bytes in one file of the image) and tensors (a dtype,
shape, stride and element offset into a storage). Tensors that shared a storage when the
snapshot was taken share it again on restore, so tied weights stay tied. Built from a
snapshot's ``snapshot.json`` or from a safetensors header, and validated before anything is
allocated: a malicious table must not make the restorer read past a storage or allocate
absurd memory. Pure (no torch); thread-safe.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass

from blobstore.errors import ThawError

FORMAT_VERSION = 1
SNAPSHOT_TABLE = "snapshot.json"
# Byte sizes of the dtypes a table may name (torch's names; safetensors' mapped below).
DTYPE_SIZES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8,
               "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1,
               "float8_e4m3fn": 1, "float8_e5m2": 1}
SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                      "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
                      "U8": "uint8", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn",
                      "F8_E5M2": "float8_e5m2"}
MAX_HEADER = 100 << 20
_SHARD = re.compile(r"(.*)-(\d+)-of-(\d+)\.safetensors")


class LayoutError(ThawError):
    """The tensor table is malformed or does not match the image."""


@dataclass(frozen=True)
class Storage:
    path: str  # file in the image
    offset: int  # first byte in that file
    nbytes: int


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int  # in elements, into its storage
    storage: int


@dataclass(frozen=True)
class Layout:
    storages: tuple[Storage, ...]
    tensors: tuple[TensorSpec, ...]
    env: dict

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.storages)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise LayoutError(f"invalid tensor table: {msg}")


def validate(layout: Layout, file_sizes: dict[str, int]) -> Layout:
    """Every storage inside its file, every tensor inside its storage."""
    for k, s in enumerate(layout.storages):
        size = file_sizes.get(s.path)
        _check(size is not None, f"storage {k} is in {s.path!r}, which the image lacks")
        _check(0 <= s.offset and 0 <= s.nbytes and s.offset + s.nbytes <= size,
               f"storage {k} runs past the end of {s.path!r}")
    for t in layout.tensors:
        where = f"tensor {t.name!r}"
        _check(t.dtype in DTYPE_SIZES, f"{where} has unknown dtype {t.dtype!r}")
        _check(0 <= t.storage < len(layout.storages), f"{where} names a missing storage")
        _check(len(t.shape) == len(t.stride) and all(d >= 0 for d in t.shape)
               and all(s >= 0 for s in t.stride) and t.offset >= 0, f"{where}: bad geometry")
        if math.prod(t.shape) == 0:
            continue
        last = t.offset + sum((d - 1) * s for d, s in zip(t.shape, t.stride, strict=True))
        item = DTYPE_SIZES[t.dtype]
        _check((last + 1) * item <= layout.storages[t.storage].nbytes,
               f"{where} reaches past its storage")
    return layout


def from_table(raw: bytes) -> Layout:
    """A snapshot's ``snapshot.json``."""
    try:
        doc = json.loads(raw)
        _check(doc.get("version") == FORMAT_VERSION, f"version {doc.get('version')!r}")
        storages = tuple(Storage(str(s["path"]), int(s.get("offset", 0)), int(s["nbytes"]))
                         for s in doc["storages"])
        tensors = tuple(TensorSpec(str(t["name"]), str(t["dtype"]), tuple(map(int, t["shape"])),
                                   tuple(map(int, t["stride"])), int(t["offset"]),
                                   int(t["storage"])) for t in doc["tensors"])
        return Layout(storages, tensors, dict(doc.get("env") or {}))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LayoutError(f"invalid tensor table: {exc!r}") from None


def to_table(layout: Layout) -> bytes:
    return json.dumps({
        "version": FORMAT_VERSION, "env": layout.env,
        "storages": [s.__dict__ for s in layout.storages],
        "tensors": [{**t.__dict__, "shape": list(t.shape), "stride": list(t.stride)}
                    for t in layout.tensors]}, sort_keys=True).encode()


def contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, acc = [], 1
    for d in reversed(shape):
        stride.append(acc)
        acc *= max(d, 1)
    return tuple(reversed(stride))


def header_size(first8: bytes) -> int:
    _check(len(first8) == 8, "safetensors file shorter than its header length")
    (n,) = struct.unpack("<Q", first8)
    _check(0 < n <= MAX_HEADER, f"safetensors header of {n} bytes")
    return n


def from_safetensors(path: str, header: bytes) -> Layout:
    """The tensors of a safetensors file, each its own storage, read in place."""
    try:
        doc = json.loads(header)
    except ValueError as exc:
        raise LayoutError(f"{path}: safetensors header is not JSON ({exc})") from None
    _check(isinstance(doc, dict), f"{path}: safetensors header is not an object")
    base = 8 + len(header)
    storages, tensors = [], []
    for name, info in sorted(doc.items()):
        if name == "__metadata__":
            continue
        try:
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise LayoutError(f"{path}: tensor {name!r} has a malformed or unknown dtype, "
                              "shape or offsets") from None
        _check(end - begin == math.prod(shape) * DTYPE_SIZES[dtype],
               f"{path}: tensor {name!r} size does not match its shape")
        tensors.append(TensorSpec(name, dtype, shape, contiguous_stride(shape), 0,
                                  len(storages)))
        storages.append(Storage(path, base + begin, end - begin))
    return Layout(tuple(storages), tuple(tensors), {"source": "safetensors"})


def safetensors_files(paths) -> list[str]:
    """The checkpoint among an image's files: its one ``.safetensors`` file, or every shard
    of one sharded checkpoint (``NAME-00001-of-00004.safetensors``...)."""
    found = sorted(p for p in paths if p.endswith(".safetensors"))
    if len(found) == 1:
        return found
    shards = [_SHARD.fullmatch(p) for p in found]
    groups = {(m.group(1), int(m.group(3))) for m in shards if m}
    if found and all(shards) and len(groups) == 1:
        (_, total), = groups
        numbers = sorted(int(m.group(2)) for m in shards)
        if numbers == list(range(1, total + 1)):
            return found
        missing = sorted(set(range(1, total + 1)) - set(numbers))
        raise LayoutError(f"the sharded checkpoint lacks shards {missing[:5]} of {total}")
    raise LayoutError("the image is neither a snapshot nor holds one checkpoint in "
                      f".safetensors files (it holds {len(found)}: {', '.join(found[:4])}"
                      f"{' ...' if len(found) > 4 else ''})")


def merge(layouts: list[Layout]) -> Layout:
    """One layout for the shards of a checkpoint; a tensor named twice is an error."""
    storages: list[Storage] = []
    tensors: list[TensorSpec] = []
    names: set[str] = set()
    for layout in layouts:
        base = len(storages)
        storages += layout.storages
        for t in layout.tensors:
            _check(t.name not in names, f"tensor {t.name!r} is in two shards")
            names.add(t.name)
            tensors.append(TensorSpec(t.name, t.dtype, t.shape, t.stride, t.offset,
                                      base + t.storage))
    return Layout(tuple(storages), tuple(tensors), {"source": "safetensors"})
