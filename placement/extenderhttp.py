"""The HTTP face of the kube-scheduler extender (v1), over ``extender.Extender``:
``POST /filter``, ``POST /prioritize``, ``GET /healthz``; the ``thaw extender`` command
that serves it is ``cli.py``'s.

``http.server``, a thread per request, bodies bounded, a client that stops sending dropped
after 30 s. Every answer is well-formed JSON: a body that is not strict JSON (``NaN``,
nesting past the parser's depth) or not ``ExtenderArgs`` in shape
(``placement.extenderargs``) is a 400 whose ``Error`` says what is wrong in one line; what
goes wrong inside (a store that is down) is logged and answered so that the pod schedules
as if thaw were not there; a bug is a 500 with its traceback in the log, never a dropped
connection.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from .extender import MAX_BODY, Extender
from .extenderargs import BadRequest, ExtenderArgs, parse

log = logging.getLogger(__name__)


def make_handler(extender: Extender):
    from http.server import BaseHTTPRequestHandler  # only the extender pays for it

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 30  # a client that stops sending is dropped

        def _send(self, status: int, doc: object) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 - the stdlib's name
            if self.path == "/healthz":
                self._send(200, {"ok": True})
            else:
                self._send(404, {"Error": "POST /filter or /prioritize"})

        def do_POST(self):  # noqa: N802
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 < length <= MAX_BODY:
                self._send(400, {"Error": f"a JSON body of 1 to {MAX_BODY} bytes is required"})
                return
            route = {"/filter": extender.filter, "/prioritize": extender.prioritize}.get(
                self.path.rstrip("/"))
            try:
                args = read_args(self.rfile.read(length))
            except BadRequest as exc:
                self._send(400, {"Error": str(exc)})
                return
            if route is None:
                self._send(404, {"Error": "POST /filter or /prioritize"})
                return
            try:
                answer = route(args)
            except Exception:  # noqa: BLE001 - a bug: said in the log, answered, not dropped
                log.exception("%s failed", self.path)
                self._send(500, {"Error": "thaw's extender failed (a bug; its log says why)"})
                return
            self._send(200, answer)

        def log_message(self, fmt, *a):
            log.debug("%s " + fmt, self.address_string(), *a)

    return Handler


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def read_args(body: bytes) -> ExtenderArgs:
    """The request body as ``ExtenderArgs``; BadRequest (one line) if it is not."""
    try:
        doc = json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        raise BadRequest("ExtenderArgs is nested too deeply") from None
    except ValueError as exc:  # UnicodeDecodeError too
        raise BadRequest(f"ExtenderArgs is not valid JSON: {str(exc)[:200]}") from None
    return parse(doc)


def serve(extender: Extender, host: str, port: int, on_ready=lambda: None) -> None:
    from http.server import ThreadingHTTPServer

    server = ThreadingHTTPServer((host, port), make_handler(extender))
    server.daemon_threads = True
    on_ready()
    try:
        server.serve_forever()
    finally:
        server.server_close()


def keep_planning(extender: Extender, every: float) -> threading.Thread:
    """A daemon thread that replans every ``every`` seconds; a failure is logged and the
    last plan goes stale (the pods are then scored on their own)."""
    def run() -> None:
        while True:
            time.sleep(every)
            try:
                extender.replan(time_limit=min(2.0, every / 2))
            except Exception:  # noqa: BLE001 - never let planning stop the extender
                log.exception("joint plan failed; scoring pods on their own")

    thread = threading.Thread(target=run, daemon=True, name="thaw-replan")
    thread.start()
    return thread
