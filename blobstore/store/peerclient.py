"""One peer's answer to one blob request, over HTTP, within a deadline for the whole answer.

A peer is asked ``GET /v1/blobs/{id}`` with the cluster's bearer token. Its answer must be
complete by its deadline: ``first_byte`` seconds to begin (an owner may read through from
the store first), plus the body's length at ``floor_rate`` bytes a second (``deadline``).
A socket timeout alone bounds each read, not the answer: a peer that sends a byte a second
would hold a read for hours. A body cut off midway is resumed once, with a ``Range``
request for the rest, within the same deadline; a second cut, a late answer, garbage, a
refused or reset connection are all ``PeerFailed``, so the caller can move on to the next
owner or the store. A 404 is ``None``: the peer answered, it has no copy.

Connections are kept per thread and peer (keep-alive), so this is thread-safe with no lock:
the fetch threads share one client. Nothing here decodes or verifies: the tier does.
"""

from __future__ import annotations

import http.client
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from .codec import MAX_BLOB_SIZE

API = "/v1/blobs/"
CACHED_ONLY = "X-Thaw-Cached-Only"  # a request header: answer from the disk cache or 404
FIRST_BYTE = 2.0  # seconds a peer has to begin its answer (it may read through first)
FLOOR_RATE = 10e6  # bytes a second: the slowest a peer's body may arrive
CONNECT_TIMEOUT = 0.5
_PIECE = 256 << 10  # bytes read at a time, each read bounded by what is left of the deadline
_SMALL = 64 << 10  # the most an answer without a blob (a 404, an error) may hold


class PeerFailed(OSError):
    """A peer did not give a whole, well-formed answer in time (the message says how)."""


def deadline(started: float, size: int, first_byte: float = FIRST_BYTE,
             floor_rate: float = FLOOR_RATE) -> float:
    """When an answer of ``size`` bytes, asked for at ``started``, must be complete."""
    return started + first_byte + size / floor_rate


@dataclass
class Sent:
    """A request on its way: answered by ``PeerClient.receive``."""

    peer: str
    id: str
    conn: http.client.HTTPConnection
    started: float
    fresh: bool  # on a new connection (a reused one may have been closed by the peer)
    due: float  # when the head must have come; a resume's: when the whole answer must
    start: int = 0  # the first byte asked for (a resume)
    cached_only: bool = False
    sock: socket.socket | None = None  # kept: an answer that will close drops conn.sock

    def fileno(self) -> int:
        return self.sock.fileno()


class PeerClient:
    """Blob requests to peers. ``clock`` is the deadline's (tests may move it); the sockets'
    own timeouts are set from what is left of it."""

    def __init__(self, token: str, *, connect_timeout: float = CONNECT_TIMEOUT,
                 first_byte: float = FIRST_BYTE, floor_rate: float = FLOOR_RATE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._auth = f"Bearer {token}"
        self.connect_timeout, self.first_byte, self.floor_rate = (connect_timeout, first_byte,
                                                                   floor_rate)
        self._clock = clock
        self._local = threading.local()

    def get(self, peer: str, id: str, cached_only: bool = False) -> bytes | None:
        """The stored bytes ``peer`` holds for ``id``, or None for a 404."""
        return self.receive(self.send(peer, id, cached_only=cached_only))

    def send(self, peer: str, id: str, *, start: int = 0, cached_only: bool = False,
             started: float | None = None, due: float | None = None) -> Sent:
        """The request, sent on this thread's connection to ``peer``; ``started`` and
        ``due`` carry an earlier request's deadline over to one that continues it."""
        headers = {"Authorization": self._auth, "Accept-Encoding": "identity"}
        if start:
            headers["Range"] = f"bytes={start}-"
        if cached_only:
            headers[CACHED_ONLY] = "1"
        started = self._clock() if started is None else started
        conn = self._connection(peer)
        fresh = conn.sock is None
        try:
            if fresh:
                conn.connect()
            conn.request("GET", API + id, headers=headers)
        except (OSError, http.client.HTTPException) as exc:
            self.drop(peer)
            raise PeerFailed(f"cannot send the request: {_reason(exc)}") from None
        due = deadline(started, 0, self.first_byte, self.floor_rate) if due is None else due
        return Sent(peer, id, conn, started, fresh, due, start, cached_only, conn.sock)

    def receive(self, sent: Sent) -> bytes | None:
        """The answer to ``sent``, whole, by its deadline; a cut body resumed once."""
        try:
            return self._answer(sent)
        except _Cut as cut:
            if sent.start:
                raise PeerFailed(f"the answer was cut off again, {len(cut.partial)} bytes "
                                 "into the resumed part") from None
            rest = self.receive(self.send(  # within the first request's deadline
                sent.peer, sent.id, start=len(cut.partial), cached_only=sent.cached_only,
                started=sent.started, due=cut.due))
            if rest is None:
                raise PeerFailed("the blob went away while it was resumed") from None
            return cut.partial + rest

    def _answer(self, sent: Sent) -> bytes | None:
        conn, peer = sent.conn, sent.peer
        try:
            self._limit(sent, sent.due)
            resp = conn.getresponse()
            body = self._body(sent, resp)
            if resp.will_close:
                self.drop(peer)
        except _Cut:
            self.drop(peer)
            raise
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
            self.drop(peer)
            if not sent.fresh:  # the peer closed an idle connection as this request went
                return self.receive(self.send(peer, sent.id, start=sent.start,
                                              cached_only=sent.cached_only,
                                              started=sent.started, due=sent.due))
            raise PeerFailed(_reason(exc)) from None
        except TimeoutError:
            self.drop(peer)
            raise PeerFailed(self._late(sent)) from None
        except (OSError, http.client.HTTPException) as exc:
            self.drop(peer)
            raise PeerFailed(_reason(exc)) from None
        if resp.status == 404:
            return None
        if resp.status == (206 if sent.start else 200):
            return body
        raise PeerFailed(f"HTTP {resp.status}")

    def _body(self, sent: Sent, resp: http.client.HTTPResponse) -> bytes:
        """The body, read piece by piece, each read bounded by what is left of the deadline
        (computed from the body's length, once the head has come)."""
        length = resp.length
        blob = resp.status in (200, 206)
        if length is None:
            if blob:
                raise PeerFailed("an answer without a Content-Length")
            length = 0  # chunked or to the close: not read; the connection is dropped
            resp.will_close = True
        if length > (MAX_BLOB_SIZE + (1 << 20) if blob else _SMALL):
            raise PeerFailed(f"an answer of {length} bytes, larger than any blob")
        due = sent.due if sent.start else deadline(sent.started, length, self.first_byte,
                                                   self.floor_rate)
        pieces, got = [], 0
        while got < length:
            self._limit(sent, due)
            try:  # one recv a piece: a buffered read would wait for a whole buffer
                piece = resp.read1(min(_PIECE, length - got))
            except http.client.IncompleteRead:
                piece = b""
            if not piece:
                raise _Cut(b"".join(pieces), due)
            pieces.append(piece)
            got += len(piece)
        resp.read()  # 0 bytes: marks the answer complete (read1 does not), so the
        # connection can carry the next request
        return b"".join(pieces)

    def _limit(self, sent: Sent, due: float) -> None:
        """The socket's timeout: what is left until ``due``; TimeoutError if nothing is."""
        left = due - self._clock()
        if left <= 0:
            raise TimeoutError
        sent.sock.settimeout(left)

    def _late(self, sent: Sent) -> str:
        return (f"no whole answer within its deadline ({self.first_byte:g}s to begin, then "
                f"{self.floor_rate / 1e6:g} MB/s)")

    def _connection(self, peer: str) -> http.client.HTTPConnection:
        conns = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(peer)
        if conn is not None and conn.sock is not None and readable([conn.sock], 0):
            conn.close()  # an idle connection the peer has closed (its keep-alive ran out)
        if conn is None:
            parts = urlsplit(peer)
            cls = http.client.HTTPSConnection if parts.scheme == "https" else \
                http.client.HTTPConnection
            conn = conns[peer] = cls(parts.hostname, parts.port, timeout=self.connect_timeout)
        return conn

    def drop(self, peer: str) -> None:
        """Close this thread's connection to ``peer`` (a request on it was abandoned)."""
        conn = self._local.__dict__.get("conns", {}).pop(peer, None)
        if conn is not None:
            conn.close()


class _Cut(Exception):
    """The body ended early (the peer closed the connection midway)."""

    def __init__(self, partial: bytes, due: float) -> None:
        self.partial, self.due = partial, due


def _reason(exc: BaseException) -> str:
    """An exception as a short line for the log: escaped (a garbage status line is what
    the peer sent, control bytes and all) and cut."""
    text = repr(str(exc) or type(exc).__name__)[1:-1]
    return text if len(text) <= 120 else text[:117] + "..."


def readable(socks: list, timeout: float) -> list[int]:
    """The file descriptors among ``socks`` (sockets, or anything with ``fileno``) with
    something to read within ``timeout`` seconds (``poll``: no limit on descriptor numbers,
    as ``select`` has)."""
    poller = select.poll()
    for sock in socks:
        poller.register(sock, select.POLLIN)
    return [fd for fd, _ in poller.poll(max(0.0, timeout) * 1000)]
