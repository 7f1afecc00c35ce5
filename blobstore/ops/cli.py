"""Subcommands on the store as a whole: ``ls``, ``inspect``, ``verify``, ``check``, ``tag``,
``rm``, ``gc``, and ``serve`` (the peer blob API over the node's disk cache)."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from ..errors import BlobCorrupt, BlobNotFound, UsageError
from ..image.images import open_image
from ..image.manifest import Manifest
from ..image.refs import Refs
from ..store.blobs import BlobStore
from ..store.url import open_store
from ..units import seconds


def register(sub, common) -> None:
    p = sub.add_parser("ls", parents=[common], help="list the tagged images of the store")
    p.set_defaults(func=cmd_ls)
    p = sub.add_parser("inspect", parents=[common], help="show an image's manifest")
    p.add_argument("ref", metavar="REF", help="NAME:TAG or a manifest id")
    p.add_argument("--files", action="store_true", help="list every entry too")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("verify", parents=[common],
                       help="check that every chunk of an image is present and intact")
    p.add_argument("ref", metavar="REF", help="NAME:TAG or a manifest id")
    p.add_argument("--jobs", type=int, default=8, help="parallel reads (default 8)")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("check", parents=[common], help="check the whole store is whole",
                       description="Every image named by a tag or a lease (or REF...) decodes "
                                   "and has every chunk; with --read-data-subset, that share "
                                   "of the chunks is downloaded and re-hashed.")
    p.add_argument("refs", nargs="*", metavar="REF", help="check only these images")
    p.add_argument("--read-data-subset", metavar="SHARE", default=None,
                   help="download and re-hash this share of the chunks: 10%% (at random) or "
                        "n/N (the n-th slice of N, by id)")
    p.add_argument("--jobs", type=int, default=8, help="parallel reads (default 8)")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("rm", parents=[common], help="remove tags (their blobs go at gc)")
    p.add_argument("refs", nargs="+", metavar="REF", help="NAME:TAG")
    p.set_defaults(func=cmd_rm)
    p = sub.add_parser("tag", parents=[common], help="point a new tag at an existing image")
    p.add_argument("src", metavar="SRC", help="NAME:TAG or a manifest id")
    p.add_argument("dst", metavar="DST", help="NAME:TAG")
    p.set_defaults(func=cmd_tag)
    p = sub.add_parser("gc", parents=[common], help="delete what no tag or lease references",
                       description="Condemn unreferenced blobs older than the grace; delete "
                                   "them at a later run, at least the grace after.")
    p.add_argument("--grace", default=None, metavar="DURATION",
                   help="how old an unreferenced object must be, and how long it stays "
                        "condemned before it is deleted: seconds, or with a unit (s, m, h, "
                        "d), at most 365d (default 24h)")
    p.add_argument("--force", action="store_true", help="allow a grace under 1h (tests)")
    p.add_argument("--dry-run", action="store_true",
                   help="say what would be condemned and deleted; change nothing")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="instead of the store, prune this node's disk cache: drop entries of "
                        "blobs the store no longer has, never those of leased images")
    p.set_defaults(func=cmd_gc)
    p = sub.add_parser("serve", parents=[common], help="serve this node's chunks to its peers",
                       description="The peer blob API (GET /v1/blobs/ID) over the node's disk "
                                   "cache, reading through to the store on a miss.")
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="where to listen")
    p.add_argument("--cache-dir", required=True, metavar="DIR",
                   help="the node's disk cache, shared with its mount or daemon")
    p.add_argument("--cache-size", default="10G", help="bound of the disk cache (default 10G)")
    p.add_argument("--token-file", required=True, metavar="FILE",
                   help="the bearer token clients must send")
    p.add_argument("--memory", default="256M", metavar="SIZE",
                   help="recently served chunks kept in memory, so that a chunk many peers "
                        "ask for is read and verified once (default 256M; 0: none)")
    p.add_argument("--in-flight", type=int, default=64, metavar="N",
                   help="blob requests answered at once (default 64)")
    p.add_argument("--header-timeout", type=seconds(), default=10.0, metavar="SECONDS",
                   help="close a connection whose request head takes longer (default 10)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args, console) -> int:
    import asyncio

    from ..store.diskcache import DiskCache
    from ..store.peers import read_token
    from ..store.tiers import node_tiers
    from ..units import parse_listen, parse_size
    from .peerserver import PeerServer

    host, port = parse_listen(args.listen)
    token = read_token(args.token_file, "--token-file")
    if args.in_flight < 1:
        raise UsageError("--in-flight must be at least 1")
    objects = open_store(args.store, timeout=args.store_timeout)
    tiers = node_tiers(BlobStore(objects), DiskCache(args.cache_dir, parse_size(args.cache_size)))
    server = PeerServer(tiers, token, in_flight=args.in_flight,
                        header_timeout=args.header_timeout, memory_bytes=parse_size(args.memory))
    try:
        asyncio.run(server.run(host, port, on_ready=lambda: console.note(
            f"serving {args.cache_dir} on http://{args.listen} (store {objects})")))
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.listen}: {exc.strerror}") from None
    return 0


def cmd_check(args, console) -> int:
    from .check import check, parse_subset

    subset = parse_subset(args.read_data_subset)
    objects = open_store(args.store, timeout=args.store_timeout)
    results = check(objects, args.refs, subset, jobs=args.jobs)
    bad = [r for r in results if not r.ok]
    if console.json_output:
        console.json({"images": [r.as_json() for r in results], "ok": not bad})
    else:
        for r in results:
            state = "ok" if r.ok else (r.error or f"{len(r.missing)} missing, "
                                                  f"{len(r.corrupt)} corrupt chunks")
            console.line(f"{r.name}: {r.chunks} chunks, {r.read} read and re-hashed: {state}")
        if not results:
            console.note(f"no images in {objects}")
    return 1 if bad else 0


def cmd_rm(args, console) -> int:
    from ..errors import RefNotFound
    from ..image.refs import parse_ref
    from ..store.digest import is_blob_id

    refs = []
    for text in args.refs:
        if is_blob_id(text):
            raise UsageError(f"{text} is a manifest id, not a tag: `thaw rm` removes tags; an "
                             "image no tag or lease names is deleted by `thaw gc`")
        refs.append(parse_ref(text))
    objects = open_store(args.store, timeout=args.store_timeout)
    tags = Refs(objects)
    for ref in refs:
        try:
            tags.get(ref)
        except RefNotFound:
            raise UsageError(f"no tag {ref} in {objects}; `thaw ls` lists them") from None
    for ref in refs:
        tags.delete(ref)
    if console.json_output:
        console.json({"removed": [str(r) for r in refs]})
    else:
        console.note(f"removed {', '.join(map(str, refs))}; their blobs go at `thaw gc` if "
                     "nothing else names them")
    return 0


def cmd_tag(args, console) -> int:
    from ..image.refs import parse_ref

    dst = parse_ref(args.dst, new=True)
    objects = open_store(args.store, timeout=args.store_timeout)
    mid, _ = open_image(objects, args.src)  # it must exist and decode
    Refs(objects).set(dst, mid)
    if console.json_output:
        console.json({"ref": str(dst), "manifest": mid})
    else:
        console.line(f"{dst} -> {mid}")
    return 0


def cmd_gc(args, console) -> int:
    from ..units import parse_duration
    from .gc import MIN_GRACE, collect

    if args.cache_dir is not None:
        if args.grace is not None or args.force:
            raise UsageError("--grace and --force are for collecting the store; "
                             "--cache-dir prunes a cache by what the store holds now")
        return _gc_cache(args, console, open_store(args.store, timeout=args.store_timeout))
    args.grace = "24h" if args.grace is None else args.grace
    grace = parse_duration(args.grace, "--grace")
    if grace < MIN_GRACE and not args.force:
        raise UsageError(f"--grace {args.grace} is under 1h: a push or mount that started "
                         "before this run could lose blobs; add --force if you mean it")
    objects = open_store(args.store, timeout=args.store_timeout)
    result = collect(objects, grace=grace, dry_run=args.dry_run)
    doc = result.as_json()
    if console.json_output:
        console.json(doc)
        return 0
    verb = "would be" if args.dry_run else "were"
    console.line(f"{doc['live_manifests']} images and {doc['live_blobs']} blobs in use")
    console.line(f"{doc['deleted']} objects condemned by an earlier run {verb} deleted "
                 f"({doc['freed_bytes']} bytes); {doc['released']} released (in use again)")
    console.line(f"{doc['marked']} unreferenced objects {verb} condemned "
                 f"({doc['marked_bytes']} bytes): a run {args.grace} or more later deletes "
                 f"them; {doc['waiting']} condemned ones wait for their grace")
    return 0


def _gc_cache(args, console, objects) -> int:
    from ..store.diskcache import DiskCache
    from .cachegc import prune_cache

    if not os.path.isdir(args.cache_dir):
        raise UsageError(f"--cache-dir {args.cache_dir}: not a directory; name the cache "
                         "directory a mount, daemon or `thaw serve` on this node uses")
    result = prune_cache(DiskCache(args.cache_dir, 1 << 62), objects, dry_run=args.dry_run)
    if console.json_output:
        console.json(result.as_json())
        return 0
    verb = "would be" if args.dry_run else "were"
    console.line(f"{len(result.dropped)} of {result.entries} cache entries {verb} dropped "
                 f"({result.freed_bytes} bytes): the store no longer has their blobs")
    if result.only_copies:
        console.line(f"{len(result.only_copies)} entries kept: leased images use them and the "
                     "store has lost them (run `thaw check`)")
    return 0


def cmd_ls(args, console) -> int:
    """Every tag; a tag whose ref object holds garbage is listed as broken, and exits 1."""
    objects = open_store(args.store, timeout=args.store_timeout)
    refs = list(Refs(objects).scan())
    broken = [str(r) for r, m in refs if m is None]
    if console.json_output:
        console.json([{"ref": str(r), "manifest": m} | ({"broken": True} if m is None else {})
                      for r, m in refs])
    elif refs:
        console.table(["REF", "MANIFEST"], [(str(r), m or "BROKEN (holds no manifest id)")
                                            for r, m in refs])
    else:
        console.note(f"no images in {objects}; `thaw push SOURCE NAME:TAG` adds one")
    if broken:
        console.note(f"broken tags: {', '.join(broken)}; push them again or remove them")
        return 1
    return 0


def summary(mid: str, m: Manifest) -> dict:
    types = Counter(e.type for e in m.entries)
    unique = {c.id: c for c in m.chunks}
    return {
        "manifest": mid, "kind": m.header.kind, "source": m.header.source,
        "chunker": m.header.chunker, "created_ns": m.header.created,
        "entries": len(m.entries), "files": types["f"], "directories": types["d"],
        "symlinks": types["l"], "others": len(m.entries) - types["f"] - types["d"] - types["l"],
        "bytes": m.data_size, "chunks": len(m.chunks), "unique_chunks": len(unique),
        "stored_bytes": sum(c.stored_size for c in unique.values()),
    }


def cmd_inspect(args, console) -> int:
    mid, m = open_image(open_store(args.store, timeout=args.store_timeout), args.ref)
    doc = summary(mid, m)
    if args.files:
        doc["files_list"] = [{"path": "/" + e.path, "type": e.type, "mode": oct(e.mode),
                              "uid": e.uid, "gid": e.gid, "size": e.size} for e in m.entries]
    if console.json_output:
        console.json(doc)
        return 0
    for key, value in doc.items():
        if key != "files_list":
            console.line(f"{key + ':':<15} {value}")
    for f in doc.get("files_list", []):
        console.line(f"{f['type']} {f['mode']:>7} {f['uid']:>5}:{f['gid']:<5} {f['size']:>12} "
                     f"{f['path']}")
    return 0


def _check(blobs: BlobStore, id: str, size: int) -> str:
    try:
        blobs.get(id, max_size=size)
        return "ok"
    except BlobNotFound:
        return "missing"
    except BlobCorrupt:
        return "corrupt"


def cmd_verify(args, console) -> int:
    objects = open_store(args.store, timeout=args.store_timeout)
    mid, m = open_image(objects, args.ref)
    blobs = BlobStore(objects)
    unique = {c.id: c.size for c in m.chunks}
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = dict(zip(unique, pool.map(lambda i: _check(blobs, i, unique[i]), unique),
                           strict=True))
    bad = {i: r for i, r in results.items() if r != "ok"}
    doc = {"manifest": mid, "chunks": len(unique), "ok": len(unique) - len(bad),
           "missing": sorted(i for i, r in bad.items() if r == "missing"),
           "corrupt": sorted(i for i, r in bad.items() if r == "corrupt")}
    if console.json_output:
        console.json(doc)
    else:
        for i, r in sorted(bad.items()):
            console.line(f"{r}: chunk {i}")
        console.line(f"{args.ref}: {doc['ok']} of {len(unique)} chunks intact"
                     + ("" if not bad else f", {len(bad)} bad"))
    if bad:
        return 1
    return 0

