"""What ``thaw mount`` and ``thaw daemon`` are told: plain records, no I/O, nothing heavy to
import (the command line builds them while pyfuse3 and trio load)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from blobstore.image.hints import START
from blobstore.store.retrying import DEFAULT_BUDGET

if TYPE_CHECKING:
    from blobstore.store.diskcache import DiskCache


@dataclass(frozen=True)
class MountOptions:
    """What ``thaw mount`` and ``thaw daemon`` share."""

    cache_dir: str
    cache_bytes: int = 10 << 30
    memory_bytes: int = 256 << 20
    metrics: str | None = None  # HOST:PORT for Prometheus
    hints: str | None = START  # the workload whose starts are learnt and replayed
    hints_window: float = 60.0
    store_timeout: float = DEFAULT_BUDGET
    prefetch: str = "hints"  # what else is fetched ahead: hints, all (the image), none
    prefetch_budget: int | None = None  # bytes of --prefetch all; None: a quarter of the cache
    peers: str | None = None  # --peers: URL,URL | @FILE | store; None: no cache peers
    self_url: str | None = None  # --self: this node's own peer URL
    peer_token: str = ""  # the bearer token peers want
    passthrough: str = "auto"  # auto: FUSE passthrough where the kernel allows; off

    def image_budget(self, disk: DiskCache) -> int:
        """Bytes ``--prefetch all`` may fetch now: within the budget and the disk cache's
        free room, so that it never evicts what mounted images use."""
        budget = self.cache_bytes // 4 if self.prefetch_budget is None else self.prefetch_budget
        return max(0, min(budget, disk.max_bytes - disk.size))


@dataclass(frozen=True)
class NodeOptions:
    """What only the daemon has: the node's report to placement."""

    node_id: str | None = None
    gpus: Callable[[], list[dict] | None] = lambda: None
    report_interval: float = 5.0
    peer_url: str | None = None  # where this node's `thaw serve` answers
