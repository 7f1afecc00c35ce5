"""Sizes and addresses as people write them: 256K, 1M, 10G; HOST:PORT."""

from __future__ import annotations

import re

from .errors import UsageError

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
