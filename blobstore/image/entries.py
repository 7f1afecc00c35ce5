"""The manifest's data model, its checks and format 1.

Pure data and pure functions, no I/O; thread-safe (everything is frozen). ``validate()``
checks every invariant; ``dirmanifest`` (format 2, a section per directory) builds on this
module, and ``manifest`` is the one entry point that encodes and decodes either format.
Format 1 (msgpack; stored zstd-compressed
as any blob): ``{"version", "kind", "source", "chunker", "created", "chunks", "entries"}``
where a chunk is ``[id (32 bytes), size, stored size]`` and an entry is ``[path, type,
mode, uid, gid, mtime_ns, size, target, rdev, xattrs, link group, spans]`` with ``spans``
flat triples ``(chunk index, offset in chunk, length)``. Entries are sorted by path
components, root first (path ``""``). A hard-link group (``link group`` > 0) is one inode:
every member has the same metadata and spans, and the data is in the stream once.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import operator
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import msgpack

from ..errors import EntryNotFound, ManifestInvalid

FORMAT_VERSION = 2  # what encode() writes
READS = (1, 2)
KINDS = ("image", "file", "snapshot")
FILE, DIR, SYMLINK, CHAR, BLOCK, FIFO, SOCKET = "f", "d", "l", "c", "b", "p", "s"
TYPES = (FILE, DIR, SYMLINK, CHAR, BLOCK, FIFO, SOCKET)
MAX_CHUNK_SIZE = 64 << 20
MAX_ENTRIES = 20_000_000
MAX_XATTR_VALUE = 64 << 10
MAX_MANIFEST_SIZE = 1 << 30
_U32 = (1 << 32) - 1
_I64 = 1 << 63
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
_PATH = operator.itemgetter(0)  # an Entry's path


class Span(NamedTuple):
    """``length`` bytes of a file at ``offset`` in chunk number ``chunk``."""

    chunk: int
    offset: int
    length: int


class ChunkRef(NamedTuple):
    id: str
    size: int
    stored_size: int


# Named tuples, not frozen dataclasses: as immutable, and made 5x faster (a manifest of a
# million entries makes a million of them, and many more spans).
class Entry(NamedTuple):
    path: str  # relative, '/'-separated, '' for the root; undecodable bytes as surrogates
    type: str
    mode: int  # permission bits with setuid/setgid/sticky; the type is in ``type``
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0  # bytes of a file; length of a symlink's target
    target: str = ""  # symlink target
    rdev: int = 0  # device number of a character or block device
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    link_group: int = 0  # hard-link group, 0 for none
    spans: tuple[Span, ...] = ()

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def parent(self) -> str:
        return self.path.rpartition("/")[0]


@dataclass(frozen=True, slots=True)
class Header:
    kind: str = "image"
    source: str = ""  # what the image was made from: dir, tar, oci, docker-archive, file
    chunker: dict = field(default_factory=dict)  # algorithm and sizes
    created: int = 0  # ns since the epoch: the source's own time, so ids are reproducible


@dataclass(frozen=True)
class Manifest:
    header: Header
    chunks: tuple[ChunkRef, ...]
    entries: tuple[Entry, ...]
    _by_path: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self._by_path:
            self._by_path.update(zip(map(_PATH, self.entries), itertools.count()))

    def index_of(self, path: str) -> int:
        """The entry index of ``path`` ('' or '/' for the root); EntryNotFound if absent."""
        try:
            return self._by_path[normalize_lookup(path)]
        except KeyError:
            raise EntryNotFound(f"no {path!r} in the image") from None

    def index_of_stored(self, path: str) -> int:
        """``index_of`` for a path as an entry stores it (normalised already)."""
        try:
            return self._by_path[path]
        except KeyError:
            raise EntryNotFound(f"no {path!r} in the image") from None

    def entry(self, path: str) -> Entry:
        return self.entries[self.index_of(path)]

    @property
    def data_size(self) -> int:
        return sum(c.size for c in self.chunks)

    @property
    def stored_size(self) -> int:
        return sum(c.stored_size for c in self.chunks)

    def file_count(self) -> int:
        return sum(1 for e in self.entries if e.type == FILE)


def normalize_lookup(path: str) -> str:
    return "/".join(p for p in path.split("/") if p not in ("", "."))


def path_key(path: str) -> tuple[bytes, ...]:
    """Sort key: by components, so a directory's entries follow it without interruption."""
    return tuple(os.fsencode(path).split(b"/")) if path else ()


# -- spans ---------------------------------------------------------------------------------


class FileSpans:
    """Bisect index over one file's spans: which chunk pieces hold a byte range."""

    __slots__ = ("spans", "starts")

    def __init__(self, spans: tuple[Span, ...]) -> None:
        self.spans = spans
        self.starts = [0, *itertools.accumulate(s.length for s in spans)][:-1]

    def lookup(self, offset: int, size: int) -> list[Span]:
        """The pieces of chunks that hold ``[offset, offset + size)``, clipped to the file."""
        out: list[Span] = []
        i = bisect.bisect_right(self.starts, offset) - 1
        end = offset + size
        while 0 <= i < len(self.spans) and self.starts[i] < end:
            s, start = self.spans[i], self.starts[i]
            lo, hi = max(offset, start), min(end, start + s.length)
            if hi > lo:
                out.append(Span(s.chunk, s.offset + lo - start, hi - lo))
            i += 1
        return out


def stream_spans(start: int, size: int, chunk_starts: list[int],
                 chunk_sizes: list[int]) -> tuple[Span, ...]:
    """The spans of ``size`` bytes at ``start`` of the data stream, given the chunk cuts."""
    spans = []
    i = bisect.bisect_right(chunk_starts, start) - 1
    pos, end = start, start + size
    while pos < end:
        c_start = chunk_starts[i]
        take = min(end, c_start + chunk_sizes[i]) - pos
        spans.append(Span(i, pos - c_start, take))
        pos += take
        i += 1
    return tuple(spans)


# -- encoding ------------------------------------------------------------------------------


def _encode_entry(e: Entry) -> list:
    flat = [x for s in e.spans for x in (s.chunk, s.offset, s.length)]
    xattrs = [[k, v] for k, v in sorted(e.xattrs)]
    return [os.fsencode(e.path), e.type, e.mode, e.uid, e.gid, e.mtime_ns, e.size,
            os.fsencode(e.target), e.rdev, xattrs, e.link_group, flat]


def encode_v1(m: Manifest) -> bytes:
    """Canonical format-1 bytes of ``m``: every entry in one array. Read still; written
    only to test that it is."""
    validate(m)
    doc = {
        "version": 1,
        "kind": m.header.kind,
        "source": m.header.source,
        "chunker": dict(sorted(m.header.chunker.items())),
        "created": m.header.created,
        "chunks": [[bytes.fromhex(c.id), c.size, c.stored_size] for c in m.chunks],
        "entries": [_encode_entry(e) for e in m.entries],
    }
    return msgpack.packb(doc, use_bin_type=True)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ManifestInvalid(f"invalid manifest: {msg}")


def _int(x: object, lo: int, hi: int, what: str) -> int:
    _check(type(x) is int and lo <= x <= hi, f"{what} must be an integer in [{lo}, {hi}]")
    return x  # type: ignore[return-value]


def _decode_chunk(c: object, n: int) -> ChunkRef:
    if (type(c) is list and len(c) == 3 and type(c[0]) is bytes and len(c[0]) == 32
            and type(c[1]) is int and 1 <= c[1] <= MAX_CHUNK_SIZE
            and type(c[2]) is int and 1 <= c[2] <= MAX_CHUNK_SIZE + 1024):
        return ChunkRef(c[0].hex(), c[1], c[2])  # the messages below only when it fails
    _check(isinstance(c, list) and len(c) == 3, f"chunk {n} is not [id, size, stored size]")
    cid, size, stored = c  # type: ignore[misc]
    _check(isinstance(cid, bytes) and len(cid) == 32, f"chunk {n} has a malformed id")
    return ChunkRef(cid.hex(), _int(size, 1, MAX_CHUNK_SIZE, f"chunk {n} size"),
                    _int(stored, 1, MAX_CHUNK_SIZE + 1024, f"chunk {n} stored size"))


def _decode_entry(e: object, n: int) -> Entry:
    if not (isinstance(e, list) and len(e) == 12):
        _check(False, f"entry {n} does not have 12 fields")
    path, typ, mode, uid, gid, mtime, size, target, rdev, xattrs, group, flat = e  # type: ignore
    if not (type(path) is bytes and type(target) is bytes and type(xattrs) is list
            and type(flat) is list and len(flat) % 3 == 0
            and type(mode) is int and 0 <= mode <= 0o7777
            and type(uid) is int and 0 <= uid <= _U32 and type(gid) is int and 0 <= gid <= _U32
            and type(mtime) is int and -_I64 <= mtime < _I64
            and type(size) is int and 0 <= size < _I64
            and type(rdev) is int and 0 <= rdev < _I64
            and type(group) is int and 0 <= group <= _U32
            and (not flat or (set(map(type, flat)) == {int}
                              and min(flat) >= 0 and max(flat) < _I64))):
        _explain_entry(e, n)  # one entry in thousands: say exactly what is wrong with it
    # the common case, checked in one pass above: no message is built for a good entry
    if xattrs and not all(type(x) is list and len(x) == 2 and type(x[0]) is bytes
                          and type(x[1]) is bytes for x in xattrs):
        _check(False, f"entry {n} ({path!r}): malformed xattrs")
    spans = tuple(map(Span, flat[0::3], flat[1::3], flat[2::3])) if flat else ()
    return Entry(path.decode(_FS_ENCODING, _FS_ERRORS), typ if isinstance(typ, str) else "?",
                 mode, uid, gid, mtime, size,
                 target.decode(_FS_ENCODING, _FS_ERRORS) if target else "", rdev,
                 tuple((k, v) for k, v in xattrs) if xattrs else (), group, spans)


def _explain_entry(e: list, n: int) -> None:
    """Raise ManifestInvalid naming the first bad field of an entry that failed the fast
    check in ``_decode_entry``."""
    path, typ, mode, uid, gid, mtime, size, target, rdev, xattrs, group, flat = e
    _check(isinstance(path, bytes) and isinstance(target, bytes), f"entry {n}: path not bytes")
    where = f"entry {n} ({path!r})"
    _check(isinstance(xattrs, list) and isinstance(flat, list), f"{where}: malformed fields")
    _check(len(flat) % 3 == 0, f"{where}: spans are not triples")
    for v in flat:
        _int(v, 0, _I64 - 1, f"{where} span")
    _int(mode, 0, 0o7777, f"{where} mode")
    _int(uid, 0, _U32, f"{where} uid")
    _int(gid, 0, _U32, f"{where} gid")
    _int(mtime, -_I64, _I64 - 1, f"{where} mtime")
    _int(size, 0, _I64 - 1, f"{where} size")
    _int(rdev, 0, _I64 - 1, f"{where} rdev")
    _int(group, 0, _U32, f"{where} link group")
    raise AssertionError(f"{where}: failed the fast check but no field is wrong")


_paused = 0  # decodes running now
_gc_was_enabled = True  # the collector's state when the first of them began
_paused_lock = threading.Lock()


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Decoding makes millions of small containers and no cycles; the cyclic collector,
    triggered by every 700 of them, would walk them over and over (half of the time of an
    unpack). Paused process-wide while any thread decodes; refcounting still frees."""
    global _paused, _gc_was_enabled
    with _paused_lock:
        if _paused == 0:
            _gc_was_enabled = gc.isenabled()
        _paused += 1
        gc.disable()
    try:
        yield
    finally:
        with _paused_lock:
            _paused -= 1
            if _paused == 0 and _gc_was_enabled:
                gc.enable()


def unpack(data: bytes) -> dict:
    """The top level of manifest bytes, of a version this thaw reads (format 2's entries
    stay packed, a section per directory)."""
    _check(len(data) <= MAX_MANIFEST_SIZE, "too large")
    try:
        with _no_cyclic_gc():
            doc = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ManifestInvalid(f"invalid manifest: not msgpack ({exc})") from None
    except UnicodeDecodeError:
        raise ManifestInvalid("invalid manifest: a text field is not UTF-8") from None
    _check(isinstance(doc, dict), "not a map")
    _check(doc.get("version") in READS,
           f"format version {doc.get('version')!r}, this thaw reads {READS}; "
           "upgrade thaw or push the image again")
    return doc


def _decode_v1(doc: dict) -> Manifest:
    keys = {"version", "kind", "source", "chunker", "created", "chunks", "entries"}
    _check(set(doc) == keys, f"fields {sorted(map(repr, set(doc) ^ keys))} missing or "
           "unexpected")
    _check(isinstance(doc["chunker"], dict) and isinstance(doc["source"], str), "bad header")
    chunks, entries = doc["chunks"], doc["entries"]
    _check(isinstance(chunks, list) and isinstance(entries, list), "chunks or entries not lists")
    _check(len(entries) <= MAX_ENTRIES and len(chunks) <= MAX_ENTRIES, "too many entries")
    header = Header(doc["kind"], doc["source"], doc["chunker"],
                    _int(doc["created"], -_I64, _I64 - 1, "created"))
    m = Manifest(header, tuple(_decode_chunk(c, i) for i, c in enumerate(chunks)),
                 tuple(_decode_entry(e, i) for i, e in enumerate(entries)))
    validate(m)
    return m


# -- validation ----------------------------------------------------------------------------


def _check_path(path: str, where: str) -> None:
    raw = os.fsencode(path)
    _check(b"\0" not in raw and len(raw) <= 4096, f"{where}: NUL in path or path too long")
    if path:
        parts = raw.split(b"/")
        _check(all(p not in (b"", b".", b"..") and len(p) <= 255 for p in parts),
               f"{where}: path is not normalised (empty, '.' or '..' component)")


def _check_entry(e: Entry, chunks: tuple[ChunkRef, ...], where: str) -> None:
    _check(e.type in TYPES, f"{where}: unknown type {e.type!r}")
    names = [k for k, _ in e.xattrs]
    _check(names == sorted(set(names)) and all(k and b"\0" not in k for k in names),
           f"{where}: xattr names unsorted, repeated or malformed")
    _check(all(len(v) <= MAX_XATTR_VALUE for _, v in e.xattrs), f"{where}: xattr too large")
    _check(not e.spans or e.type == FILE, f"{where}: only regular files have data")
    _check(e.rdev == 0 or e.type in (CHAR, BLOCK), f"{where}: rdev on a non-device")
    _check(not e.target or e.type == SYMLINK, f"{where}: link target on a non-symlink")
    if e.type == SYMLINK:
        target = os.fsencode(e.target)
        _check(0 < len(target) <= 4096 and b"\0" not in target, f"{where}: bad symlink target")
        _check(e.size == len(target), f"{where}: symlink size is not its target's length")
    elif e.type == FILE:
        _check(sum(s.length for s in e.spans) == e.size, f"{where}: size is not the spans' sum")
        for s in e.spans:
            _check(s.chunk < len(chunks) and s.length > 0, f"{where}: span outside the chunks")
            _check(s.offset + s.length <= chunks[s.chunk].size, f"{where}: span past its chunk")
    else:
        _check(e.size == 0, f"{where}: size on a {e.type!r} entry")
    _check(e.link_group == 0 or e.type != DIR, f"{where}: hard-linked directory")


def _inode_fields(e: Entry) -> tuple:
    return (e.type, e.mode, e.uid, e.gid, e.mtime_ns, e.size, e.target, e.rdev, e.xattrs,
            e.spans)


def _entry_ok(e: Entry, chunk_sizes: list[int]) -> bool:
    """``_check_entry`` for the common entries (no xattrs; a file, directory or symlink),
    building no message: True only where every check there passes; otherwise that one
    runs and says what is wrong."""
    t = e.type
    if e.xattrs or e.rdev:
        return False
    if t == FILE:
        if e.target:
            return False
        total, count = 0, len(chunk_sizes)
        for c, offset, length in e.spans:
            if not (c < count and length > 0 and offset + length <= chunk_sizes[c]):
                return False
            total += length
        return total == e.size
    if t == DIR:
        return not e.spans and not e.target and e.size == 0 and e.link_group == 0
    if t == SYMLINK:
        target = e.target.encode(_FS_ENCODING, _FS_ERRORS)
        return (not e.spans and 0 < len(target) <= 4096 and b"\0" not in target
                and e.size == len(target))
    return False


def validate(m: Manifest) -> None:
    """Check every invariant of ``m``; raises ManifestInvalid naming the first broken one.
    The common entry takes a fast path that builds no message (``_entry_ok``)."""
    h = m.header
    _check(h.kind in KINDS, f"unknown kind {h.kind!r}")
    _check(bool(m.entries) and m.entries[0].path == "" and m.entries[0].type == DIR,
           "the first entry is not the root directory")
    dirs: dict[str, tuple[tuple[bytes, ...], int]] = {"": ((), 0)}  # -> path_key, length
    groups: dict[int, list[Entry]] = {}
    prev: tuple[bytes, ...] | None = None
    chunk_sizes = [c.size for c in m.chunks]
    for n, e in enumerate(m.entries):
        # The fast path checks only the last component: the parent is an earlier entry,
        # checked already, so its key and length are known.
        parent, sep, name = e.path.rpartition("/")
        raw = name.encode(_FS_ENCODING, _FS_ERRORS)
        up = dirs.get(parent)
        key = length = None
        if n and up is not None and bool(parent) == bool(sep):  # not "/name"
            key, length = up[0] + (raw,), (up[1] + 1 if parent else 0) + len(raw)
        if (key is None or not raw or raw == b"." or raw == b".." or len(raw) > 255
                or b"\0" in raw or length > 4096 or (prev is not None and key <= prev)
                or not _entry_ok(e, chunk_sizes)):
            where = f"entry {n} ({e.path!r})"
            _check_path(e.path, where)
            key = path_key(e.path)
            length = len(os.fsencode(e.path))
            _check(prev is None or key > prev, f"{where}: entries not sorted or repeated")
            _check(n == 0 or parent in dirs, f"{where}: parent directory missing")
            _check_entry(e, m.chunks, where)
        prev = key
        if e.type == DIR:
            dirs[e.path] = (key, length)
        if e.link_group:
            groups.setdefault(e.link_group, []).append(e)
    for g, members in groups.items():
        _check(len(members) > 1, f"hard-link group {g} has one member")
        first = _inode_fields(members[0])
        _check(all(_inode_fields(x) == first for x in members), f"hard-link group {g} differs")
