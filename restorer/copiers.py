"""Copying restored chunk pieces into tensor storages: one small piece per device kind.

``CpuCopier`` writes pieces straight into the storages' memory, and offers a piece's region
so a chunk that fills one region whole is decoded and verified in place, with no copy at
all. ``CudaCopier`` stages each chunk in one of a ring of pinned host buffers and copies
it to the device on a side stream, so the next chunk's fetch and decode overlap the copy;
a buffer is reused only after the copy that last used it has finished. ``copier_for`` picks
one. Threading: a ``CpuCopier`` may be used from the fetch threads (pieces never overlap);
a ``CudaCopier`` belongs to the consuming thread (the ring and the stream are its own).
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from .plan import Piece


class CpuCopier:
    in_place = True  # fetch threads may decode into ``region`` and ``copy`` themselves

    def __init__(self, storages: list[torch.Tensor]) -> None:
        self.views = [s.numpy() for s in storages]

    def region(self, p: Piece) -> memoryview:
        """The bytes of a storage that piece ``p`` fills."""
        return memoryview(self.views[p.storage][p.storage_offset:p.storage_offset + p.length])

    def copy(self, data: bytes, pieces: list[Piece]) -> None:
        src = np.frombuffer(data, dtype=np.uint8)
        for p in pieces:
            self.views[p.storage][p.storage_offset:p.storage_offset + p.length] = \
                src[p.chunk_offset:p.chunk_offset + p.length]

    def finish(self) -> None:
        """Nothing is in flight on a CPU."""


class CudaCopier:
    in_place = False  # the staging ring belongs to the consuming thread

    def __init__(self, storages: list[torch.Tensor], device: torch.device, depth: int,
                 chunk_bytes: int) -> None:
        self.storages = storages
        self.stream = torch.cuda.Stream(device)
        self.ring = deque((torch.empty(chunk_bytes, dtype=torch.uint8, pin_memory=True),
                           torch.cuda.Event()) for _ in range(depth))

    def copy(self, data: bytes, pieces: list[Piece]) -> None:
        src = np.frombuffer(data, dtype=np.uint8)
        buf, done = self.ring.popleft()
        done.synchronize()  # the copy that last used this buffer has finished
        buf[:len(src)].numpy()[:] = src
        with torch.cuda.stream(self.stream):
            for p in pieces:
                self.storages[p.storage][p.storage_offset:p.storage_offset + p.length].copy_(
                    buf[p.chunk_offset:p.chunk_offset + p.length], non_blocking=True)
            done.record(self.stream)
        self.ring.append((buf, done))

    def finish(self) -> None:
        self.stream.synchronize()


def copier_for(storages: list[torch.Tensor], device: torch.device, depth: int,
               chunk_bytes: int) -> CpuCopier | CudaCopier:
    if device.type == "cuda":
        return CudaCopier(storages, device, depth, chunk_bytes)
    return CpuCopier(storages)
