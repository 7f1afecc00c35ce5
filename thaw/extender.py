"""``thaw extender``: the command and its HTTP face (kube-scheduler extender v1), over
``placement.extender.Extender``: ``POST /filter``, ``POST /prioritize``, ``GET /healthz``.

``http.server``, a thread per request, bodies bounded, a client that stops sending dropped
after 30 s. Every answer is well-formed JSON: a body that does not parse is a 400 with the
protocol's ``Error`` field; what goes wrong inside (a store that is down) is logged and
answered so that the pod schedules as if thaw were not there.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from blobstore.errors import UsageError
from placement.extender import MAX_BODY, Extender
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
            try:
                args = json.loads(self.rfile.read(length))
                if not isinstance(args, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                self._send(400, {"Error": f"ExtenderArgs is not valid JSON: {exc}"})
                return
            if self.path.rstrip("/") == "/filter":
                self._send(200, extender.filter(args))
            elif self.path.rstrip("/") == "/prioritize":
                self._send(200, extender.prioritize(args))
            else:
                self._send(404, {"Error": "POST /filter or /prioritize"})

        def log_message(self, fmt, *a):
            log.debug("%s " + fmt, self.address_string(), *a)

    return Handler


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
    p.add_argument("--ttl", type=float, default=DEFAULT_TTL,
                   help=f"ignore reports older than this many seconds (default {DEFAULT_TTL:g})")
    p.add_argument("--replan", type=float, default=5.0, metavar="SECONDS",
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

    if args.replan < 0:
        raise UsageError("--replan must be 0 (off) or a number of seconds")
    extender = Extender(reports, resolve, replan=args.replan)
    if args.replan > 0:
        keep_planning(extender, args.replan)
    try:
        serve(extender, host, port, on_ready=lambda:
              console.note(f"scheduler extender on http://{args.listen} (store {objects})"))
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.listen}: {exc.strerror}") from None
    return 0
