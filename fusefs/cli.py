"""Subcommands of the FUSE side: ``mount``, ``umount``, ``daemon``, ``stats``."""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TypeVar

from blobstore.errors import UsageError
from blobstore.image.hints import START, hints_key
from blobstore.image.images import open_image_dirs
from blobstore.ops.nodereport import parse_gpus
from blobstore.store.url import open_store
from blobstore.units import parse_size, seconds

from .errors import MountError
from .mountpoint import is_mounted, probe
from .stats import MountStats

# trio, pyfuse3 and the rest of fusefs are imported by the commands that use them, so the
# other commands of thaw start without them.
T = TypeVar("T")
STATS_TIMEOUT = 10.0  # seconds a mount that answered statfs has to give its statistics
ANSWER_MARGIN = 5.0  # seconds past --store-timeout a daemon has to answer `thaw warm`

def default_cache_dir() -> str:
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(cache_home) / "thaw" / "chunks")


def _cache_args(p) -> None:
    p.add_argument("--cache-dir", default=None, help="the node's disk cache (default: "
                   "$XDG_CACHE_HOME/thaw/chunks), shared by every mount")
    p.add_argument("--cache-size", default="10G", help="bound of the disk cache (default 10G)")
    p.add_argument("--memory", default="256M", help="bound of the memory cache (default 256M)")
    p.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics there")
    p.add_argument("--hints", default=START, metavar="WORKLOAD",
                   help="prefetch what WORKLOAD read when it last started from an image, "
                        f"and record this start (default {START!r})")
    p.add_argument("--no-hints", dest="hints", action="store_const", const=None,
                   help="neither prefetch nor record")
    p.add_argument("--hints-window", type=seconds(), default=60.0, metavar="SECONDS",
                   help="how long after an image is first read reads count as its start "
                        "(default 60)")
    p.add_argument("--prefetch", choices=("hints", "all", "none"), default="hints",
                   help="what is fetched ahead of reads: hints (default: the hinted chunks "
                        "and read-ahead along the image), all (also the rest of the image, "
                        "into the disk cache, up to --prefetch-budget), none (nothing, hints "
                        "neither; they are still recorded)")
    p.add_argument("--prefetch-budget", metavar="SIZE", default=None,
                   help="bytes --prefetch all may fetch per image (default: a quarter of "
                        "--cache-size; never more than the disk cache has free)")
    p.add_argument("--peers", metavar="URL,URL|@FILE|store",
                   help="cache peers (`thaw serve` on each node) to fetch chunks from before "
                        "the store: a list, a file of URLs (re-read when it changes), or "
                        "'store' (the peer_url of the store's fresh node reports)")
    p.add_argument("--self", dest="self_url", metavar="URL",
                   help="this node's own peer URL (it reads the chunks it owns from the "
                        "store; the daemon reports it as its peer_url)")
    p.add_argument("--peer-token-file", metavar="FILE",
                   help="the bearer token the peers want (with --peers)")
    p.add_argument("--passthrough", choices=("auto", "off"), default="auto",
                   help="auto (default): files whose bytes are all on the node are made into "
                        "plain files in the cache and opened with FUSE passthrough, so the "
                        "kernel reads and maps them without the daemon (kernel 6.9+, root); "
                        "off: every read goes through the daemon")
    p.add_argument("--background", action="store_true",
                   help="return once the mount answers; the daemon goes on in the background")


def register(sub, common) -> None:
    p = sub.add_parser("mount", parents=[common], help="mount one image read-only, lazily",
                       description="Mount REF at DIR; chunks are fetched when read.")
    p.add_argument("ref", metavar="REF", help="NAME:TAG or a manifest id")
    p.add_argument("mountpoint", metavar="DIR", help="an empty directory")
    _cache_args(p)
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("daemon", parents=[common], help="serve every image of the store",
                       description="Mount the store at DIR: DIR/<manifest id>/ appears on "
                                   "first lookup, DIR/refs/NAME/TAG links to it.")
    p.add_argument("--mountpoint", required=True, metavar="DIR", help="an empty directory")
    p.add_argument("--node-id", help="name in node reports (default: the host name)")
    p.add_argument("--gpus", metavar="COUNTxMODEL:MEM", help="GPUs to report where NVML is "
                   "missing, e.g. 8xH200:141G (default: ask NVML)")
    p.add_argument("--report-interval", type=seconds(), default=5.0,
                   help="seconds between node reports (default 5)")
    _cache_args(p)
    p.set_defaults(func=cmd_daemon)

    p = sub.add_parser("warm", parents=[common], help="start a daemon's prefetch of an image",
                       description="Ask the thaw daemon at DIR to look REF up and prefetch "
                                   "what WORKLOAD read from it last time, without reading "
                                   "anything; returns at once. With --hints restore, what a "
                                   "restore of a snapshot read goes into the node's disk "
                                   "cache, for a restore on this node that follows.")
    p.add_argument("ref", metavar="REF", help="NAME:TAG or a manifest id")
    p.add_argument("--mountpoint", required=True, metavar="DIR",
                   help="where `thaw daemon` serves the store")
    p.add_argument("--hints", default=START, metavar="WORKLOAD",
                   help=f"whose hints to prefetch (default {START!r})")
    p.set_defaults(func=cmd_warm)

    p = sub.add_parser("umount", parents=[common], help="unmount a thaw mount")
    p.add_argument("mountpoint", metavar="DIR")
    p.set_defaults(func=cmd_umount)

    p = sub.add_parser("stats", parents=[common], help="what a mount has fetched, per tier")
    p.add_argument("mountpoint", metavar="DIR")
    p.set_defaults(func=cmd_stats)


def _options(args):
    """The options ``mount`` and ``daemon`` share, checked."""
    from .options import MountOptions

    _check_workload(args.hints)
    budget = None if args.prefetch_budget is None else parse_size(args.prefetch_budget)
    token, self_url = "", None
    if args.peers:
        from blobstore.store.peers import Membership, read_token

        token = read_token(args.peer_token_file, "--peer-token-file")
        if args.peers != "store":
            Membership.parse(args.peers)  # a bad URL or file is one line now, not at a read
    if args.self_url:
        from blobstore.store.peers import normalise_url

        self_url = normalise_url(args.self_url)
    return MountOptions(args.cache_dir or default_cache_dir(), parse_size(args.cache_size),
                        parse_size(args.memory), args.metrics, args.hints, args.hints_window,
                        args.store_timeout, args.prefetch, budget, args.peers, self_url, token,
                        args.passthrough)


def _check_workload(workload: str | None) -> None:
    if workload is not None:
        try:
            hints_key("0" * 64, workload)
        except ValueError:
            raise UsageError(f"--hints {workload!r}: a workload name is letters, digits, "
                             "'.', '_' and '-', up to 64") from None


def _run(args, console, serve_fn) -> int:
    if args.background:
        from .background import serve_in_background

        pid, log_path = serve_in_background(serve_fn)
        console.note(f"mounted at {args.mountpoint} (pid {pid}, log {log_path})")
        _exit_now()
    serve_fn(lambda: None)
    return 0


def _exit_now() -> None:
    """The parent of a background mount is done: exit without the interpreter's clean-up of
    every module it loaded (50 ms, a tenth of a cold `thaw mount`); it holds nothing that
    needs closing, and what it printed is flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class _Loading:
    """Import ``fusefs.service`` (pyfuse3 and trio: a third of a cold `thaw mount`) in a
    thread, while the caller reads the manifest, whose round trips leave the interpreter
    idle. The caller imports nothing meanwhile that the thread might be importing too, and
    joins it (``module``, or ``wait`` on an error path) before any fork."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._load, name="thaw-import", daemon=True)
        self.thread.start()

    def _load(self) -> None:
        try:
            importlib.import_module(self.name)
        except BaseException as exc:  # noqa: BLE001 - raised again on the caller's thread
            self.error = exc

    def wait(self) -> None:
        self.thread.join()

    def module(self) -> ModuleType:
        self.wait()
        if self.error is not None:
            raise self.error
        return importlib.import_module(self.name)


def cmd_mount(args, console) -> int:
    from .mountpoint import prepare_mountpoint

    options = _options(args)
    objects = open_store(args.store, timeout=args.store_timeout)
    prepare_mountpoint(args.mountpoint)
    service = _Loading("fusefs.service")  # until joined, this thread imports nothing new
    try:
        mid, manifest = open_image_dirs(objects, args.ref)
    finally:
        service.wait()  # an error exits with no import half done behind it
    mount = service.module().Mount
    return _run(args, console, lambda ready: mount(
        objects, args.mountpoint, options, image=(mid, manifest), on_ready=ready).run())


def cmd_daemon(args, console) -> int:
    from .mountpoint import prepare_mountpoint
    from .options import NodeOptions

    options = _options(args)
    objects = open_store(args.store, timeout=args.store_timeout)
    prepare_mountpoint(args.mountpoint)
    if args.gpus:
        given = parse_gpus(args.gpus)
        gpus = lambda: given  # noqa: E731
    else:
        from restorer.gpus import nvml_gpus as gpus  # the GPUs' one home; no torch import
    node = NodeOptions(args.node_id, gpus, args.report_interval, options.self_url)
    from .service import Mount  # nothing to overlap it with: no round trip before

    return _run(args, console, lambda ready: Mount(
        objects, args.mountpoint, options, node=node, on_ready=ready).run())


def cmd_umount(args, console) -> int:
    if not is_mounted(args.mountpoint):
        raise UsageError(f"{args.mountpoint} is not mounted")
    proc = subprocess.run(["fusermount3", "-u", args.mountpoint], capture_output=True)
    if proc.returncode != 0:
        proc = subprocess.run(["umount", args.mountpoint], capture_output=True)
    if proc.returncode != 0:
        raise MountError(f"cannot unmount {args.mountpoint}: "
                         f"{proc.stderr.decode(errors='replace').strip()}")
    return 0


def _image_path(mountpoint: str, ref: str) -> str:
    """Where the daemon at ``mountpoint`` shows ``ref``: ``<id>`` or ``refs/NAME/TAG``."""
    from blobstore.image.refs import parse_ref

    if re.fullmatch(r"[0-9a-f]{64}", ref):
        return os.path.join(mountpoint, ref)
    r = parse_ref(ref)
    return os.path.join(mountpoint, "refs", r.name, r.tag)


def cmd_warm(args, console) -> int:
    from .control import warm_name

    _check_workload(args.hints)
    stats = read_stats(args.mountpoint)  # a thaw mount, answering
    if stats.mount == "image":
        raise UsageError(f"{args.mountpoint} is a single-image `thaw mount`; `thaw warm` "
                         "needs `thaw daemon`, which serves every image of the store")
    path = _image_path(args.mountpoint, args.ref)

    def warm() -> dict:
        image_ino = os.stat(path).st_ino
        with open(os.path.join(args.mountpoint, warm_name(image_ino, args.hints)), "rb") as f:
            return json.loads(f.read())

    try:
        doc = ask_mount(args.mountpoint, warm, args.store_timeout + ANSWER_MARGIN)
    except FileNotFoundError:
        raise UsageError(f"{args.ref}: no such image in the store the daemon at "
                         f"{args.mountpoint} serves (see `thaw ls`)") from None
    except OSError as exc:
        raise MountError(f"the daemon at {args.mountpoint} could not warm {args.ref}: "
                         f"{exc.strerror} (its log says why)") from None
    if console.json_output:
        console.json(doc)
    elif not doc["prefetch"]:
        console.line(f"{args.ref}: the daemon runs with --prefetch none; nothing fetched")
    elif not doc["hinted_chunks"]:
        console.line(f"{args.ref}: no hints recorded for {args.hints!r} yet; nothing to "
                     "prefetch")
    else:
        console.line(f"{args.ref}: queued {doc['queued']} of the {doc['hinted_chunks']} "
                     f"chunks that {args.hints!r} read ({doc['hinted_bytes']} bytes stored) "
                     "for prefetch; those the node has already are not fetched again")
    return 0


def ask_mount(mountpoint: str, fn: Callable[[], T], timeout: float) -> T:
    """``fn()``, which touches the mount at ``mountpoint``, once the mount answers
    ``statfs`` (``mountpoint.probe``), within ``timeout`` seconds; MountError if it does
    not answer. A request to a stopped daemon waits in the kernel until it answers or the
    process dies, so ``fn`` runs in a daemon thread that blocks SIGTERM and SIGINT: they
    reach the main thread, which gives up at once, and the process's exit ends the thread."""
    if probe(os.path.abspath(mountpoint)) == "hung":
        raise _not_answering(mountpoint)
    result: list[tuple[bool, object]] = []

    def run() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        try:
            result.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - raised again on the caller's thread
            result.append((False, exc))

    thread = threading.Thread(target=run, daemon=True, name="thaw-ask-mount")
    thread.start()
    thread.join(timeout)
    if not result:
        raise _not_answering(mountpoint)
    ok, value = result[0]
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


def _not_answering(mountpoint: str) -> MountError:
    return MountError(f"the mount at {mountpoint} does not answer (its daemon is stopped "
                      f"or stuck); its log says why, and `umount -l {mountpoint}` clears it")


def read_stats(mountpoint: str) -> MountStats:
    from .control import STATS_NAME

    def read() -> MountStats:
        with open(os.path.join(mountpoint, STATS_NAME), "rb") as f:
            return MountStats.from_json(json.loads(f.read()))

    if not is_mounted(mountpoint):
        raise UsageError(f"{mountpoint} is not a thaw mount (nothing is mounted there)")
    try:
        return ask_mount(mountpoint, read, STATS_TIMEOUT)
    except (OSError, ValueError):
        raise UsageError(f"{mountpoint} is not a thaw mount (or it is not answering)") from None


def cmd_stats(args, console) -> int:
    s = read_stats(args.mountpoint)
    if console.json_output:
        console.json(s.as_json())
        return 0
    share = s.fetched_bytes / s.image_bytes if s.image_bytes else 0
    console.line(f"images:        {', '.join(s.images)}")
    console.line(f"image bytes:   {s.image_bytes}")
    console.line(f"fetched bytes: {s.fetched_bytes} ({share:.1%} of the image), "
                 f"{s.fetched_stored_bytes} over the wire")
    for tier, t in s.tiers.items():
        console.line(f"  {tier:<7} {t['chunks']:>8} chunks {t['bytes']:>14} bytes")
    console.line(f"cache hits:    {s.cache_hits}; fetch latency (ms): {s.fetch_latency_ms}; "
                 f"reads waited {s.read_wait_seconds:.2f} s on fetches")
    console.line(f"passthrough:   {s.passthrough} ({s.passthrough_opens} opens, "
                 f"{s.passthrough_files} files ready)")
    console.line(f"prefetched:    {s.prefetches} chunks, {s.prefetched_bytes} bytes "
                 f"({s.prefetched_unread_bytes} never read since); "
                 f"{s.hinted_chunks} queued from earlier starts' hints")
    if s.fuse_requests:
        asked = ", ".join(f"{n} {op}" for op, n in s.fuse_requests.items())
        console.line(f"kernel asked:  {asked}")
    return 0
