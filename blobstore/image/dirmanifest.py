"""Manifest format 2: entries kept a directory at a time, so a reader decodes only the
directories it is asked about. Pure data and functions, no I/O.

Format 1 holds every entry in one array, and a reader must decode and check them all before
it can answer a single lookup: a mount's first answer grew by ~5 us an entry (a second for
200k files, 700 MB for a million). Format 2 holds the same tree, split:

``{"version": 2, "kind", "source", "chunker", "created", "chunks", "root", "dirs",
"sections", "links", "xattrs"}``

- ``chunks``: as in format 1, ``[id (32 bytes), size, stored size]``.
- ``root``: the root directory's entry (format 1's entry, its path ``b""``).
- ``dirs``: ``[parent, name, count]`` for every directory in path order (pre-order, by
  components); ``dirs[0]`` is the root, ``[0, b"", count]``; a parent comes before its
  children. ``count`` is the number of entries directly in the directory.
- ``sections``: one msgpack array per directory, as a ``bin``: the entries directly in it,
  sorted by name, each a format-1 entry whose path field holds only the name. A directory
  entry's own listing is the section of the ``dirs`` row with its parent and name.
- ``links``: hard-link groups, group ``g`` at position ``g - 1``: the entry numbers of its
  members, ascending; groups ordered by their first member, which is the group's inode.
- ``xattrs``: whether any entry carries an extended attribute.

Entries are numbered root 0, then section by section, in order: entry ``k`` of section
``s`` is number ``first[s] + k``. ``encode_v2`` is canonical (groups are renumbered in that
order, whatever numbers the caller used). ``DirManifest`` checks the top level whole when it
opens (O(directories + chunks + hard links)) and each section when it first decodes it:
every check of format 1 holds for what it returns, and the sections' directories match the
``dirs`` table, so every directory is listed by exactly one entry. Only what spans sections
is checked as far as the sections decoded so far allow: a hard link's fields against its
group's first member, once both are decoded (a mount serves only the first member's). A
format-1 check that needs every entry (that the ``xattrs`` flag is not set needlessly) is
left to ``decode_v2``, which decodes every section and so checks everything, and returns a
format-1 ``Manifest``.

Memory: the packed sections, plus at most ``max_decoded`` entries decoded, or twice the
largest directory if that is more (the directories decoded longest ago are dropped first; a
dropped one is decoded and checked again when next asked for).

Thread-safety: sections are decoded and dropped one at a time under a lock (so the hard-link checks
waiting on a section stay whole) and stored with one dict assignment; reading a decoded one
takes no lock, so any thread may read.
"""

from __future__ import annotations

import bisect
import itertools
import threading

import msgpack

from ..errors import ManifestInvalid
from .entries import (
    _FS_ENCODING,
    _FS_ERRORS,
    _I64,
    DIR,
    KINDS,
    MAX_ENTRIES,
    Entry,
    Header,
    Manifest,
    _check,
    _check_entry,
    _decode_chunk,
    _decode_entry,
    _decode_v1,
    _encode_entry,
    _entry_ok,
    _inode_fields,
    _int,
    _no_cyclic_gc,
    unpack,
    validate,
)

VERSION = 2
KEYS = ("version", "kind", "source", "chunker", "created", "chunks", "root", "dirs",
        "sections", "links", "xattrs")
MAX_PATH = 4096
MAX_DECODED = 50_000  # entries a reader keeps decoded (~30 MB); see DirManifest


# -- encoding ------------------------------------------------------------------------------


def encode_v2(m: Manifest) -> bytes:
    """Canonical format-2 bytes of ``m`` (validated first)."""
    return msgpack.packb(_doc_v2(m), use_bin_type=True)


def _doc_v2(m: Manifest) -> dict:
    """The format-2 top level of ``m`` (validated first), as ``unpack`` would return it."""
    validate(m)
    section_of = {"": 0}  # directory path -> section number
    dirs: list[list] = [[0, b"", 0]]
    members: list[list[Entry]] = [[]]
    for e in m.entries[1:]:
        parent, _, name = e.path.rpartition("/")
        s = section_of[parent]
        members[s].append(e)
        dirs[s][2] += 1
        if e.type == DIR:
            section_of[e.path] = len(dirs)
            dirs.append([s, name.encode(_FS_ENCODING, _FS_ERRORS), 0])
            members.append([])
    first = _firsts([d[2] for d in dirs])
    groups: dict[int, list[int]] = {}
    for s, entries in enumerate(members):
        for k, e in enumerate(entries):
            if e.link_group:
                groups.setdefault(e.link_group, []).append(first[s] + k)
    order = sorted(groups.values())  # members ascending already: numbered section by section
    rank = {ks[0]: n for n, ks in enumerate(order, 1)}
    renumber = {g: rank[ks[0]] for g, ks in groups.items()}
    sections = [msgpack.packb([_encode_member(e, renumber) for e in entries],
                              use_bin_type=True) for entries in members]
    return {
        "version": VERSION,
        "kind": m.header.kind,
        "source": m.header.source,
        "chunker": dict(sorted(m.header.chunker.items())),
        "created": m.header.created,
        "chunks": [[bytes.fromhex(c.id), c.size, c.stored_size] for c in m.chunks],
        "root": _encode_entry(m.entries[0]),
        "dirs": dirs,
        "sections": sections,
        "links": order,
        "xattrs": any(e.xattrs for e in m.entries),
    }


def _encode_member(e: Entry, renumber: dict[int, int]) -> list:
    fields = _encode_entry(e)
    fields[0] = fields[0].rpartition(b"/")[2]
    fields[10] = renumber.get(e.link_group, 0)
    return fields


def _firsts(counts: list[int]) -> list[int]:
    """The number of each section's first entry (the root is entry 0)."""
    return [1 + n for n in itertools.accumulate(counts, initial=0)][:-1]


# -- reading -------------------------------------------------------------------------------


class Section:
    """One decoded directory listing: names ascending, and the entries in that order."""

    __slots__ = ("names", "entries", "listed")

    def __init__(self, names: list[bytes], entries: tuple[Entry, ...]) -> None:
        self.names, self.entries = names, entries
        self.listed: object = None  # a reader's own form of the listing, kept as long as this


class DirManifest:
    """A format-2 manifest opened for lookups: a directory is decoded and checked the first
    time it is asked for. Offers what a mount needs of a ``Manifest`` (``header``,
    ``chunks``, ``data_size``) and entries by number."""

    def __init__(self, doc: dict, max_decoded: int | None = None) -> None:
        """``doc``: the unpacked top level of a format-2 manifest (``manifest.unpack``).
        ``max_decoded``: entries kept decoded; past it, the directories decoded longest ago
        are dropped (and decoded again if asked for); default ``MAX_DECODED``."""
        self.max_decoded = MAX_DECODED if max_decoded is None else max_decoded
        with _no_cyclic_gc():
            self._open(doc)

    def _open(self, doc: dict) -> None:
        _check(set(doc) == set(KEYS), f"fields {sorted(map(repr, set(doc) ^ set(KEYS)))} "
               "missing or unexpected")
        _check(isinstance(doc["chunker"], dict) and isinstance(doc["source"], str)
               and doc["kind"] in KINDS, "bad header")
        self.header = Header(doc["kind"], doc["source"], doc["chunker"],
                             _int(doc["created"], -_I64, _I64 - 1, "created"))
        chunks, dirs, sections, links = (doc[k] for k in ("chunks", "dirs", "sections", "links"))
        _check(all(isinstance(x, list) for x in (chunks, dirs, sections, links)),
               "chunks, dirs, sections or links not lists")
        _check(len(chunks) <= MAX_ENTRIES and len(dirs) == len(sections) <= MAX_ENTRIES,
               "too many chunks or directories, or a directory without its section")
        _check(type(doc["xattrs"]) is bool, "xattrs is not a boolean")
        self.has_xattrs = doc["xattrs"]
        self.chunks = tuple(_decode_chunk(c, i) for i, c in enumerate(chunks))
        self._chunk_sizes = [c.size for c in self.chunks]
        self.data_size = sum(self._chunk_sizes)
        self.root = root = _decode_entry(doc["root"], 0)
        _check(root.path == "" and root.type == DIR, "the root entry is not a directory")
        if not _entry_ok(root, []):
            _check_entry(root, self.chunks, "the root entry")
        _check(self.has_xattrs or not root.xattrs, "the root has xattrs in an image that says "
               "it has none")
        self._paths, self._child_rows, counts = _open_dirs(dirs)
        _check(all(type(s) is bytes for s in sections), "a section is not bytes")
        self._raw = sections
        self._counts = counts
        self._first = _firsts(counts)
        self.entry_count = 1 + sum(counts)
        _check(self.entry_count <= MAX_ENTRIES, "too many entries")
        self._group_of = _open_links(links, self.entry_count)
        self._links = links
        self._sections: dict[int, Section] = {}  # in the order decoded, oldest first
        self._decoded = 0  # entries in _sections
        self._largest = 0  # entries of the largest section decoded so far
        self._dir_section = {0: 0}  # entry number of a directory -> its section
        # section -> {member's number: (its first member's number, the member)}: see
        # _check_links; keyed by member, so a directory decoded again waits once
        self._waiting: dict[int, dict[int, tuple[int, Entry]]] = {}
        self._lock = threading.Lock()  # one decode at a time: _waiting stays whole
        self.label = ""  # what names this manifest in the error of a directory's checks

    # -- what a mount asks ------------------------------------------------------------------

    @property
    def decoded_sections(self) -> int:
        """How many directories are decoded so far."""
        return len(self._sections)

    def entry(self, k: int) -> Entry:
        """Entry number ``k`` (IndexError if there is none)."""
        if k == 0:
            return self.root
        if not 0 < k < self.entry_count:
            raise IndexError(k)
        s = bisect.bisect_right(self._first, k) - 1
        return self.section(s).entries[k - self._first[s]]

    def listing(self, k: int) -> tuple[int, Section] | None:
        """``(number of its first entry, section)`` of directory ``k``; None if ``k`` is not
        a directory."""
        if self.entry(k).type != DIR:
            return None
        s = self._dir_section[k]  # noted when the section holding k decoded, in entry(k)
        return self._first[s], self.section(s)

    def listing_cost(self, k: int, decode: bool = False) -> int:
        """Packed bytes of directory ``k``'s listing not decoded yet (0 if it is, or if ``k``
        is not a directory); ``decode``: decode it now."""
        if self.entry(k).type != DIR:
            return 0
        s = self._dir_section[k]
        if s in self._sections:
            return 0
        if decode:
            self.section(s)
        return len(self._raw[s])

    def subdirs(self, k: int) -> int:
        """How many directories directory ``k`` holds (for its link count), from the
        directory table: ``k``'s own listing stays undecoded (``ls -l`` of a thousand
        directories must not decode each of them)."""
        if self.entry(k).type != DIR:
            return 0
        return len(self._child_rows.get(self._dir_section[k], ()))

    def head(self, k: int) -> int:
        """The entry whose inode ``k`` shares: its hard-link group's first, else ``k``."""
        g = self._group_of.get(k)
        return k if g is None else self._links[g - 1][0]

    def links(self, k: int) -> int:
        """How many names ``k``'s inode has (1 unless hard-linked)."""
        g = self._group_of.get(k)
        return 1 if g is None else len(self._links[g - 1])

    def section(self, s: int) -> Section:
        found = self._sections.get(s)
        if found is None:
            with self._lock, _no_cyclic_gc():
                found = self._sections.get(s)
                if found is None:
                    try:
                        found = self._decode_section(s)
                    except ManifestInvalid as exc:
                        if not self.label:
                            raise
                        raise ManifestInvalid(f"{self.label}: {exc}") from None
                    self._sections[s] = found
                    self._decoded += len(found.entries)
                    self._largest = max(self._largest, len(found.entries))
                    self._evict()
        return found

    def _evict(self) -> None:
        """Drop the directories decoded longest ago while over the bound, but never the one
        decoded last (under the lock: readers only ``get``). The bound is ``max_decoded``
        entries, or twice the largest directory decoded: a directory bigger than the bound
        and the small ones read along with it (a hard link's first member, a subdirectory)
        must not keep pushing each other out, each push a decode of the big one again."""
        limit = max(self.max_decoded, 2 * self._largest)
        while self._decoded > limit and len(self._sections) > 1:
            oldest = next(iter(self._sections))
            self._decoded -= len(self._sections.pop(oldest).entries)

    # -- checks -----------------------------------------------------------------------------

    def _decode_section(self, s: int) -> Section:
        where = f"directory {self._paths[s]!r}"
        try:
            raw = msgpack.unpackb(self._raw[s], raw=False, use_list=True, strict_map_key=True)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            raise ManifestInvalid(f"invalid manifest: {where}: not msgpack") from None
        except UnicodeDecodeError:
            raise ManifestInvalid(f"invalid manifest: {where}: a text field is not UTF-8"
                                  ) from None
        _check(isinstance(raw, list) and len(raw) == self._counts[s],
               f"{where}: not a list of {self._counts[s]} entries")
        prefix = self._paths[s] + b"/" if s else b""
        names: list[bytes] = []
        entries: list[Entry] = []
        first = self._first[s]
        for k, fields in enumerate(raw, first):
            name = fields[0] if isinstance(fields, list) and fields else None
            _check(type(name) is bytes and _good_name(name)
                   and len(prefix) + len(name) <= MAX_PATH
                   and (not names or name > names[-1]),
                   f"{where}: entry {k - first}: bad, unsorted or repeated name {name!r}")
            fields[0] = prefix + name
            e = _decode_entry(fields, k)
            if not _entry_ok(e, self._chunk_sizes):
                _check_entry(e, self.chunks, f"entry {k} ({e.path!r})")
            _check(self.has_xattrs or not e.xattrs, f"entry {k} ({e.path!r}): xattrs in an "
                   "image that says it has none")
            _check(e.link_group == self._group_of.get(k, 0),
                   f"entry {k} ({e.path!r}): not in the hard-link group the links name")
            names.append(name)
            entries.append(e)
        self._check_subdirs(s, first, names, entries)
        self._check_links(s, first, entries)
        return Section(names, tuple(entries))

    def _check_subdirs(self, s: int, first: int, names: list[bytes],
                       entries: list[Entry]) -> None:
        """The directories of section ``s`` are exactly the ``dirs`` rows that name ``s``
        as their parent, in the same order; note each one's section."""
        found = [(k, n) for k, (n, e) in enumerate(zip(names, entries, strict=True), first)
                 if e.type == DIR]
        rows = self._child_rows.get(s, ())
        _check([n for _, n in found] == [self._paths[r].rpartition(b"/")[2] for r in rows],
               f"directory {self._paths[s]!r}: its directories do not match the dirs table")
        for (k, _), r in zip(found, rows, strict=True):
            self._dir_section[k] = r

    def _check_links(self, s: int, first: int, entries: list[Entry]) -> None:
        """A hard link's fields against its group's first member (its inode), where both
        are decoded; a member whose first lies in a section not decoded yet waits for that
        section (no recursion: a chain of them may cross every directory)."""
        end = first + len(entries)
        # members elsewhere whose first is in this section, then this section's own
        here = list(self._waiting.get(s, {}).values())
        for k, e in enumerate(entries, first):
            head = self._links[e.link_group - 1][0] if e.link_group else k
            if head == k:
                continue
            if first <= head < end:
                here.append((head, e))
                continue
            t = bisect.bisect_right(self._first, head) - 1
            done = self._sections.get(t)
            if done is None:
                self._waiting.setdefault(t, {})[k] = (head, e)
            else:
                _same_inode(e, done.entries[head - self._first[t]])
        for head, e in here:
            _same_inode(e, entries[head - first])
        self._waiting.pop(s, None)  # only once they pass: a failed section fails again


def _same_inode(e: Entry, head: Entry) -> None:
    _check(_inode_fields(e) == _inode_fields(head), f"hard-link group {e.link_group} differs")


def _good_name(name: bytes) -> bool:
    return (0 < len(name) <= 255 and name not in (b".", b"..") and b"/" not in name
            and b"\0" not in name)


def _open_dirs(dirs: list) -> tuple[list[bytes], dict[int, list[int]], list[int]]:
    """Check the directory table; each row's path, the rows of each row's subdirectories,
    and the entry count of each."""
    head = dirs[0] if dirs else None
    _check(isinstance(head, list) and len(head) == 3 and head[:2] == [0, b""],
           "the first directory is not the root")
    paths: list[bytes] = [b""]
    keys: list[tuple[bytes, ...]] = [()]
    children: dict[int, list[int]] = {}
    counts = [_int(head[2], 0, MAX_ENTRIES, "root directory count")]
    # Each check's message is formatted only when it fails: formatting three per row was
    # nearly half of what opening a 1,400-directory manifest took (4.4 -> 2.5 ms).
    for i, row in enumerate(itertools.islice(dirs, 1, None), 1):
        if not (type(row) is list and len(row) == 3):
            _check(False, f"directory {i} is not [parent, name, count]")
        parent, name, count = row
        if not (type(count) is int and 0 <= count <= MAX_ENTRIES and type(parent) is int
                and 0 <= parent < i and type(name) is bytes and _good_name(name)):
            _int(count, 0, MAX_ENTRIES, f"directory {i} count")
            _check(False, f"directory {i}: bad parent or name")
        counts.append(count)
        key = keys[parent] + (name,)
        path = paths[parent] + b"/" + name if parent else name
        if not (key > keys[-1] and len(path) <= MAX_PATH):
            _check(False, f"directory {path!r}: not in path order, repeated or too long")
        paths.append(path)
        keys.append(key)
        children.setdefault(parent, []).append(i)
    _check(all(len(rows) <= counts[p] for p, rows in children.items()),
           "a directory holds more directories than entries")
    return paths, children, counts


def _open_links(links: list, entry_count: int) -> dict[int, int]:
    """Check the hard-link groups; entry number -> group."""
    group_of: dict[int, int] = {}
    prev = 0
    for g, members in enumerate(links, 1):
        _check(isinstance(members, list) and len(members) > 1
               and all(type(k) is int for k in members)
               and members == sorted(set(members)) and members[0] > prev
               and 0 < members[0] and members[-1] < entry_count,
               f"hard-link group {g} is malformed or out of order")
        prev = members[0]
        for k in members:
            _check(k not in group_of, f"entry {k} is in two hard-link groups")
            group_of[k] = g
    return group_of


def open_dir_manifest(data: bytes) -> DirManifest:
    """Manifest bytes (already decompressed) opened for lookups: format 2 as it is, a
    section decoded when first asked for; format 1 decoded whole (it cannot be read in
    parts) and then laid out as format 2. Raises ManifestInvalid."""
    doc = unpack(data)
    if doc["version"] == 1:
        with _no_cyclic_gc():
            whole = _decode_v1(doc)
        return as_dir_manifest(whole)
    return DirManifest(doc)


def decode_v2(doc: dict) -> Manifest:
    """Every entry of a format-2 manifest, checked, as a format-1 ``Manifest`` (entries in
    path order)."""
    dm = DirManifest(doc, max_decoded=MAX_ENTRIES)  # keep all: a hard link's check may wait
    with _no_cyclic_gc():
        out = [dm.root]
        first, section = dm.listing(0)
        # a stack of listings still being walked, each reversed: pop() is the next entry
        pending = [list(enumerate(section.entries, first))[::-1]]
        while pending:
            top = pending[-1]
            if not top:
                pending.pop()
                continue
            k, e = top.pop()
            out.append(e)
            if e.type == DIR:
                first, section = dm.listing(k)
                pending.append(list(enumerate(section.entries, first))[::-1])
        _check(len(out) == dm.entry_count, "a section is not reached from the root")
        _check(dm.has_xattrs == any(e.xattrs for e in out), "the xattrs flag is wrong")
    # Every check of validate() held, section by section, on the way; the walk from the
    # root in name order gives path order, so it is not run again.
    return Manifest(dm.header, dm.chunks, tuple(out))


def as_dir_manifest(m: Manifest) -> DirManifest:
    """A format-1 manifest (decoded already) in the form a mount reads."""
    return DirManifest(_doc_v2(m))


# What a mount's code that needs only the header and chunks accepts: a mount's trees hold a
# DirManifest, the commands and tests a Manifest.
AnyManifest = Manifest | DirManifest

__all__ = ["AnyManifest", "DirManifest", "Section", "as_dir_manifest",
           "decode_v2", "encode_v2", "open_dir_manifest"]
