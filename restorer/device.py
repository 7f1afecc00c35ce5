"""Where a restore goes, and what the snapshot was taken on.

``pick_device`` asks NVML (pynvml) for a GPU with enough free memory; without a GPU or
NVML the restore goes to the CPU, said once in the log, never as a traceback. An explicit
device that cannot take the tensors is a clear error naming what is needed and free.
"""

from __future__ import annotations

import logging

import torch

from blobstore.errors import ThawError

from .gpus import driver_version, nvml_gpus

log = logging.getLogger(__name__)
_said_cpu = False


class RestoreError(ThawError):
    """A restore that cannot proceed: wrong device, incompatible snapshot, bad input."""


def _nvml_free() -> list[tuple[int, int, str]] | None:
    """(index, free bytes, name) per GPU, or None without NVML."""
    gpus = nvml_gpus()
    if gpus is None:
        return None
    return [(i, g.memory_free, g.model) for i, g in enumerate(gpus)]


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def pick_device(device: str | None, need: int) -> torch.device:
    global _said_cpu
    if device is not None and device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RestoreError(f"asked for {device}, but this torch ({torch.__version__}) sees "
                               "no CUDA device; use --device cpu")
        dev = torch.device(device)
        free, _ = torch.cuda.mem_get_info(dev)
        if free < need:
            raise RestoreError(f"{device} has {_gib(free)} free, the snapshot needs "
                               f"{_gib(need)}; free memory or choose another GPU")
        return dev
    if device is not None:
        return torch.device(device)
    gpus = _nvml_free() if torch.cuda.is_available() else None
    if gpus:
        best = max(gpus, key=lambda g: g[1])
        if best[1] >= need:
            return torch.device(f"cuda:{best[0]}")
        raise RestoreError(f"no GPU has {_gib(need)} free (the most is {_gib(best[1])} on "
                           f"GPU {best[0]}, {best[2]}); free memory or restore to the CPU")
    if not _said_cpu:
        _said_cpu = True
        log.info("no GPU (or no NVML) here: restoring to the CPU")
    return torch.device("cpu")


def environment() -> dict:
    """torch, CUDA, GPU model and driver, as far as this machine can tell."""
    env = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        driver = driver_version()
        if driver is not None:
            env["driver"] = driver
    return env
