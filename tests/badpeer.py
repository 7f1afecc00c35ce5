"""A cache peer that misbehaves on purpose, over real HTTP on a loopback address: it cuts
every answer off halfway (a resume too), drips it a byte at a time, answers garbage, or
accepts a request and never answers. For the peer client's tests and bench/peers.py."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable

MODES = ("cut", "slow", "garbage", "hang")


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        srv: BadPeer = self.server  # type: ignore[assignment]
        sock: socket.socket = self.request
        while True:
            head = _read_head(sock)
            if head is None:
                return
            srv.requests.append(head)
            if not srv.answer(sock, head):
                return


def _read_head(sock: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            piece = sock.recv(65536)
        except OSError:
            return None
        if not piece:
            return None
        data += piece
    return data


class BadPeer(socketserver.ThreadingTCPServer):
    """Serves ``stored(id)`` (a blob's stored bytes) the way ``mode`` says.
    ``drip`` is the seconds between bytes of a slow answer; ``on_byte`` is called before
    each (a test's fake clock)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, mode: str, stored: Callable[[str], bytes], *,
                 drip: float = 1.0, on_byte: Callable[[], None] = lambda: None) -> None:
        assert mode in MODES
        super().__init__((host, 0), _Handler)
        self.mode, self.stored, self.drip, self.on_byte = mode, stored, drip, on_byte
        self.requests: list[bytes] = []
        self.stop = threading.Event()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def answer(self, sock: socket.socket, head: bytes) -> bool:
        """Answer one request; False when the connection is to be dropped."""
        if self.mode == "hang":
            self.stop.wait()
            return False
        if self.mode == "garbage":
            sock.sendall(b"\x00\xffTHIS IS NOT HTTP\r\n\r\n" * 3)
            return False
        path = head.split(b" ", 2)[1].decode()
        start = range_start(head)
        body = self.stored(path.rsplit("/", 1)[-1])[start:]
        status = "206 Partial Content" if start else "200 OK"
        sock.sendall(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        if self.mode == "cut":
            sock.sendall(body[:len(body) // 2])
            sock.shutdown(socket.SHUT_RDWR)
            return False
        for i in range(len(body)):  # slow
            if self.stop.wait(self.drip):
                return False
            self.on_byte()
            try:
                sock.sendall(body[i:i + 1])
            except OSError:
                return False
        return True

    def close(self) -> None:
        self.stop.set()
        self.shutdown()
        self.server_close()


def range_start(head: bytes) -> int:
    """The first byte a request's ``Range: bytes=N-`` asks for (0 without one)."""
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"range: bytes="):
            return int(line.split(b"=", 1)[1].split(b"-")[0])
    return 0
