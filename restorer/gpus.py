"""What GPUs this machine has, from NVML (pynvml): the one place thaw asks.

It lives with the restorer, the package whose job is GPUs: the restorer picks a device and
records the driver with it, and the node daemon reports the GPUs to placement (its command
line passes ``nvml_gpus`` to the reporter, so ``fusefs`` itself imports nothing of GPUs).
Not in ``blobstore``: a blob store has no business with devices. Imports neither torch nor,
until called, pynvml; every failure means "no NVML here". Thread-safe as NVML is.
"""

from __future__ import annotations

from blobstore.schema import GpuReport


def nvml_gpus() -> list[GpuReport] | None:
    """A ``GpuReport`` (model, memory total and free) per GPU NVML sees, or None when there
    is no NVML (no driver, no pynvml)."""
    try:
        import pynvml  # optional: only on GPU nodes

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - any failure means no NVML here
        return None
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            name = pynvml.nvmlDeviceGetName(h)
            gpus.append(GpuReport(name.decode() if isinstance(name, bytes) else str(name),
                                  int(mem.total), int(mem.free)))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def driver_version() -> str | None:
    """The NVIDIA driver's version, or None without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return str(pynvml.nvmlSystemGetDriverVersion())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - the driver version is a nicety
        return None
