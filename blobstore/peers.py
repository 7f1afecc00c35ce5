"""Cache peers, the client side: a tier that asks the node that owns a chunk for it.

Each chunk has one owner among the live peers, chosen by rendezvous (highest random weight)
hashing of the normalised peer URL and the chunk id, as Kraken's origin ring does: every
node computes the same owners from the same list, and a node joining or leaving moves only
the chunks it gains or loses (a quarter of them when a fourth node joins three). A node asks
the chunk's owner, and the owner reads through to the store on a miss, so the store sends
each chunk into the cluster once. When this node is the owner, the tier steps aside
(``BlobNotFound``) and the stack below reads the store, filling the disk cache that this
node's ``thaw serve`` serves from.

A slow or dead peer costs little: connecting gets ``connect_timeout``, the answer
``read_timeout`` (an owner may have to read through first); a failure moves on to the
chunk's second owner, then gives up to the store (``FirstHit``). A request to the first
owner that is slower than that peer's recent p90 is hedged: the second owner is asked too,
and the first good answer wins (Spegel's hedging), at most one request in twenty (a budget:
``_may_hedge``). The hedge asks only for what the second owner holds already
(``X-Thaw-Cached-Only``), so a slow owner never makes two store GETs of one chunk; the
store is asked only when both fail, since every GET counts. A transfer that breaks midway
is resumed once with a ``Range`` request for the rest. A peer that fails ``trip`` times in
a row is skipped for ``cool_down`` seconds, then one request probes it (a circuit breaker).
Bytes from a peer are decoded and verified here, so a peer that serves wrong bytes is named
in the log once and skipped like a dead one; nothing it sends reaches a cache.

Membership (``Membership``): a fixed list, a file re-read when it changes, or the fresh
``peer_url`` of the node reports in the store. Thread-safe: the fetch threads share one
tier; connections are kept per thread and peer.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .codec import MAX_BLOB_SIZE, decode_and_verify
from .errors import BlobCorrupt, BlobNotFound, StoreUnavailable, UsageError
from .tiers import BlobTier, Fetched

log = logging.getLogger(__name__)
API = "/v1/blobs/"
CACHED_ONLY = "X-Thaw-Cached-Only"  # a request header: answer from the disk cache or 404
MIN_HEDGE = 0.02  # seconds: never hedge sooner than this
HEDGE_SAMPLES = 20  # answers from a peer before its p90 is trusted
HEDGE_SHARE = 0.05  # of the requests that have a second owner, at most this many hedged


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
    except OSError as exc:
        raise UsageError(f"{option} {path}: {exc.strerror}") from None
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
            with open(self._file) as f:
                urls = [line.strip() for line in f if line.strip() and
                        not line.lstrip().startswith("#")]
        except OSError as exc:
            raise UsageError(f"cannot read the peer list {self._file}: {exc.strerror}") \
                from None
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


@dataclass
class PeerHealth:
    failures: int = 0  # in a row
    skip_until: float = 0.0
    chunks: int = 0
    bytes: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)


class PeerTier(BlobTier):
    """Blobs from the peers that own them (read-only)."""

    def __init__(self, membership: Membership, self_url: str | None, token: str, *,
                 connect_timeout: float = 0.5, read_timeout: float = 5.0, trip: int = 3,
                 cool_down: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.membership, self.token = membership, token
        self.self_url = normalise_url(self_url) if self_url else None
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.trip, self.cool_down, self._clock = trip, cool_down, clock
        self.health: dict[str, PeerHealth] = {}
        self.hedged = 0  # requests that were also sent to the second owner
        self.asked = 0  # requests that had a second owner to hedge to
        self._lock = threading.Lock()
        self._local = threading.local()
        self._warned: set[str] = set()

    # -- choosing -------------------------------------------------------------------------

    def _candidates(self, id: str) -> list[str]:
        """The chunk's owners to ask, in order; [] when this node owns it."""
        ranked = owners(self.membership.urls(), id, 2)
        out = []
        for peer in ranked:
            if peer == self.self_url:
                break  # this node owns it (or is next): read through here
            if self._usable(peer):
                out.append(peer)
        return out

    def _usable(self, peer: str) -> bool:
        with self._lock:
            h = self.health.setdefault(peer, PeerHealth())
            if h.failures < self.trip:
                return True
            if self._clock() >= h.skip_until:  # half-open: this request probes it
                h.skip_until = self._clock() + self.cool_down
                return True
            return False

    def _record(self, peer: str, ok: bool, size: int = 0, seconds: float = 0.0) -> None:
        with self._lock:
            h = self.health.setdefault(peer, PeerHealth())
            if ok:
                h.failures, h.chunks, h.bytes = 0, h.chunks + 1, h.bytes + size
                h.latencies = (h.latencies + [seconds])[-1000:]
            else:
                h.failures += 1
                h.errors += 1
                if h.failures >= self.trip:
                    h.skip_until = self._clock() + self.cool_down

    def _warn(self, peer: str, message: str) -> None:
        if peer not in self._warned:
            self._warned.add(peer)
            log.warning("peer %s: %s; skipping it for a while (further warnings about it "
                        "suppressed)", peer, message)

    # -- fetching -------------------------------------------------------------------------

    def _connection(self, peer: str) -> http.client.HTTPConnection:
        conns = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(peer)
        if conn is not None and conn.sock is not None and _readable([conn.sock], 0):
            conn.close()  # an idle connection the peer has closed (its keep-alive ran out)
        if conn is None:
            parts = urlsplit(peer)
            cls = http.client.HTTPSConnection if parts.scheme == "https" else \
                http.client.HTTPConnection
            conn = conns[peer] = cls(parts.hostname, parts.port, timeout=self.connect_timeout)
        return conn

    def _drop(self, peer: str) -> None:
        conn = self._local.__dict__.get("conns", {}).pop(peer, None)
        if conn is not None:
            conn.close()

    def _ask(self, peer: str, id: str, cached_only: bool = False,
             sent: http.client.HTTPConnection | None = None) -> bytes | None:
        """The stored bytes from ``peer`` (the answer on ``sent``, where the request went
        already); None for a 404; OSError when it fails. A body cut off midway is resumed
        once from where it broke."""
        try:
            if sent is not None:
                return self._receive(peer, sent)
            return self._request(peer, id, cached_only=cached_only)
        except http.client.IncompleteRead as exc:
            self._drop(peer)
            got = bytes(exc.partial)
            rest = self._request(peer, id, start=len(got))
            if rest is None:
                raise OSError("the blob went away while it was resumed") from None
            return got + rest

    def _request(self, peer: str, id: str, start: int = 0, cached_only: bool = False
                 ) -> bytes | None:
        for attempt in (0, 1):
            conn, fresh = self._send(peer, id, start, cached_only)
            try:
                return self._receive(peer, conn, start)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if fresh or attempt:
                    raise
                # the peer closed an idle connection as this request went: once more, anew
        raise AssertionError("unreachable")

    def _send(self, peer: str, id: str, start: int = 0, cached_only: bool = False
              ) -> tuple[http.client.HTTPConnection, bool]:
        """The request, sent on this thread's connection to ``peer``: (it, whether it is a
        new connection). OSError when it cannot be sent."""
        headers = {"Authorization": f"Bearer {self.token}", "Accept-Encoding": "identity"}
        if start:
            headers["Range"] = f"bytes={start}-"
        if cached_only:
            headers[CACHED_ONLY] = "1"
        conn = self._connection(peer)
        fresh = conn.sock is None
        try:
            if fresh:
                conn.connect()
            conn.sock.settimeout(self.read_timeout)
            conn.request("GET", API + id, headers=headers)
        except (ConnectionResetError, BrokenPipeError):
            self._drop(peer)
            raise
        except (OSError, http.client.HTTPException) as exc:
            self._drop(peer)
            raise OSError(str(exc) or type(exc).__name__) from None
        return conn, fresh

    def _receive(self, peer: str, conn: http.client.HTTPConnection, start: int = 0
                 ) -> bytes | None:
        """The answer to the request sent on ``conn``: the body, or None for a 404."""
        try:
            resp = conn.getresponse()
            if int(resp.getheader("Content-Length") or 0) > MAX_BLOB_SIZE + (1 << 20):
                raise OSError("an answer larger than any blob")
            body = resp.read()
            if resp.will_close:
                self._drop(peer)
        except http.client.IncompleteRead:
            raise  # resumed by the caller
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self._drop(peer)
            raise
        except (OSError, http.client.HTTPException) as exc:
            self._drop(peer)
            raise OSError(str(exc) or type(exc).__name__) from None
        if resp.status == 200 and not start or resp.status == 206 and start:
            return body
        if resp.status == 404:
            return None
        raise OSError(f"HTTP {resp.status}")

    def _try(self, peer: str, id: str, max_size: int, cached_only: bool = False,
             sent: http.client.HTTPConnection | None = None, started: float | None = None
             ) -> Fetched | None:
        """The verified blob from ``peer`` (the answer on ``sent``, sent at ``started``), or
        None (recorded, and said once)."""
        started = self._clock() if started is None else started
        try:
            stored = self._ask(peer, id, cached_only, sent)
        except OSError as exc:
            self._failed(peer, f"cannot fetch blob {id}: {exc}")
            return None
        if stored is None:
            self._record(peer, True)  # it answered: it could not get the blob either
            return None
        try:
            data = decode_and_verify(stored, id, max_size=max_size, where=peer)
        except BlobCorrupt as exc:
            self._record(peer, False)
            with self._lock:
                self.health[peer].failures = self.trip  # wrong bytes: skip it now
                self.health[peer].skip_until = self._clock() + self.cool_down
            self._warn(peer, f"served wrong bytes ({exc})")
            return None
        self._record(peer, True, len(stored), self._clock() - started)
        return Fetched(data, stored)

    def _failed(self, peer: str, message: str) -> None:
        self._record(peer, False)
        self._warn(peer, message)

    def hedge_after(self, peer: str) -> float | None:
        """Seconds after which a request to ``peer`` is hedged: its recent p90 (at least
        ``MIN_HEDGE``), once there are enough answers to know it; None before."""
        with self._lock:
            lat = sorted(self.health.get(peer, PeerHealth()).latencies)
        if len(lat) < HEDGE_SAMPLES:
            return None
        return max(MIN_HEDGE, lat[int(len(lat) * 0.9)])

    def fetch(self, id: str, *, max_size: int = MAX_BLOB_SIZE) -> Fetched:
        peers = self._candidates(id)
        if len(peers) == 2 and self._may_hedge() and (
                delay := self.hedge_after(peers[0])) is not None:
            got = self._hedged(peers, id, max_size, delay)
        else:
            got = next((f for p in peers if (f := self._try(p, id, max_size))), None)
        if got is None:
            raise BlobNotFound(f"blob {id}: no peer had it")
        return got

    def _may_hedge(self) -> bool:
        """Whether hedges are still within ``HEDGE_SHARE`` of the requests (The Tail at
        Scale's budget). A node that is itself the slow part (every answer waits on its
        own cores) finds every peer slower than its p90 at once; unbounded, node 2's model
        read in bench/peers.py's setup took 0.70 s where it took 0.55 s with no hedging
        (medians of three)."""
        with self._lock:
            self.asked += 1
            return self.hedged < HEDGE_SHARE * self.asked

    def _hedged(self, peers: list[str], id: str, max_size: int, delay: float
                ) -> Fetched | None:
        """Ask the first owner; if its answer has not begun within ``delay``, the second too,
        for what it holds already (a hedge never costs a store GET); the first good answer
        wins and the slower request's connection is closed. If neither has it, the second
        owner is asked again, reading through, as without a hedge. All on this thread,
        waiting on both sockets at once: handing the first request to a pool thread cost
        more than the hedges saved (a thread switch per request, under the GIL)."""
        first, second = peers
        sent: dict[str, tuple[http.client.HTTPConnection, float]] = {}
        through = set()  # asked to read through on a miss, not only for what they hold
        for peer in peers:
            hedge = first in sent  # the first was asked and is slow
            if hedge:
                with self._lock:
                    self.hedged += 1
            try:
                sent[peer] = self._send(peer, id, cached_only=hedge)[0], self._clock()
                if not hedge:
                    through.add(peer)
            except OSError as exc:
                self._failed(peer, f"cannot fetch blob {id}: {exc}")
            if sent and _readable([c.sock for c, _ in sent.values()], delay):
                break
        while sent:
            fds = _readable([c.sock for c, _ in sent.values()], self.read_timeout)
            if not fds:
                for peer in sent:
                    self._drop(peer)
                    self._failed(peer, f"no answer for blob {id} within {self.read_timeout:g}s")
                return None
            peer = next(p for p, (c, _) in sent.items() if c.sock.fileno() in fds)
            conn, started = sent.pop(peer)
            if (got := self._try(peer, id, max_size, sent=conn, started=started)) is not None:
                for slower in sent:
                    self._drop(slower)
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
        with self._lock:
            return {p: {"chunks": h.chunks, "bytes": h.bytes, "errors": h.errors,
                        "skipped": h.failures >= self.trip}
                    for p, h in sorted(self.health.items())}

    def __str__(self) -> str:
        return "peers"


def _readable(socks: list, timeout: float) -> list[int]:
    """The file descriptors among ``socks`` with something to read within ``timeout``
    seconds (``poll``: no limit on descriptor numbers, as ``select`` has)."""
    poller = select.poll()
    for sock in socks:
        poller.register(sock, select.POLLIN)
    return [fd for fd, _ in poller.poll(max(0.0, timeout) * 1000)]


class FirstHit(BlobTier):
    """The first of ``tiers`` that has the blob; the last one's error if none has."""

    def __init__(self, tiers: list[BlobTier]) -> None:
        self.tiers = tiers

    def fetch(self, id: str, *, max_size: int = MAX_BLOB_SIZE) -> Fetched:
        for tier in self.tiers[:-1]:
            try:
                return tier.fetch(id, max_size=max_size)
            except (BlobNotFound, StoreUnavailable, BlobCorrupt):
                continue
        return self.tiers[-1].fetch(id, max_size=max_size)

    def get_stored(self, id: str) -> bytes:
        return self.fetch(id).stored

    def stored_size(self, id: str) -> int:
        return self.tiers[-1].stored_size(id)

    def has(self, id: str) -> bool:
        return self.tiers[-1].has(id)

    def put_stored(self, id: str, stored: bytes) -> None:
        self.tiers[-1].put_stored(id, stored)

    def __str__(self) -> str:
        return " then ".join(str(t) for t in self.tiers)
