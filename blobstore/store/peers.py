"""Cache peers, the client side: a tier that asks the node that owns a chunk for it.

Each chunk has one owner among the live peers, chosen by rendezvous (highest random weight)
hashing of the normalised peer URL and the chunk id, as Kraken's origin ring does: every
node computes the same owners from the same list, and a node joining or leaving moves only
the chunks it gains or loses (a quarter of them when a fourth node joins three). A node asks
the chunk's owner, and the owner reads through to the store on a miss, so the store sends
each chunk into the cluster once. When this node is the owner, the tier steps aside
(``BlobNotFound``) and the stack below reads the store, filling the disk cache that this
node's ``thaw serve`` serves from.

A slow or dead peer costs little. Each answer has a deadline for the whole of it
(``peerclient.py``: 2 s to begin, then the body at 10 MB/s at least); a peer that misses it,
cuts the body off twice, or sends garbage counts a failure, and the chunk's second owner is
asked, then the store (``tiers.FirstHit``): a bad peer costs a read at most two peer
deadlines and one store fetch. A request to the first owner that is slower than that
peer's recent p90 is hedged: the second owner is asked too, and the first good answer wins
(``peerhedge.py``). The hedge asks only for what the second owner holds already
(``X-Thaw-Cached-Only``), so a slow owner never makes two store GETs of one chunk; the
store is asked only when both fail, since every GET counts. A peer that fails three times
in a row is skipped for 30 s, then one request probes it (``peerhealth.py``). Bytes from a
peer are decoded and verified here, so a peer that serves wrong bytes is named in the log
once and skipped at once; nothing it sends reaches a cache.

Membership (``Membership``): a fixed list, a file re-read when it changes, or the fresh
``peer_url`` of the node reports in the store. Thread-safe: the fetch threads share one
tier; connections are kept per thread and peer.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from ..errors import BlobCorrupt, BlobNotFound, StoreUnavailable, UsageError
from .codec import MAX_BLOB_SIZE, decode_and_verify
from .peerclient import PeerClient, PeerFailed, Sent, readable
from .peerhealth import HealthBook
from .peerhedge import HedgePolicy
from .tiers import BlobTier, Fetched

log = logging.getLogger(__name__)


def normalise_url(url: str) -> str:
    """``http://HOST:PORT`` with a lower-case host and an explicit port, no trailing slash;
    UsageError for anything else."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # "Invalid IPv6 URL" and the like
        raise UsageError(f"invalid peer URL {url!r}: use http://HOST:PORT (or https://)") \
            from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/") \
            or parts.query or parts.fragment or parts.username:
        raise UsageError(f"invalid peer URL {url!r}: use http://HOST:PORT (or https://)")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UsageError(f"invalid peer URL {url!r}: the port is not a number") from None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}"


def read_token(path: str | None, option: str) -> str:
    """The bearer token in the file ``path`` (whitespace around it ignored)."""
    if not path:
        raise UsageError(f"{option} FILE is required: the bearer token peers share")
    try:
        with open(path, "rb") as f:
            raw = f.read(4097)
            mode = os.fstat(f.fileno()).st_mode
    except OSError as exc:
        raise UsageError(f"{option} {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s %s is readable by others (mode %o): anyone who reads it can fetch "
                    "this cluster's chunks; chmod 600 it", option, path, mode & 0o777)
    token = raw.decode("ascii", "replace").strip()
    if not token or len(raw) > 4096 or not token.isprintable() or " " in token:
        raise UsageError(f"{option} {path}: the file must hold one token of printable "
                         "ASCII without spaces, up to 4 KiB")
    return token


def owners(peers: list[str], id: str, n: int = 2) -> list[str]:
    """The ``n`` peers that own blob ``id``, first owner first (rendezvous hashing)."""
    def weight(peer: str) -> bytes:
        return hashlib.blake2b(f"{peer}\n{id}".encode(), digest_size=8).digest()

    return sorted(peers, key=weight, reverse=True)[:n]


class Membership:
    """The peer URLs, normalised: fixed, from a file (re-read when its mtime changes), or
    from the store's fresh node reports (``reports``: a callable returning the URLs,
    refreshed every ``refresh`` seconds)."""

    def __init__(self, *, urls: list[str] | None = None, file: str | None = None,
                 reports: Callable[[], list[str]] | None = None, refresh: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._urls = sorted({normalise_url(u) for u in urls or []})
        self._file, self._reports, self._refresh, self._clock = file, reports, refresh, clock
        self._stamp: object = None
        self._next = -1.0
        self._lock = threading.Lock()
        if file:
            self._read_file()

    @classmethod
    def parse(cls, spec: str, reports: Callable[[], list[str]] | None = None) -> Membership:
        """``URL,URL,...``, ``@FILE`` or ``store`` (the node reports)."""
        if spec == "store":
            if reports is None:
                raise UsageError("--peers store needs the store's node reports")
            return cls(reports=reports)
        if spec.startswith("@"):
            return cls(file=spec[1:])
        return cls(urls=[u for u in spec.split(",") if u.strip()])

    def _read_file(self) -> None:
        assert self._file is not None
        try:
            st = os.stat(self._file)
            if (st.st_mtime_ns, st.st_size) == self._stamp:
                return
            with open(self._file, encoding="utf-8") as f:
                urls = [line.strip() for line in f if line.strip() and
                        not line.lstrip().startswith("#")]
        except OSError as exc:
            raise UsageError(f"cannot read the peer list {self._file}: {exc.strerror}") \
                from None
        except UnicodeDecodeError:
            raise UsageError(f"the peer list {self._file} is not UTF-8 text: write one "
                             "http://HOST:PORT a line") from None
        self._urls = sorted({normalise_url(u) for u in urls})
        self._stamp = (st.st_mtime_ns, st.st_size)

    def urls(self) -> list[str]:
        with self._lock:
            now = self._clock()
            if now >= self._next and (self._file or self._reports):
                self._next = now + (1.0 if self._file else self._refresh)
                try:
                    if self._file:
                        self._read_file()
                    else:
                        self._urls = sorted({normalise_url(u) for u in self._reports()})
                except (UsageError, StoreUnavailable) as exc:
                    log.warning("peer list not refreshed, keeping %d peers: %s",
                                len(self._urls), exc)
            return list(self._urls)


class PeerTier(BlobTier):
    """Blobs from the peers that own them (read-only). ``client``, ``health`` and ``hedge``
    are this tier's parts (``peerclient``, ``peerhealth``, ``peerhedge``); tests pass their
    own."""

    def __init__(self, membership: Membership, self_url: str | None, token: str, *,
                 client: PeerClient | None = None, health: HealthBook | None = None,
                 hedge: HedgePolicy | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.membership = membership
        self.self_url = normalise_url(self_url) if self_url else None
        self.client = client or PeerClient(token, clock=clock)
        self.health = health or HealthBook(clock=clock)
        self.hedge = hedge or HedgePolicy()
        self._clock = clock
        self._warned: set[str] = set()
        self._warn_lock = threading.Lock()

    def _candidates(self, id: str) -> list[str]:
        """The chunk's owners to ask, in order; [] when this node owns it."""
        out = []
        for peer in owners(self.membership.urls(), id, 2):
            if peer == self.self_url:
                break  # this node owns it (or is next): read through here
            if self.health.usable(peer):
                out.append(peer)
        return out

    def _warn(self, peer: str, message: str) -> None:
        with self._warn_lock:
            if peer in self._warned:
                return
            self._warned.add(peer)
        log.warning("peer %s: %s; skipping it for a while (further warnings about it "
                    "suppressed)", peer, message)

    def _failed(self, peer: str, message: str) -> None:
        self.health.failed(peer)
        self._warn(peer, message)

    def fetch(self, id: str, *, max_size: int = MAX_BLOB_SIZE) -> Fetched:
        peers = self._candidates(id)
        if len(peers) == 2 and self.hedge.may_hedge() and (
                delay := self.hedge.delay(self.health.latencies(peers[0]))) is not None:
            got = self._hedged(peers, id, max_size, delay)
        else:
            got = next((f for p in peers if (f := self._try(p, id, max_size))), None)
        if got is None:
            raise BlobNotFound(f"blob {id}: no peer had it")
        return got

    def _try(self, peer: str, id: str, max_size: int, sent: Sent | None = None
             ) -> Fetched | None:
        """The verified blob from ``peer`` (the answer to ``sent``, where the request went
        already), or None: it has none, or it failed (recorded, and said once)."""
        started = self._clock() if sent is None else sent.started
        try:
            stored = self.client.get(peer, id) if sent is None else self.client.receive(sent)
        except PeerFailed as exc:
            self._failed(peer, f"cannot fetch blob {id}: {exc}")
            return None
        if stored is None:
            self.health.answered(peer)  # it could not get the blob either
            return None
        try:
            data = decode_and_verify(stored, id, max_size=max_size, where=peer)
        except BlobCorrupt as exc:
            self.health.distrust(peer)
            self._warn(peer, f"served wrong bytes ({exc})")
            return None
        self.health.answered(peer, len(stored), self._clock() - started)
        return Fetched(data, stored)

    def _hedged(self, peers: list[str], id: str, max_size: int, delay: float
                ) -> Fetched | None:
        """Ask the first owner; if its answer has not begun within ``delay``, the second too,
        for what it holds already (a hedge never costs a store GET); the first good answer
        wins and the slower request's connection is closed. If neither has it, the second
        owner is asked again, reading through, as without a hedge. All on this thread,
        waiting on both sockets at once: handing the first request to a pool thread cost
        more than the hedges saved (a thread switch per request, under the GIL)."""
        first, second = peers
        sent: dict[str, Sent] = {}
        through = set()  # asked to read through on a miss, not only for what they hold
        for peer in peers:
            hedge = first in sent  # the first was asked and is slow
            if hedge:
                self.hedge.hedging()
            try:
                sent[peer] = self.client.send(peer, id, cached_only=hedge)
                if not hedge:
                    through.add(peer)
            except PeerFailed as exc:
                self._failed(peer, f"cannot fetch blob {id}: {exc}")
            if sent and readable(list(sent.values()), delay):
                break
        while sent:
            fds = readable(list(sent.values()), min(s.due for s in sent.values())
                           - self._clock())
            ready = [p for p, s in sent.items() if s.fileno() in fds or s.due <= self._clock()]
            peer = ready[0] if ready else min(sent, key=lambda p: sent[p].due)
            if (got := self._try(peer, id, max_size, sent=sent.pop(peer))) is not None:
                for slower in sent:
                    self.client.drop(slower)
                return got
        # Neither had it. The second owner is asked to read through, unless it just was.
        return None if second in through else self._try(second, id, max_size)

    def get_stored(self, id: str) -> bytes:
        return self.fetch(id).stored  # verified here: a peer is not believed

    def stored_size(self, id: str) -> int:
        raise BlobNotFound(f"blob {id}: peers are asked for blobs, not sizes")

    def has(self, id: str) -> bool:
        return False

    def put_stored(self, id: str, stored: bytes) -> None:
        raise StoreUnavailable("peers are read-only")

    def peer_stats(self) -> dict[str, dict]:
        return self.health.stats()

    def __str__(self) -> str:
        return "peers"
