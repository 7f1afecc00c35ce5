"""Fuzz targets: everything thaw parses from bytes it did not write itself.

Each target takes arbitrary bytes. The only allowed outcomes are a return or the documented
error of that parser; any other exception, a crash or a hang is a bug. ``VALID`` holds, for
each target, the strict reading its seeds must pass (they raise on what the target lets
go): a seed the parser refuses would exercise only its first check, so a corpus gone stale
must fail the tests, not pass them. Seeds named ``crash-*`` are past crashes, kept as they
came.
``tests/test_fuzz.py`` runs every target under Hypothesis (bounded, in the suite) and on
the seed corpus in ``fuzz/corpus/TARGET/``; ``fuzz/run.py TARGET`` runs one under atheris,
coverage-guided, for as long as it is given (``make fuzz``).
"""

from __future__ import annotations

import json
import os
import tempfile

from blobstore.errors import BlobCorrupt, ManifestInvalid, ThawError, UsageError
from blobstore.image.dirmanifest import open_dir_manifest
from blobstore.image.hints import HintList
from blobstore.image.manifest import decode as decode_manifest
from blobstore.lifecycle.leases import LeaseInvalid, parse_lease
from blobstore.ops.peerserver import parse_range
from blobstore.schema import NodeReport
from blobstore.store.codec import decode_and_verify, decode_blob
from blobstore.store.peers import normalise_url
from placement.model import PlacementInputError
from placement.reports import node_from

MAX_SOURCE = 1 << 20


def manifest(data: bytes) -> None:
    """Both readers: the whole decode, and a mount's, a directory at a time. What the whole
    decode accepts, the lazy reader reads the same."""
    try:
        whole = decode_manifest(data)
    except ManifestInvalid:
        whole = None
    try:
        lazy = _walk(open_dir_manifest(data))
    except ManifestInvalid:
        assert whole is None, "the lazy reader refused what the whole decode accepted"
        return
    assert whole is None or lazy == _plain(whole.entries[1:]), "the two readers differ"


def _walk(dm) -> list:
    out, todo = [], [0]
    while todo:
        first, section = dm.listing(todo.pop())
        for k, e in enumerate(section.entries, first):
            out.append(e)
            if e.type == "d":
                todo.append(k)
    return _plain(out)


def _plain(entries) -> list:
    """Sorted, hard-link groups as yes or no (a format-1 image's are renumbered)."""
    return sorted(e._replace(link_group=bool(e.link_group)) for e in entries)


def hints(data: bytes) -> None:
    got = HintList.decode(data)  # garbage is "no hints", never an error
    assert isinstance(got.runs, int) and isinstance(got.times, dict)


def node_report(data: bytes) -> None:
    try:
        node_from(NodeReport.from_json(json.loads(data)))
    except (ValueError, PlacementInputError, RecursionError):
        pass  # JSON that does not parse (ValueError) is the reader's to skip


def lease(data: bytes) -> None:
    try:
        parse_lease(data)
    except LeaseInvalid:
        pass


def blob(data: bytes) -> None:
    """A stored blob under a wrong or right id: BlobCorrupt or the bytes, within bounds."""
    try:
        out = decode_and_verify(data, "0" * 64, max_size=1 << 20, where="fuzz")
        assert len(out) <= 1 << 20
    except BlobCorrupt:
        pass


def peer_request(data: bytes) -> None:
    text = data.decode("latin-1")
    span = parse_range(text, 1000)
    assert span is None or span == () or 0 <= span[0] <= span[1] < 1000
    try:
        url = normalise_url(text)
        assert url == normalise_url(url)
    except UsageError:
        pass


def archive(data: bytes) -> None:
    """Bytes as a tar, OCI layout or docker-save tar (compressed or not), pushed."""
    from blobstore.image.refs import parse_ref
    from blobstore.store.memory import MemoryStore
    from indexer.push import push_tree
    from indexer.sources import open_source

    with tempfile.TemporaryDirectory(prefix="thaw-fuzz-") as tmp:
        path = os.path.join(tmp, "input")
        with open(path, "wb") as f:
            f.write(data[:MAX_SOURCE])
        try:
            with open_source(path) as src:
                push_tree(src, MemoryStore(), parse_ref("fuzz:1"))
        except ThawError:
            pass


TARGETS = {"manifest": manifest, "hints": hints, "node_report": node_report, "lease": lease,
           "blob": blob, "peer_request": peer_request, "archive": archive}


def _valid_hints(data: bytes) -> None:
    got = HintList.decode(data)
    assert got.runs > 0 and got.times, "decodes as no hints"


def _valid_peer_request(data: bytes) -> None:
    text = data.decode("latin-1")
    if parse_range(text, 1000) is None:
        normalise_url(text)


def _valid_archive(data: bytes) -> None:
    from blobstore.image.refs import parse_ref
    from blobstore.store.memory import MemoryStore
    from indexer.push import push_tree
    from indexer.sources import open_source

    with tempfile.TemporaryDirectory(prefix="thaw-fuzz-") as tmp:
        path = os.path.join(tmp, "input")
        with open(path, "wb") as f:
            f.write(data)
        with open_source(path) as src:
            push_tree(src, MemoryStore(), parse_ref("fuzz:1"))


VALID = {"manifest": decode_manifest, "hints": _valid_hints,
         "node_report": lambda data: node_from(NodeReport.from_json(json.loads(data))),
         "lease": parse_lease, "blob": lambda data: decode_blob(data, max_size=1 << 20),
         "peer_request": _valid_peer_request, "archive": _valid_archive}


def seeds(name: str) -> list[bytes]:
    """The seed corpus of a target."""
    return [data for _, data in seed_files(name)]


def seed_files(name: str) -> list[tuple[str, bytes]]:
    """(file name, bytes) of each seed of a target, in name order."""
    root = os.path.join(os.path.dirname(__file__), "corpus", name)
    if not os.path.isdir(root):
        return []
    out = []
    for f in sorted(os.listdir(root)):
        with open(os.path.join(root, f), "rb") as fh:
            out.append((f, fh.read()))
    return out
