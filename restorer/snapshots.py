"""Snapshot tensors into the store, and restore them into memory, pipelined.

Restore: the tensor table is read and validated, every storage is allocated up front on the
target device, then chunks are fetched by ``jobs`` threads through the tiers (disk cache,
store), decompressed and verified there, at most ``window`` ahead, in the order the last
restore read them (hints). On CPU each fetching thread copies its chunk's pieces straight
into the storages (disjoint regions; numpy releases the GIL), so copies and the first-touch
page faults of fresh memory spread over the cores. On CUDA the calling thread moves each
chunk through a ring of pinned staging buffers to the device on a side stream. Fetching,
verifying and copying overlap, and host memory stays bounded. Nothing is returned until
every byte has arrived and verified: an error leaves no half-loaded tensors behind. The
order chunks were first read in is saved as hints for the next restore. Compiled kernels
a snapshot carries (``compilecache``) go back into torch's caches after the tensors.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from blobstore.base import ObjectStore
from blobstore.blobs import BlobStore
from blobstore.diskcache import DiskCache
from blobstore.errors import ThawError
from blobstore.hints import HintRecorder, load_hints, save_hints
from blobstore.images import fetch_chunk, open_image
from blobstore.manifest import FileSpans, Manifest
from blobstore.refs import parse_ref
from blobstore.tiers import node_tiers
from blobstore.url import open_store

from . import compilecache
from .device import RestoreError, environment, pick_device
from .layout import (
    SNAPSHOT_TABLE,
    Layout,
    LayoutError,
    Storage,
    TensorSpec,
    from_safetensors,
    from_table,
    header_size,
    merge,
    safetensors_files,
    to_table,
    validate,
)
from .plan import fetch_order, file_sizes, pieces
from .writer import SnapshotWriter

log = logging.getLogger(__name__)
HINTS_WORKLOAD = "restore"


def _objects(store: str | ObjectStore | None) -> ObjectStore:
    return store if isinstance(store, ObjectStore) else open_store(store)


# -- snapshot ------------------------------------------------------------------------------


def _state(obj) -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise RestoreError("snapshot takes a torch.nn.Module or a dict of tensors")


def _storage_bytes(t: torch.Tensor) -> memoryview:
    whole = torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage())
    return memoryview(whole.cpu().numpy()).cast("B")


def snapshot(module_or_state_dict, ref: str, *, store: str | ObjectStore | None = None,
             jobs: int = 8, compile_cache: bool = False) -> str:
    """Store the tensors (tied ones stay tied) as an image of kind ``snapshot``; returns
    its manifest id and points ``ref`` at it. ``compile_cache``: also store the kernels
    ``torch.compile`` built in this process, which a restore puts back in place."""
    state = _state(module_or_state_dict)
    target = parse_ref(ref)
    writer = SnapshotWriter(_objects(store), jobs=jobs)
    storage_of: dict[tuple, int] = {}
    storages, tensors = [], []
    for name, t in state.items():
        key = (t.device.type, t.device.index, t.untyped_storage().data_ptr())
        if key not in storage_of:
            storage_of[key] = len(storages)
            path = f"storages/{len(storages):05d}"
            view = _storage_bytes(t)
            writer.add_file(path, view)
            storages.append(Storage(path, 0, len(view)))
        tensors.append(TensorSpec(name, str(t.dtype).removeprefix("torch."), tuple(t.shape),
                                  tuple(t.stride()), t.storage_offset(), storage_of[key]))
    layout = Layout(tuple(storages), tuple(tensors), environment())
    writer.add_file(SNAPSHOT_TABLE, to_table(layout))
    kernels = compilecache.capture() if compile_cache else None
    if kernels:
        writer.add_file(compilecache.ARTIFACTS, kernels)
    return writer.finish(target, source="torch")


# -- restore -------------------------------------------------------------------------------


def _file_bytes(blobs: BlobStore, manifest: Manifest, path: str, offset: int,
                size: int) -> bytes:
    out = bytearray()
    for s in FileSpans(manifest.entry(path).spans).lookup(offset, size):
        out += fetch_chunk(blobs, manifest, s.chunk)[s.offset:s.offset + s.length]
    return bytes(out)


def read_layout(blobs: BlobStore, manifest: Manifest) -> Layout:
    """The snapshot's table, or the layout of the image's safetensors checkpoint (one
    file, or the shards of one)."""
    sizes = file_sizes(manifest)
    if SNAPSHOT_TABLE in sizes:
        layout = from_table(_file_bytes(blobs, manifest, SNAPSHOT_TABLE, 0,
                                        sizes[SNAPSHOT_TABLE]))
    else:
        layouts = []
        for path in safetensors_files(sizes):
            n = header_size(_file_bytes(blobs, manifest, path, 0, 8))
            if 8 + n > sizes[path]:
                raise LayoutError(f"{path}: header runs past the end of the file")
            layouts.append(from_safetensors(path, _file_bytes(blobs, manifest, path, 8, n)))
        layout = merge(layouts)
    return validate(layout, sizes)


def _check_env(layout: Layout) -> None:
    here, there = environment(), layout.env
    for key in ("torch", "cuda", "gpu"):
        if there.get(key) and here.get(key) != there.get(key):
            log.warning("snapshot taken with %s %s, restoring with %s: the layout is the "
                        "same, restoring anyway", key, there.get(key), here.get(key))
    for t in layout.tensors:
        if not hasattr(torch, t.dtype):
            raise RestoreError(f"tensor {t.name!r} has dtype {t.dtype}, which this torch "
                               f"({torch.__version__}) lacks; restore with a newer torch")


class _Copier:
    """Copies chunk pieces into the storages: directly on CPU, through pinned staging
    buffers and a side stream on CUDA."""

    def __init__(self, storages: list[torch.Tensor], device: torch.device, depth: int,
                 chunk_bytes: int) -> None:
        self.storages, self.cuda = storages, device.type == "cuda"
        if self.cuda:
            self.stream = torch.cuda.Stream(device)
            self.ring = deque((torch.empty(chunk_bytes, dtype=torch.uint8, pin_memory=True),
                               torch.cuda.Event()) for _ in range(depth))
        else:
            self.views = [s.numpy() for s in storages]

    def region(self, p) -> memoryview:
        """The bytes of a storage that piece ``p`` fills (CPU)."""
        return memoryview(self.views[p.storage][p.storage_offset:p.storage_offset + p.length])

    def copy(self, data: bytes, plan) -> None:
        src = np.frombuffer(data, dtype=np.uint8)
        if not self.cuda:
            for p in plan:
                self.views[p.storage][p.storage_offset:p.storage_offset + p.length] = \
                    src[p.chunk_offset:p.chunk_offset + p.length]
            return
        buf, done = self.ring.popleft()
        done.synchronize()  # the copy that last used this buffer has finished
        buf[:len(src)].numpy()[:] = src
        with torch.cuda.stream(self.stream):
            for p in plan:
                self.storages[p.storage][p.storage_offset:p.storage_offset + p.length].copy_(
                    buf[p.chunk_offset:p.chunk_offset + p.length], non_blocking=True)
            done.record(self.stream)
        self.ring.append((buf, done))

    def finish(self) -> None:
        if self.cuda:
            self.stream.synchronize()


def _tensors(layout: Layout, storages: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for t in layout.tensors:
        dtype = getattr(torch, t.dtype)
        flat = storages[t.storage]
        usable = flat.numel() - flat.numel() % dtype.itemsize
        typed = flat[:usable].view(dtype)
        out[t.name] = typed.as_strided(t.shape, t.stride, t.offset)
    return out


def restore(ref: str, device: str | None = None, *, store: str | ObjectStore | None = None,
            cache_dir: str | None = None, cache_bytes: int = 50 << 30, jobs: int = 8,
            window: int = 16, record_hints: bool = True, compile_cache: bool = True,
            on_bytes: Callable[[int], None] = lambda n: None) -> dict[str, torch.Tensor]:
    """The tensors of ``ref`` (a snapshot, or an image of a safetensors checkpoint) on
    ``device`` ("cuda:0", "cpu"; None picks a GPU with room, else the CPU). With
    ``compile_cache``, compiled kernels the snapshot carries go into torch's caches.
    ``on_bytes`` is told, in the calling thread, the bytes of each chunk restored."""
    objects = _objects(store)
    mid, manifest = open_image(objects, ref)
    blobs = BlobStore(objects)
    layout = read_layout(blobs, manifest)
    _check_env(layout)
    plan = pieces(manifest, layout)
    order = fetch_order(plan, load_hints(objects, mid, HINTS_WORKLOAD, len(manifest.chunks)))
    dev = pick_device(device, layout.nbytes)
    storages = [torch.empty(s.nbytes, dtype=torch.uint8, device=dev) for s in layout.storages]
    tiers = node_tiers(blobs, DiskCache(cache_dir, cache_bytes) if cache_dir else None).stack
    recorder = HintRecorder()
    biggest = max((manifest.chunks[i].size for i in plan), default=1)
    copier = _Copier(storages, dev, window + 2, biggest)

    def fetch(i: int) -> bytes | None:
        chunk = manifest.chunks[i]
        whole = plan[i][0] if len(plan[i]) == 1 else None
        if not copier.cuda and whole is not None and whole.length == chunk.size:
            # the chunk fills one region of one storage: decode and verify it in place
            tiers.read_into(chunk.id, copier.region(whole))
            recorder.read(i)
            return None
        data = tiers.get(chunk.id, max_size=chunk.size)
        recorder.read(i)
        if copier.cuda:
            return data  # the staging ring belongs to the calling thread
        copier.copy(data, plan[i])
        return None

    pending: deque[tuple[int, Future]] = deque()
    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="thaw-restore") as pool:
        try:
            for i in order:
                pending.append((i, pool.submit(fetch, i)))
                if len(pending) >= window:
                    on_bytes(_drain_one(pending, copier, plan, manifest))
            while pending:
                on_bytes(_drain_one(pending, copier, plan, manifest))
        finally:
            for _, fut in pending:
                fut.cancel()
    copier.finish()
    sizes = file_sizes(manifest)
    if compile_cache and compilecache.ARTIFACTS in sizes:
        compilecache.install(_file_bytes(blobs, manifest, compilecache.ARTIFACTS, 0,
                                         sizes[compilecache.ARTIFACTS]),
                             layout.env.get("torch"))
    if record_hints:
        try:
            save_hints(objects, mid, HINTS_WORKLOAD, recorder.recording())
        except ThawError as exc:
            log.warning("restore hints not saved: %s", exc)
    return _tensors(layout, storages)


def _drain_one(pending, copier: _Copier, plan, manifest: Manifest) -> int:
    """Wait for the oldest chunk and finish it; its size."""
    i, fut = pending.popleft()
    data = fut.result()  # raises the fetch's error: nothing half-loaded is returned
    if data is not None:
        copier.copy(data, plan[i])
    return manifest.chunks[i].size


def load_into(module: torch.nn.Module, ref: str, **kwargs) -> torch.nn.Module:
    """Restore ``ref`` into ``module``'s parameters and buffers, all or nothing."""
    first = next(iter(module.state_dict().values()), None)
    kwargs.setdefault("device", str(first.device) if first is not None else "cpu")
    tensors = restore(ref, **kwargs)
    want = module.state_dict()
    missing = sorted(set(want) - set(tensors))
    extra = sorted(set(tensors) - set(want))
    wrong = sorted(k for k in set(want) & set(tensors) if want[k].shape != tensors[k].shape)
    if missing or extra or wrong:
        raise RestoreError(f"{ref} does not fit this module: missing {missing[:5]}, "
                           f"unexpected {extra[:5]}, wrong shape {wrong[:5]}")
    module.load_state_dict(tensors, strict=True)
    return module

