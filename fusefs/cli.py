"""Subcommands of the FUSE side: ``mount``, ``umount``, ``daemon``, ``stats``."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from blobstore.errors import UsageError
from blobstore.hints import START, hints_key
from blobstore.images import open_image
from blobstore.nodereport import parse_gpus
from blobstore.units import parse_size
from blobstore.url import open_store

from .errors import MountError

# trio, pyfuse3 and the rest of fusefs are imported by the commands that use them, so the
# other commands of thaw start without them.



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
    p.add_argument("--hints-window", type=float, default=60.0, metavar="SECONDS",
                   help="how long after an image is first read reads count as its start "
                        "(default 60)")
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
    p.add_argument("--report-interval", type=float, default=5.0,
                   help="seconds between node reports (default 5)")
    _cache_args(p)
    p.set_defaults(func=cmd_daemon)

    p = sub.add_parser("umount", parents=[common], help="unmount a thaw mount")
    p.add_argument("mountpoint", metavar="DIR")
    p.set_defaults(func=cmd_umount)

    p = sub.add_parser("stats", parents=[common], help="what a mount has fetched, per tier")
    p.add_argument("mountpoint", metavar="DIR")
    p.set_defaults(func=cmd_stats)


def _options(args):
    """The options ``mount`` and ``daemon`` share, checked."""
    from .service import MountOptions

    if args.hints is not None:
        try:
            hints_key("0" * 64, args.hints)
        except ValueError:
            raise UsageError(f"--hints {args.hints!r}: a workload name is letters, digits, "
                             "'.', '_' and '-', up to 64") from None
    if args.hints_window <= 0:
        raise UsageError("--hints-window must be a number of seconds > 0")
    return MountOptions(args.cache_dir or default_cache_dir(), parse_size(args.cache_size),
                        parse_size(args.memory), args.metrics, args.hints, args.hints_window,
                        args.store_timeout)


def _run(args, console, serve_fn) -> int:
    if args.background:
        from .background import serve_in_background

        pid, log_path = serve_in_background(serve_fn)
        console.note(f"mounted at {args.mountpoint} (pid {pid}, log {log_path})")
        return 0
    serve_fn(lambda: None)
    return 0


def cmd_mount(args, console) -> int:
    from .mount import prepare_mountpoint
    from .service import mount_image

    options = _options(args)
    objects = open_store(args.store, timeout=args.store_timeout)
    prepare_mountpoint(args.mountpoint)
    mid, manifest = open_image(objects, args.ref)
    return _run(args, console, lambda ready: mount_image(
        objects, mid, manifest, args.mountpoint, options, on_ready=ready))


def cmd_daemon(args, console) -> int:
    from .mount import prepare_mountpoint
    from .service import NodeOptions, run_daemon

    options = _options(args)
    objects = open_store(args.store, timeout=args.store_timeout)
    prepare_mountpoint(args.mountpoint)
    if args.gpus:
        given = parse_gpus(args.gpus)
        gpus = lambda: given  # noqa: E731
    else:
        from restorer.gpus import nvml_gpus as gpus  # the GPUs' one home; no torch import
    node = NodeOptions(args.node_id, gpus, args.report_interval)
    return _run(args, console, lambda ready: run_daemon(
        objects, args.mountpoint, options, node, on_ready=ready))


def cmd_umount(args, console) -> int:
    from .mount import is_mounted

    if not is_mounted(args.mountpoint):
        raise UsageError(f"{args.mountpoint} is not mounted")
    proc = subprocess.run(["fusermount3", "-u", args.mountpoint], capture_output=True)
    if proc.returncode != 0:
        proc = subprocess.run(["umount", args.mountpoint], capture_output=True)
    if proc.returncode != 0:
        raise MountError(f"cannot unmount {args.mountpoint}: "
                         f"{proc.stderr.decode(errors='replace').strip()}")
    return 0


def read_stats(mountpoint: str) -> dict:
    from .ops import STATS_XATTR

    try:
        return json.loads(os.getxattr(mountpoint, STATS_XATTR))
    except OSError:
        raise UsageError(f"{mountpoint} is not a thaw mount (or it is not answering)") from None


def cmd_stats(args, console) -> int:
    doc = read_stats(args.mountpoint)
    if console.json_output:
        console.json(doc)
        return 0
    share = doc["fetched_bytes"] / doc["image_bytes"] if doc["image_bytes"] else 0
    console.line(f"images:        {', '.join(doc['images'])}")
    console.line(f"image bytes:   {doc['image_bytes']}")
    console.line(f"fetched bytes: {doc['fetched_bytes']} ({share:.1%} of the image), "
                 f"{doc['fetched_stored_bytes']} over the wire")
    for tier, t in doc["tiers"].items():
        console.line(f"  {tier:<7} {t['chunks']:>8} chunks {t['bytes']:>14} bytes")
    console.line(f"cache hits:    {doc['cache_hits']}; fetch latency (ms): "
                 f"{doc['fetch_latency_ms']}")
    console.line(f"prefetched:    {doc['prefetches']} chunks; {doc['hinted_chunks']} queued "
                 "from earlier starts' hints")
    return 0
