"""``thaw extender``: the command and its HTTP face (kube-scheduler extender v1), over
``placement.extender.Extender``: ``POST /filter``, ``POST /prioritize``, ``GET /healthz``.

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

from blobstore.errors import UsageError
from blobstore.units import seconds
from placement.extender import MAX_BODY, Extender
from placement.extenderargs import BadRequest, ExtenderArgs, parse
from placement.reports import DEFAULT_TTL

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


def register(sub, common) -> None:
    p = sub.add_parser("extender", parents=[common],
                       help="a Kubernetes scheduler extender favouring cache-hot nodes",
                       description="Serve /filter and /prioritize (kube-scheduler extender "
                                   "v1) from the store's node reports; pods name their image "
                                   "with the annotation thaw.dev/image.")
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="where to listen")
    p.add_argument("--ttl", type=seconds(), default=DEFAULT_TTL,
                   help=f"ignore reports older than this many seconds (default {DEFAULT_TTL:g})")
    p.add_argument("--replan", type=seconds(positive=False), default=5.0, metavar="SECONDS",
                   help="place the GPU pods asked about lately jointly, this often (default "
                        "5; 0: score each pod on its own)")
    p.set_defaults(func=cmd_extender)


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


def cmd_extender(args, console) -> int:
    from blobstore.images import open_image
    from blobstore.nodereport import read_reports
    from blobstore.units import parse_listen
    from blobstore.url import open_store
    from placement.reports import fresh_nodes

    host, port = parse_listen(args.listen, "0.0.0.0:8741")
    objects = open_store(args.store, timeout=args.store_timeout)

    def reports():
        nodes, skipped = fresh_nodes(read_reports(objects), ttl=args.ttl)
        return {n.id: n for n in nodes}

    def resolve(ref: str) -> tuple[str, int]:
        mid, manifest = open_image(objects, ref)
        return mid, sum({c.id: c.size for c in manifest.chunks}.values())

    extender = Extender(reports, resolve, replan=args.replan)
    extender.nodes()  # the first snapshot, read before the scheduler may ask
    if args.replan > 0:
        keep_planning(extender, args.replan)
    try:
        serve(extender, host, port, on_ready=lambda:
              console.note(f"scheduler extender on http://{args.listen} (store {objects})"))
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.listen}: {exc.strerror}") from None
    return 0
