"""A remote-like store for tests and benchmarks: a TCP proxy in front of an HTTP server
(SeaweedFS) that waits ``delay`` seconds before forwarding each request, paces each
response at ``rate`` bytes a second per connection, and counts requests.

This machine's kernel has no ``netem``, and SeaweedFS on loopback answers in a fraction of
a millisecond, where real S3 answers its first byte after 10-30 ms and gives a connection
~100 MB/s: on loopback concurrency looks useless, against latency it is everything.

HTTP/1.1 aware only as far as it must be: it reads each request's head on a client
connection to count it and delay it, forwards its body by ``Content-Length`` (or as it
comes, for chunked bodies), and copies responses back as they come, paced. One thread per
direction per connection; ``sleep`` and ``clock`` are injectable, so a test can check the
delays and the pacing without timing anything.

Pacing keeps a due time per connection: each piece is sent once ``len / rate`` has passed
since the previous piece was due, or since it arrived when the upstream had nothing ready,
and an answer's first piece not before its request went upstream (an idle connection banks
no credit). So a sleep that overshoots is made up by the next pieces, not added to them:
sleeping ``len / rate`` before each 16 KiB piece paced a connection at ~54 MB/s on this
machine, where the proxy claims 100.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable

_HEAD_LIMIT = 64 << 10
_PIECE = 64 << 10


class RemoteLikeProxy:
    def __init__(self, upstream: tuple[str, int], *, delay: float = 0.020,
                 rate: float = 100e6, host: str = "127.0.0.1",
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.upstream, self.delay, self.rate, self._sleep = upstream, delay, rate, sleep
        self._clock = clock
        self._listener = socket.create_server((host, 0))
        self.address = self._listener.getsockname()
        self.requests: list[tuple[str, str]] = []  # (method, path), in order of arrival
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True, name="proxy")

    @property
    def endpoint(self) -> str:
        return f"http://{self.address[0]}:{self.address[1]}"

    def start(self) -> RemoteLikeProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                _close(s)

    def __enter__(self) -> RemoteLikeProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def count(self, method: str | None = None, contains: str = "") -> int:
        with self._lock:
            return sum(1 for m, p in self.requests
                       if (method is None or m == method) and contains in p)

    def methods(self) -> Counter:
        with self._lock:
            return Counter(m for m, _ in self.requests)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- plumbing ----------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                _close(client)
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, server]
            asked = [0.0]  # when this connection's latest request went upstream
            threading.Thread(target=self._requests, args=(client, server, asked),
                             daemon=True).start()
            threading.Thread(target=self._responses, args=(server, client, asked),
                             daemon=True).start()

    def _requests(self, client: socket.socket, server: socket.socket, asked: list[float]
                  ) -> None:
        """Client to server: each request's head is counted and delayed, then forwarded
        with its body."""
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = client.recv(_PIECE)
                    if not data or len(buf) > _HEAD_LIMIT:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                method, path, length, chunked = _parse_head(head)
                with self._lock:
                    self.requests.append((method, path))
                if self.delay:
                    self._sleep(self.delay)
                asked[0] = self._clock()
                server.sendall(head + b"\r\n\r\n")
                if chunked:  # forward the rest as it comes; one request on this connection
                    server.sendall(buf)
                    while data := client.recv(_PIECE):
                        server.sendall(data)
                    return
                body, buf = buf[:length], buf[length:]
                server.sendall(body)
                left = length - len(body)
                while left > 0:
                    data = client.recv(min(_PIECE, left))
                    if not data:
                        return
                    server.sendall(data)
                    left -= len(data)
        except OSError:
            return
        finally:
            _shutdown(server)

    def _responses(self, server: socket.socket, client: socket.socket, asked: list[float]
                   ) -> None:
        """Server to client, paced at ``rate`` bytes a second on this connection."""
        due: float | None = None
        ready = select.poll()
        ready.register(server, select.POLLIN)
        try:
            while True:
                idle = not ready.poll(0)  # nothing to send: the schedule starts anew
                if not (data := server.recv(_PIECE)):
                    break
                if self.rate:  # before the send: a piece arrives once its time has passed
                    now = self._clock()
                    # An answer starts no sooner than its request went (or, idle, than now).
                    start = now if due is None else max(due, now if idle else asked[0])
                    due = start + len(data) / self.rate
                    if due > now:
                        self._sleep(due - now)
                client.sendall(data)
        except OSError:
            return
        finally:
            _shutdown(client)


def _parse_head(head: bytes) -> tuple[str, str, int, bool]:
    lines = head.decode("latin-1").split("\r\n")
    method, path = (lines[0].split(" ") + ["", ""])[:2]
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip() or 0)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    return method, path, length, chunked


def _shutdown(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _close(s: socket.socket) -> None:
    try:
        s.close()
    except OSError:
        pass
