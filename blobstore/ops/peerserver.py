"""``thaw serve``: the peer blob API, over the node's disk cache.

``GET`` and ``HEAD /v1/blobs/{id}`` answer a blob's stored bytes (as the store holds them,
so the client verifies them again), with ``ETag`` (the id), ``Content-Length`` and a single
``Range`` honoured (206; 416 past the end; 400 when malformed). A request with
``X-Thaw-Cached-Only`` (a client's hedge) is answered from the disk cache alone, 404 on a
miss, so it never causes a store read. What is served was read
through the node's tiers, so it was verified on its way out of the cache (a corrupt entry
is dropped and fetched again, never served); a miss is read through from the store and
kept in the cache, and concurrent misses of one chunk, in this process and in the node's
mount, cause one store read (the disk cache's per-chunk fill lock). ``/healthz`` and
``/metrics`` (Prometheus) need no token and say nothing of blob contents; everything else
needs ``Authorization: Bearer TOKEN``, compared in constant time (401). An id that is not 64
lowercase hex is 400 before anything touches the disk: no path is ever built from a
request. Bounded: ``in_flight`` blob requests at a time (memory: that many times the
largest blob, plus ``memory_bytes`` of recently served blobs, ``lru.py``, so a chunk
many peers ask for is read and verified once), header size and count, a header that
takes longer than ``header_timeout`` closes the connection (slow-loris), idle keep-alive
connections close after ``keepalive``. SIGTERM and SIGINT stop it gracefully.

asyncio (aiohttp), in its own process, never in trio; blocking tier calls run in a thread
pool of ``in_flight`` threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import logging
import re
import signal
import time

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

from ..errors import BlobCorrupt, BlobNotFound, StoreUnavailable, ThawError
from ..store.lru import BytesLRU
from ..store.peerclient import API, CACHED_ONLY
from ..store.tiers import NodeTiers

log = logging.getLogger(__name__)
_ID_RE = re.compile(r"[0-9a-f]{64}")
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")
MAX_HEADER = 8 << 10  # bytes in the request line, and in each header
MAX_HEADERS = 64
MEMORY = 256 << 20  # bytes of recently served blobs kept in memory (``lru.py``)


class SlowClientGuard(asyncio.Protocol):
    """Wraps aiohttp's protocol: a request head that is not complete within ``timeout``
    seconds of the connection (the first request's) or of its first byte (a later one's)
    closes the connection."""

    def __init__(self, inner: asyncio.Protocol, timeout: float) -> None:
        self.inner, self.timeout = inner, timeout
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport) -> None:
        self._transport = transport
        self._arm()  # a connection that sends nothing at all is a slow client too
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        seen = self._tail + data
        if b"\r\n\r\n" in seen:
            if self._timer:
                self._timer.cancel()
                self._timer = None
            rest = seen.rpartition(b"\r\n\r\n")[2]
            if rest:
                self._arm()
        elif self._timer is None:
            self._arm()
        self._tail = seen[-3:]
        self.inner.data_received(data)

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.timeout, self._expire)

    def _expire(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc) -> None:
        if self._timer:
            self._timer.cancel()
        self.inner.connection_lost(exc)

    def eof_received(self):
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class MalformedRequests(logging.Filter):
    """Stands between aiohttp's server logger and the log: a malformed request head (which
    any client, without a token, can send) is not an ERROR with a traceback that quotes its
    bytes (an oversized header's first bytes may be an Authorization value), but one
    warning that quotes nothing the client sent, then at most one line a minute counting
    the rest. Each is counted in ``count`` (the metric)."""

    def __init__(self, every: float = 60.0, clock=time.monotonic) -> None:
        super().__init__()
        self.every, self._clock = every, clock
        self.count = 0
        self._said_at: float | None = None
        self._unsaid = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not (str(record.msg).startswith("Error handling request")
                and isinstance(exc, HttpProcessingError)):
            return True
        self.count += 1
        self._unsaid += 1
        now = self._clock()
        if self._said_at is None or now - self._said_at >= self.every:
            log.warning("%s (%s) answered 400; not logged: the bytes a client sent",
                        "a malformed request" if self._unsaid == 1 else
                        f"{self._unsaid} malformed requests in the last minute",
                        type(exc).__name__)
            self._said_at, self._unsaid = now, 0
        return False


class _TierCollector:
    """Memory and disk cache hits and read-throughs, from their own counters."""

    def __init__(self, tiers: NodeTiers, recent: BytesLRU,
                 malformed: MalformedRequests | None = None) -> None:
        self.tiers, self.recent, self.malformed = tiers, recent, malformed

    def collect(self):
        yield CounterMetricFamily("thaw_serve_memory_hits", "Blobs served from memory",
                                  value=self.recent.hits)
        if self.malformed is not None:
            yield CounterMetricFamily("thaw_serve_malformed_requests",
                                      "Request heads that did not parse (answered 400)",
                                      value=self.malformed.count)
        for name, tier in (("hits", self.tiers.disk), ("read_throughs", self.tiers.store)):
            if tier is not None:
                snap = tier.stats.snapshot().as_dict()
                yield CounterMetricFamily(f"thaw_serve_{name}", f"Blobs served by {name}",
                                          value=snap["chunks"])


class PeerServer:
    def __init__(self, tiers: NodeTiers, token: str, *, in_flight: int = 64,
                 header_timeout: float = 10.0, keepalive: float = 30.0,
                 memory_bytes: int = MEMORY) -> None:
        self.tiers, self._token = tiers, f"Bearer {token}".encode()
        self.recent = BytesLRU(memory_bytes)
        self.in_flight, self.header_timeout, self.keepalive = in_flight, header_timeout, keepalive
        self._slots = asyncio.Semaphore(in_flight)
        self._pool = concurrent.futures.ThreadPoolExecutor(in_flight, "thaw-serve")
        self.registry = CollectorRegistry()
        self.requests = Counter("thaw_serve_requests", "Blob requests by status",
                                ["status"], registry=self.registry)
        self.sent = Counter("thaw_serve_sent_bytes", "Blob bytes sent", registry=self.registry)
        self.latency = Histogram("thaw_serve_latency_seconds", "Blob request latency",
                                 registry=self.registry)
        self.corrupt = Counter("thaw_serve_corrupt_blobs", "Blobs the store holds corrupt "
                               "(answered 502)", registry=self.registry)
        self.malformed = MalformedRequests()
        self.registry.register(_TierCollector(tiers, self.recent, self.malformed))

    def app(self) -> web.Application:
        app = web.Application(client_max_size=0)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get(API + "{id}", self._blob)  # HEAD too
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            content_type="text/plain", charset="utf-8")

    def _authorised(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").encode("latin-1", "replace")
        return hmac.compare_digest(given, self._token)

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        resp = await self._answer(request)
        self.requests.labels(str(resp.status)).inc()
        self.latency.observe(time.monotonic() - started)
        return resp

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return web.Response(status=401, text="a bearer token is required\n",
                                headers={"WWW-Authenticate": "Bearer"})
        id = request.match_info["id"]
        if not _ID_RE.fullmatch(id):
            return web.Response(status=400, text="a blob id is 64 lowercase hex digits\n")
        async with self._slots:
            try:
                stored = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._stored, id, CACHED_ONLY in request.headers)
            except BlobNotFound:
                return web.Response(status=404, text="no such blob\n")
            except BlobCorrupt as exc:
                self.corrupt.inc()
                log.warning("blob %s: %s", id, exc)
                return web.Response(status=502, text="the store holds a corrupt copy of it; "
                                    "`thaw check` finds such blobs\n")
            except StoreUnavailable as exc:
                log.warning("blob %s: %s", id, exc)
                return web.Response(status=503, text="the store cannot serve it now\n")
            except ThawError as exc:
                log.warning("blob %s: %s", id, exc)
                return web.Response(status=500, text="cannot serve it\n")
        headers = {"ETag": f'"{id}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        spec = request.headers.get("Range")
        if spec is None:
            self.sent.inc(len(stored))
            return web.Response(body=stored, headers=headers)
        span = parse_range(spec, len(stored))
        if span is None:
            return web.Response(status=400, text="a Range is bytes=FIRST-LAST, one range\n")
        if span == ():
            return web.Response(status=416, headers={"Content-Range": f"bytes */{len(stored)}"})
        first, last = span
        headers["Content-Range"] = f"bytes {first}-{last}/{len(stored)}"
        self.sent.inc(last + 1 - first)
        return web.Response(status=206, body=stored[first:last + 1], headers=headers)

    def _stored(self, id: str, cached_only: bool = False) -> bytes:
        """Verified stored bytes: from memory (``recent``), else read through the node's
        tiers, or (a hedged request) from its disk cache only, BlobNotFound on a miss."""
        stored = self.recent.get(id)
        if stored is not None:
            return stored
        tier = self.tiers.disk if cached_only else self.tiers.stack
        if tier is None:
            raise BlobNotFound(f"blob {id}: no disk cache here")
        stored = tier.fetch(id).stored
        self.recent.put(id, stored)
        return stored

    async def run(self, host: str, port: int, on_ready=lambda: None) -> None:
        # The request handler's own keyword arguments: aiohttp takes ``handler_args`` only
        # from an Application, and a runner given unknown ones drops them all with a
        # warning per connection (the limits were not applied, and the log filled).
        logging.getLogger("aiohttp.server").addFilter(self.malformed)
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                               max_line_size=MAX_HEADER, max_field_size=MAX_HEADER,
                               max_headers=MAX_HEADERS, keepalive_timeout=self.keepalive)
        await runner.setup()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SlowClientGuard(runner.server(), self.header_timeout), host, port,
            reuse_address=True)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        on_ready()
        try:
            await stop.wait()
        finally:
            server.close()
            await runner.shutdown()
            await runner.cleanup()
            self._pool.shutdown(wait=False, cancel_futures=True)
            logging.getLogger("aiohttp.server").removeFilter(self.malformed)


def parse_range(spec: str, size: int) -> tuple[int, int] | tuple[()] | None:
    """``bytes=A-B``, ``bytes=A-`` or ``bytes=-N`` as (first, last) within ``size``;
    () when it lies past the end; None when malformed (or several ranges)."""
    m = _RANGE_RE.fullmatch(spec.strip())
    if not m or (not m.group(1) and not m.group(2)) or len(spec) > 64:
        return None
    a, b = m.groups()
    if not a:  # the last N bytes
        n = int(b)
        return (max(0, size - n), size - 1) if n and size else ()
    first = int(a)
    last = min(int(b), size - 1) if b else size - 1
    if b and int(b) < first:
        return None
    if first >= size:
        return ()
    return first, last
