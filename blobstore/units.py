"""Sizes, durations and addresses as people write them: 256K, 1M, 10G; 90s, 30m, 24h, 2d;
HOST:PORT."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

from .errors import UsageError

MAX_DURATION = 365 * 86400.0
_DURATION_RE = re.compile(r"(\d{1,12}(?:\.\d{1,9})?)([smhd]?)")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

_SIZE_RE = re.compile(r"(\d+)([KkMmGgTt]?)(?:i?B)?")
_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}


def parse_size(text: str) -> int:
    match = _SIZE_RE.fullmatch(text.strip())
    if not match:
        raise UsageError(f"invalid size {text!r}: use a number with K, M, G or T, e.g. 10G")
    return int(match.group(1)) << _SHIFT[match.group(2).lower()]


def parse_listen(text: str, example: str = "0.0.0.0:8740") -> tuple[str, int]:
    """``--listen HOST:PORT`` (an IPv6 host in brackets) as (host, port)."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {text!r}: use HOST:PORT, e.g. {example}")
    return host, int(port)


def parse_duration(text: str, option: str, *, positive: bool = False) -> float:
    """A duration: a finite, non-negative number of seconds, bare or with a unit (s, m, h,
    d), at most 365 days; ``positive``: more than 0. UsageError for anything else (``nan``,
    ``inf``, ``''``, ``-1``)."""
    m = _DURATION_RE.fullmatch(text.strip())
    if not m:
        raise UsageError(f"{option} {text!r}: use seconds or a duration such as 90s, 30m, "
                         "24h, 2d")
    value = float(m.group(1)) * _SECONDS[m.group(2)]
    if value > MAX_DURATION:
        raise UsageError(f"{option} {text!r}: at most 365 days")
    if positive and value <= 0:
        raise UsageError(f"{option} {text!r}: must be more than 0")
    return value


def seconds(positive: bool = True) -> Callable[[str], float]:
    """An argparse ``type`` for an option of seconds, checked as ``parse_duration``."""
    def parse(text: str) -> float:
        try:
            return parse_duration(text, "", positive=positive)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc).strip()) from None

    return parse
