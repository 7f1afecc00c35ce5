"""Snapshot tensors into the store, and restore them into memory, pipelined.

Restore: the tensor table is read (through the tiers: on a warmed node, from its disk
cache) and validated, every storage is allocated up front on the target device, then chunks
are fetched by ``jobs`` threads through the tiers (disk cache, store), decompressed and
verified there, at most ``window`` ahead, in the order the last restore read them (hints).
On CPU each fetching thread copies its chunk's pieces straight into the storages (disjoint
regions; numpy releases the GIL), so copies and the first-touch page faults of fresh memory
spread over the cores. On CUDA the calling thread moves each chunk through a ring of
pinned staging buffers to the device on a side stream. Fetching, verifying and copying
overlap, and host memory stays bounded. Nothing is returned until every byte has arrived
and verified: an error leaves no half-loaded tensors behind. The order chunks were taken in
(the table's first) is saved as hints for the next restore, with no GET (the plan read
them) and no PUT when it is the order they gave. Compiled kernels a snapshot carries
(``compilecache``) go back into torch's caches after the tensors. ``restore`` is
``plan_restore`` (what goes where, in which order, on which device) then ``execute`` (the
pipeline, ``blobstore.image.pipeline.in_order``, into a ``copiers`` piece).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from blobstore.errors import ThawError
from blobstore.image.hints import HintList, HintRecorder, read_hints, save_hints
from blobstore.image.images import fetch_chunk, open_image
from blobstore.image.manifest import FileSpans, Manifest
from blobstore.image.pipeline import in_order
from blobstore.image.refs import parse_ref
from blobstore.store.base import ObjectStore
from blobstore.store.blobs import BlobStore
from blobstore.store.diskcache import DiskCache
from blobstore.store.tiers import BlobTier, node_tiers
from blobstore.store.url import open_store

from . import compilecache
from .copiers import copier_for
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
from .plan import Piece, fetch_order, file_sizes, pieces
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
    target = parse_ref(ref, new=True)
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


def _file_bytes(blobs: BlobTier, manifest: Manifest, path: str, offset: int,
                size: int, read: Callable[[int], None] = lambda i: None) -> bytes:
    """``size`` bytes of file ``path`` at ``offset``; ``read`` is told each chunk index."""
    out = bytearray()
    for s in FileSpans(manifest.entry(path).spans).lookup(offset, size):
        out += fetch_chunk(blobs, manifest, s.chunk)[s.offset:s.offset + s.length]
        read(s.chunk)
    return bytes(out)


def read_layout(blobs: BlobTier, manifest: Manifest,
                read: Callable[[int], None] = lambda i: None) -> Layout:
    """The snapshot's table, or the layout of the image's safetensors checkpoint (one
    file, or the shards of one), through ``blobs`` (a node's tiers: its disk cache first);
    ``read`` is told each chunk index read, for the hints."""
    sizes = file_sizes(manifest)
    if SNAPSHOT_TABLE in sizes:
        layout = from_table(_file_bytes(blobs, manifest, SNAPSHOT_TABLE, 0,
                                        sizes[SNAPSHOT_TABLE], read))
    else:
        layouts = []
        for path in safetensors_files(sizes):
            n = header_size(_file_bytes(blobs, manifest, path, 0, 8, read))
            if 8 + n > sizes[path]:
                raise LayoutError(f"{path}: header runs past the end of the file")
            layouts.append(from_safetensors(path, _file_bytes(blobs, manifest, path, 8, n,
                                                              read)))
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


def _tensors(layout: Layout, storages: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for t in layout.tensors:
        dtype = getattr(torch, t.dtype)
        flat = storages[t.storage]
        usable = flat.numel() - flat.numel() % dtype.itemsize
        typed = flat[:usable].view(dtype)
        out[t.name] = typed.as_strided(t.shape, t.stride, t.offset)
    return out


@dataclass(frozen=True)
class RestorePlan:
    """What a restore will do, decided before a byte of tensor data is fetched."""

    objects: ObjectStore
    mid: str
    manifest: Manifest
    layout: Layout
    pieces: dict[int, list[Piece]]  # chunk index -> where its bytes go
    order: list[int]  # chunk indexes, hinted ones first
    device: torch.device
    hints: HintList  # as stored when the plan was made


def plan_restore(objects: ObjectStore, ref: str, device: str | None,
                 tiers: BlobTier | None = None,
                 recorder: HintRecorder | None = None) -> RestorePlan:
    """Resolve ``ref``, read (through ``tiers``; the store when None) and validate its
    layout, order the chunks, pick the device. ``recorder`` notes the layout's chunks."""
    mid, manifest = open_image(objects, ref)
    layout = read_layout(tiers or BlobStore(objects), manifest,
                         recorder.read if recorder else lambda i: None)
    _check_env(layout)
    plan = pieces(manifest, layout)
    hints = read_hints(objects, mid, HINTS_WORKLOAD)
    order = fetch_order(plan, hints.order(len(manifest.chunks)))
    return RestorePlan(objects, mid, manifest, layout, plan, order,
                       pick_device(device, layout.nbytes), hints)


def execute(plan: RestorePlan, tiers: BlobTier, *, jobs: int, window: int,
            on_bytes: Callable[[int], None], recorder: HintRecorder) -> list[torch.Tensor]:
    """Fetch every planned chunk through ``tiers`` in the pipeline, verified, into fresh
    storages on the plan's device; the storages."""
    manifest, layout = plan.manifest, plan.layout
    storages = [torch.empty(s.nbytes, dtype=torch.uint8, device=plan.device)
                for s in layout.storages]
    biggest = max((manifest.chunks[i].size for i in plan.pieces), default=1)
    copier = copier_for(storages, plan.device, window + 2, biggest)

    def fetch(i: int) -> bytes | None:
        chunk, where = manifest.chunks[i], plan.pieces[i]
        if copier.in_place and len(where) == 1 and where[0].length == chunk.size:
            # the chunk fills one region of one storage: decode and verify it in place
            tiers.read_into(chunk.id, copier.region(where[0]))
            return None
        data = tiers.get(chunk.id, max_size=chunk.size)
        if not copier.in_place:
            return data  # copied by the consuming thread, which owns the staging ring
        copier.copy(data, where)
        return None

    for i, data in in_order(plan.order, fetch, jobs=jobs, window=window,
                            thread_name="thaw-restore"):
        if data is not None:  # an error was raised at its turn: nothing half-loaded returns
            copier.copy(data, plan.pieces[i])
        recorder.read(i)  # in the plan's order: hints it followed are left as they are
        on_bytes(manifest.chunks[i].size)
    copier.finish()
    return storages


def restore(ref: str, device: str | None = None, *, store: str | ObjectStore | None = None,
            cache_dir: str | None = None, cache_bytes: int = 50 << 30, jobs: int = 8,
            window: int = 16, record_hints: bool = True, compile_cache: bool = True,
            on_bytes: Callable[[int], None] = lambda n: None,
            peers: BlobTier | None = None) -> dict[str, torch.Tensor]:
    """The tensors of ``ref`` (a snapshot, or an image of a safetensors checkpoint) on
    ``device`` ("cuda:0", "cpu"; None picks a GPU with room, else the CPU). With
    ``compile_cache``, compiled kernels the snapshot carries go into torch's caches.
    ``on_bytes`` is told, in the calling thread, the bytes of each chunk restored;
    ``peers``: the cache peers' tier, asked before the store."""
    objects = _objects(store)
    tiers = node_tiers(BlobStore(objects),
                       DiskCache(cache_dir, cache_bytes) if cache_dir else None, peers).stack
    recorder = HintRecorder()
    plan = plan_restore(objects, ref, device, tiers, recorder)
    storages = execute(plan, tiers, jobs=jobs, window=window, on_bytes=on_bytes,
                       recorder=recorder)
    sizes = file_sizes(plan.manifest)
    if compile_cache and compilecache.ARTIFACTS in sizes:
        compilecache.install(_file_bytes(tiers, plan.manifest, compilecache.ARTIFACTS, 0,
                                         sizes[compilecache.ARTIFACTS], recorder.read),
                             plan.layout.env.get("torch"))
    if record_hints:
        try:
            save_hints(objects, plan.mid, HINTS_WORKLOAD, recorder.recording(), plan.hints)
        except ThawError as exc:
            log.warning("restore hints not saved: %s", exc)
    return _tensors(plan.layout, storages)


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

