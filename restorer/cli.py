"""Subcommands ``snapshot`` and ``restore``. torch is imported only when they run."""

from __future__ import annotations

import importlib
import os
import time

from blobstore.errors import UsageError
from blobstore.store.url import open_store


def register(sub, common) -> None:
    p = sub.add_parser("snapshot", parents=[common], help="store tensors as a snapshot image",
                       description="Snapshot SOURCE: a .safetensors file, a torch checkpoint "
                                   "(.pt/.pth/.bin), or MODULE:FUNCTION returning a model or "
                                   "a state dict.")
    p.add_argument("source")
    p.add_argument("ref", metavar="NAME[:TAG]")
    p.add_argument("--compile-cache", action="store_true",
                   help="also store the kernels torch.compile built while SOURCE ran "
                        "(MODULE:FUNCTION should run the model under torch.compile)")
    p.set_defaults(func=cmd_snapshot)
    p = sub.add_parser("restore", parents=[common], help="restore and verify a snapshot, timed",
                       description="Restore REF (a snapshot, or an image of one .safetensors "
                                   "file) into memory, verifying every byte, and time it.")
    p.add_argument("ref", metavar="REF")
    p.add_argument("--device", help="cuda:N or cpu (default: a GPU with room, else the CPU)")
    p.add_argument("--cache-dir", help="the node's disk cache to read through")
    p.add_argument("--peers", metavar="URL,URL|@FILE|store",
                   help="cache peers to ask before the store (as `thaw daemon --peers`)")
    p.add_argument("--self", dest="self_url", metavar="URL", help="this node's peer URL")
    p.add_argument("--peer-token-file", metavar="FILE", help="the peers' bearer token")
    p.add_argument("--jobs", type=int, default=8, help="fetching threads (default 8)")
    p.add_argument("--no-compile-cache", dest="compile_cache", action="store_false",
                   help="leave torch's compile caches alone")
    p.set_defaults(func=cmd_restore)


def _load_source(source: str):
    import torch

    if os.path.isfile(source) and source.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(source)
    if os.path.isfile(source):
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is bad input
            raise UsageError(f"{source}: not a torch checkpoint of tensors ({exc})") from None
        return state.get("state_dict", state) if isinstance(state, dict) else state
    module, _, func = source.partition(":")
    if not func:
        raise UsageError(f"{source}: no such file, and not MODULE:FUNCTION")
    try:
        return getattr(importlib.import_module(module), func)()
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"{source}: cannot call {func} in {module} ({exc})") from None


def cmd_snapshot(args, console) -> int:
    from .snapshots import snapshot

    started = time.perf_counter()
    mid = snapshot(_load_source(args.source), args.ref, store=_store(args),
                   compile_cache=args.compile_cache)
    if console.json_output:
        console.json({"manifest": mid, "seconds": round(time.perf_counter() - started, 3)})
    else:
        console.line(mid)
    return 0


def cmd_restore(args, console) -> int:
    from .snapshots import restore

    objects = _store(args)
    peers = _peers(args, objects)
    started = time.perf_counter()
    with console.progress(None, f"restore {args.ref}") as on_bytes:
        tensors = restore(args.ref, args.device, store=objects,
                          cache_dir=args.cache_dir, jobs=max(1, args.jobs),
                          compile_cache=args.compile_cache, on_bytes=on_bytes, peers=peers)
    seconds = time.perf_counter() - started
    nbytes = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                  for t in tensors.values()}.values())
    first = next(iter(tensors.values()), None)
    doc = {"ref": args.ref, "tensors": len(tensors), "bytes": nbytes,
           "device": str(first.device) if first is not None else None,
           "seconds": round(seconds, 3), "gib_per_s": round(nbytes / seconds / 2**30, 3),
           "verified": True}
    if console.json_output:
        console.json(doc)
    else:
        console.line(f"restored {len(tensors)} tensors, {nbytes} bytes, to {doc['device']} in "
                     f"{seconds:.2f}s ({doc['gib_per_s']} GiB/s), every chunk verified")
    return 0


def _peers(args, objects):
    """The cache peers' tier of ``--peers``, or None."""
    if not args.peers:
        return None
    from blobstore.ops.nodereport import peer_urls
    from blobstore.store.peers import Membership, PeerTier, read_token

    token = read_token(args.peer_token_file, "--peer-token-file")
    membership = Membership.parse(args.peers, reports=lambda: peer_urls(objects))
    return PeerTier(membership, args.self_url, token)


def _store(args):
    return open_store(args.store, timeout=args.store_timeout)
