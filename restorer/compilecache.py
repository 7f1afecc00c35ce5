"""torch's compile caches (Inductor, Triton, AOTAutograd) carried inside a snapshot.

``torch.compile`` keeps what it builds (generated kernels, compiled C++/Triton binaries,
autotuning results) in on-disk caches. ``torch.compiler.save_cache_artifacts`` packs what
this process compiled into one blob; ``load_cache_artifacts`` installs such a blob into
another process's caches, so its ``torch.compile`` finds the kernels built instead of
generating, compiling and autotuning them again. A snapshot stores the blob as one file;
a restore installs it. The blob is only good for the same torch (and device kind), so a
snapshot taken with another torch skips it with a warning: its tensors still restore.
Called from the snapshotting or restoring thread; torch locks its own caches.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)
ARTIFACTS = "compile/artifacts"


def capture() -> bytes | None:
    """What ``torch.compile`` built in this process, packed; None when it built nothing."""
    save = getattr(torch.compiler, "save_cache_artifacts", None)
    packed = save() if save is not None else None
    if not packed or not packed[0]:
        log.warning("no compiled kernels to put in the snapshot: run the model under "
                    "torch.compile in this process before snapshotting it")
        return None
    return bytes(packed[0])


def install(data: bytes, snapshot_torch: str | None) -> bool:
    """Put the snapshot's compiled kernels into this process's caches; False, with a
    warning, when they cannot be used here (then torch.compile compiles as usual)."""
    if snapshot_torch != torch.__version__:
        log.warning("compile caches not restored: built by torch %s, this is torch %s",
                    snapshot_torch, torch.__version__)
        return False
    # torch logs a blob it cannot read with a traceback and returns None: say it once.
    torch_log = logging.getLogger("torch.compiler._cache")
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        loaded = torch.compiler.load_cache_artifacts(data)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a blob it rejects
        loaded, why = None, str(exc)
    else:
        why = "torch could not read them"
    finally:
        torch_log.setLevel(level)
    if loaded is None:
        log.warning("compile caches not restored (%s): torch.compile will compile again", why)
        return False
    log.info("compile caches restored (%d bytes): torch.compile will reuse them", len(data))
    return True
