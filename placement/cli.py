"""``thaw place`` (assign workloads to nodes from a workload file and node reports) and
``thaw extender`` (a Kubernetes scheduler extender over the store's node reports; its HTTP
face is ``extenderhttp.py``)."""

from __future__ import annotations

import json

from blobstore.errors import UsageError
from blobstore.image.images import open_image
from blobstore.ops.nodereport import parse_reports, read_reports
from blobstore.store.url import open_store
from blobstore.units import seconds

from .model import PlacementInputError, parse_workloads
from .reports import DEFAULT_TTL, fresh_nodes

POLICIES = ("greedy", "k8s", "milp", "random")


def _policy(name: str):
    """The policy's function; scipy is imported only when a placement is made."""
    from .baselines import greedy, image_locality, random_policy
    from .milp import solve

    return {"milp": solve, "greedy": greedy, "k8s": image_locality, "random": random_policy}[name]


def register(sub, common) -> None:
    _register_place(sub, common)
    _register_extender(sub, common)


def _register_place(sub, common) -> None:
    p = sub.add_parser("place", parents=[common], help="place workloads on cache-hot nodes",
                       description="Assign WORKLOADS to the nodes of fresh node reports so "
                                   "that the fewest bytes must still be fetched.")
    p.add_argument("--workloads", required=True, metavar="FILE",
                   help="JSON list of {name, image, replicas, gpus, gpu_memory, gpu_model, "
                        "age}; image is a manifest id or NAME:TAG (with --store)")
    p.add_argument("--nodes", metavar="FILE", help="JSON list of node reports (default: the "
                   "store's nodes/*.json)")
    p.add_argument("--ttl", type=seconds(), default=DEFAULT_TTL,
                   help=f"ignore reports older than this many seconds (default {DEFAULT_TTL:g})")
    p.add_argument("--policy", choices=POLICIES, default="milp")
    p.set_defaults(func=cmd_place)


def _read_json(path: str, what: str):
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except OSError as exc:
        raise UsageError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"the {what} file {path} is not valid JSON: {exc}") from None


def _with_sizes(docs: list, objects) -> list:
    """Fill each workload's manifest id and image_bytes from the store when missing."""
    if objects is None or not isinstance(docs, list):
        return docs
    out = []
    for d in docs:
        if isinstance(d, dict) and "image_bytes" not in d and isinstance(d.get("image"), str):
            mid, manifest = open_image(objects, d["image"])
            d = {**d, "image": mid, "image_bytes": manifest.data_size}
        out.append(d)
    return out


def cmd_place(args, console) -> int:
    doc = _read_json(args.workloads, "workload")
    objects = None if args.nodes else open_store(args.store, timeout=args.store_timeout)
    docs = doc["workloads"] if isinstance(doc, dict) and "workloads" in doc else doc
    try:
        workloads = parse_workloads(_with_sizes(docs, objects))
        if args.nodes:
            raw = _read_json(args.nodes, "nodes")
            if not isinstance(raw, list):
                raise PlacementInputError("the nodes file holds a list of node reports")
            reports = [(f"node report {i}", json.dumps(r).encode()) for i, r in enumerate(raw)]
        else:
            reports = read_reports(objects)
        parsed, skipped = parse_reports(reports)
        nodes, stale = fresh_nodes(parsed, ttl=args.ttl)
        skipped += stale
    except PlacementInputError as exc:
        raise UsageError(str(exc)) from None
    for s in skipped:
        console.note(f"skipped {s}")
    result = _policy(args.policy)(workloads, nodes)
    if console.json_output:
        console.json(result.as_dict())
        return 0
    console.table(["WORKLOAD", "NODE", "REPLICAS", "BYTES TO FETCH"],
                  [(a.workload, a.node, a.replicas, a.bytes_to_fetch)
                   for a in result.assignments])
    for name, count in sorted(result.pending.items()):
        console.line(f"pending: {name} x{count} (no node can take it now)")
    console.note(f"{args.policy}: {len(nodes)} nodes, {result.bytes_to_fetch} bytes to fetch, "
                 f"{result.pending_replicas} replicas pending ({result.note or 'ok'})")
    return 0


def _register_extender(sub, common) -> None:
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


def cmd_extender(args, console) -> int:
    from blobstore.units import parse_listen

    from .extender import Extender
    from .extenderhttp import keep_planning, serve

    host, port = parse_listen(args.listen, "0.0.0.0:8741")
    objects = open_store(args.store, timeout=args.store_timeout)

    def reports():
        nodes, _ = fresh_nodes(parse_reports(read_reports(objects))[0], ttl=args.ttl)
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
