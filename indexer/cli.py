"""Subcommands of the indexer: ``push``, ``export``, ``cat``."""

from __future__ import annotations

import os
import sys
import tempfile
import time

from blobstore.image.images import open_image
from blobstore.image.refs import parse_ref
from blobstore.store.blobs import BlobStore
from blobstore.store.url import open_store

from . import FORMATS
from .chunker import DEFAULT, parse_chunker


def register(sub, common) -> None:
    p = sub.add_parser("push", parents=[common], help="index a source and store it under a tag",
                       description="Cut SOURCE (a directory, a tar, an OCI layout or archive, a "
                                   "docker-archive, or one file) into chunks, store the new "
                                   "ones, and tag the image NAME:TAG.")
    p.add_argument("source", help="directory, tar(.gz|.zst|.xz), OCI layout, archive or file")
    p.add_argument("ref", metavar="NAME[:TAG]", help="the tag to write (tag defaults to latest)")
    p.add_argument("--platform", default="linux/amd64", help="image to take from a multi-"
                   "platform OCI index (default linux/amd64)")
    p.add_argument("--format", dest="fmt", choices=FORMATS, default="auto",
                   help="how to read SOURCE (default: detect)")
    p.add_argument("--chunker", default=str(DEFAULT), metavar="ALGO[:SIZE]",
                   help=f"fastcdc or fixed, with an average size (default {DEFAULT})")
    p.add_argument("--jobs", type=int, default=8, help="parallel uploads (default 8)")
    p.add_argument("--trust-links", action="store_true",
                   help="accepted and ignored: symlinks are always kept verbatim")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("export", parents=[common], help="write an image out as a directory",
                       description="Write the whole tree of REF to DIR with all its metadata.")
    p.add_argument("ref", metavar="REF", help="NAME:TAG or a manifest id")
    p.add_argument("dest", metavar="DIR", help="a directory that does not exist yet, or is empty")
    p.add_argument("--jobs", type=int, default=8, help="parallel downloads (default 8)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("cat", parents=[common], help="write a file of an image to stdout")
    p.add_argument("ref", metavar="REF", help="NAME:TAG or a manifest id")
    p.add_argument("path", metavar="PATH", help="path of a regular file inside the image")
    p.set_defaults(func=cmd_cat)


def cmd_push(args, console) -> int:
    started = time.monotonic()
    from .push import push_tree  # here, not at the top: a mount never pays for it
    from .sources import open_source

    ref = parse_ref(args.ref, new=True)
    if args.trust_links:
        console.note("--trust-links changes nothing now: every symlink is kept verbatim, as "
                     "docker and podman keep it")
    params = parse_chunker(args.chunker)
    objects = open_store(args.store, timeout=args.store_timeout)
    with tempfile.TemporaryDirectory(prefix="thaw-push-") as tmp:
        with open_source(args.source, platform=args.platform, fmt=args.fmt,
                         tmpdir=tmp) as tree:
            total = sum(n.size for _, n in tree.data_nodes())
            with console.progress(total, f"push {ref}") as on_bytes:
                result = push_tree(tree, objects, ref, params=params, jobs=max(1, args.jobs),
                                   on_bytes=on_bytes, started=started)
    if console.json_output:
        console.json(result.as_dict())
    else:
        console.line(result.manifest_id)
        console.note(f"pushed {ref} to {objects}: {result.files} files, {result.bytes} bytes "
                     f"in {result.chunks} chunks, {result.new_chunks} new, "
                     f"{result.uploaded_bytes} bytes uploaded in {result.seconds:.1f}s")
    return 0


def cmd_export(args, console) -> int:
    from .export import export_tree

    objects = open_store(args.store, timeout=args.store_timeout)
    mid, manifest = open_image(objects, args.ref)
    with console.progress(manifest.data_size, f"export {args.ref}") as on_bytes:
        export_tree(manifest, BlobStore(objects), args.dest, jobs=max(1, args.jobs),
                    on_bytes=on_bytes)
    summary = {"manifest": mid, "dest": os.path.abspath(args.dest),
               "entries": len(manifest.entries), "bytes": manifest.data_size}
    if console.json_output:
        console.json(summary)
    else:
        console.note(f"exported {args.ref} ({len(manifest.entries)} entries) to {args.dest}")
    return 0


def cmd_cat(args, console) -> int:
    from .export import write_file

    objects = open_store(args.store, timeout=args.store_timeout)
    _, manifest = open_image(objects, args.ref)
    write_file(manifest, BlobStore(objects), args.path, sys.stdout.buffer)
    sys.stdout.buffer.flush()
    return 0
