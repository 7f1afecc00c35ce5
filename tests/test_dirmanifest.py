"""Manifest format 2: canonical, read a directory at a time, and every check of format 1
holding for whatever a lazy reader returns."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blobstore.errors import ManifestInvalid
from blobstore.image.dirmanifest import DirManifest, decode_v2, encode_v2, open_dir_manifest
from blobstore.image.manifest import (
    DIR,
    FILE,
    SYMLINK,
    ChunkRef,
    Entry,
    Header,
    Manifest,
    Span,
    decode,
    encode_v1,
    path_key,
)

A = "a" * 64


def tree(*entries: Entry) -> Manifest:
    return Manifest(Header("image", "dir", {}, 7), (ChunkRef(A, 1000, 500),),
                    (Entry("", DIR, 0o755, 0, 0, 1), *entries))


def f(path: str, start: int = 0, size: int = 10, group: int = 0, mode: int = 0o644) -> Entry:
    return Entry(path, FILE, mode, 0, 0, 2, size, spans=(Span(0, start, size),),
                 link_group=group)


def d(path: str) -> Entry:
    return Entry(path, DIR, 0o755, 0, 0, 3)


def sample() -> Manifest:
    return tree(d("a"), f("a/x", group=1), d("a/z"), f("a/z/q", 20), d("b"),
                Entry("b/link", SYMLINK, 0o777, 0, 0, 4, 4, target="../a"),
                f("b/y", group=1), Entry("c", FILE, 0o600, 1, 1, 5, 5, spans=(Span(0, 40, 5),),
                      xattrs=((b"user.k", b"v"),)))


def doc_of(m: Manifest) -> dict:
    return msgpack.unpackb(encode_v2(m), raw=False)


def pack(doc: dict) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)


def section(doc: dict, s: int) -> list:
    return msgpack.unpackb(doc["sections"][s], raw=False)


def set_section(doc: dict, s: int, entries: list) -> None:
    doc["sections"][s] = msgpack.packb(entries, use_bin_type=True)


def walk(dm: DirManifest, k: int = 0) -> list[str]:
    """Every path under directory ``k``, depth first, decoding every section."""
    first, sec = dm.listing(k)
    out = []
    for j, e in enumerate(sec.entries, first):
        out.append(e.path)
        if e.type == DIR:
            out += walk(dm, j)
    return out


def test_round_trip_gives_the_same_manifest_as_format_1():
    m = sample()
    assert decode(encode_v2(m)) == m == decode(encode_v1(m))
    assert encode_v2(decode(encode_v2(m))) == encode_v2(m)


def test_hard_link_groups_are_renumbered_so_the_bytes_are_canonical():
    m = sample()
    renumbered = Manifest(m.header, m.chunks, tuple(
        e._replace(link_group=9) if e.link_group else e for e in m.entries))
    assert encode_v2(renumbered) == encode_v2(m)
    assert decode(encode_v2(renumbered)) == m  # groups numbered by their first member


def test_opening_decodes_no_directory_and_a_lookup_only_those_on_its_way():
    dm = open_dir_manifest(encode_v2(sample()))
    assert dm.decoded_sections == 0
    assert dm.entry_count == 9 and dm.data_size == 1000 and dm.has_xattrs
    first, root = dm.listing(0)
    assert root.names == [b"a", b"b", b"c"] and dm.decoded_sections == 1
    first_a, a = dm.listing(first)  # "a"
    assert [e.path for e in a.entries] == ["a/x", "a/z"] and dm.decoded_sections == 2
    assert dm.subdirs(0) == 2 and dm.subdirs(first) == 1


def test_a_format_1_manifest_opens_the_same_way():
    dm = open_dir_manifest(encode_v1(sample()))
    assert walk(dm) == [e.path for e in sample().entries[1:]]


def test_the_names_of_a_hard_link_resolve_to_the_group_s_first_entry():
    dm = open_dir_manifest(encode_v2(sample()))
    paths = {e: k for k in range(dm.entry_count) for e in [dm.entry(k).path]}
    assert dm.head(paths["a/x"]) == paths["a/x"] and dm.links(paths["a/x"]) == 2
    assert dm.head(paths["b/y"]) == paths["a/x"] and dm.links(paths["b/y"]) == 2
    assert dm.head(paths["c"]) == paths["c"] and dm.links(paths["c"]) == 1


def bad_section_name(doc):
    entries = section(doc, 0)
    entries[0][0] = b".."
    set_section(doc, 0, entries)


def unsorted_names(doc):
    set_section(doc, 0, section(doc, 0)[::-1])


def wrong_count(doc):
    doc["dirs"][0][2] += 1


def dir_missing_from_table(doc):
    doc["dirs"][2][1] = b"zz"  # "a/z" is not in the table, "a/zz" is in no listing


def dirs_out_of_order(doc):
    doc["dirs"][1], doc["dirs"][3] = doc["dirs"][3], doc["dirs"][1]
    doc["sections"][1], doc["sections"][3] = doc["sections"][3], doc["sections"][1]


def not_in_its_group(doc):
    doc["links"] = []


def hard_links_differ(doc):
    entries = section(doc, 3)  # b: link, y
    entries[1][2] = 0o600
    set_section(doc, 3, entries)


def xattrs_flag_lies(doc):
    doc["xattrs"] = False


def section_garbage(doc):
    doc["sections"][1] = b"\xc1"


def span_past_chunk(doc):
    entries = section(doc, 2)  # a/z: q
    entries[0][11] = [0, 995, 10]
    set_section(doc, 2, entries)


@pytest.mark.parametrize("change, message", [
    (bad_section_name, "bad, unsorted or repeated name"),
    (unsorted_names, "bad, unsorted or repeated name"),
    (wrong_count, "not a list of 4 entries"),
    (dir_missing_from_table, "do not match the dirs table"),
    (dirs_out_of_order, "not in path order"),
    (not_in_its_group, "not in the hard-link group"),
    (hard_links_differ, "hard-link group 1 differs"),
    (xattrs_flag_lies, "xattrs in an image that says it has none"),
    (section_garbage, "not msgpack"),
    (span_past_chunk, "span past its chunk"),
])
def test_a_malformed_manifest_is_refused_whole_and_where_a_lazy_reader_meets_it(
        change, message):
    doc = doc_of(sample())
    change(doc)
    with pytest.raises(ManifestInvalid, match=message):
        decode(pack(doc))
    with pytest.raises(ManifestInvalid, match=message):
        walk(open_dir_manifest(pack(doc)))


def test_a_bad_directory_spoils_only_itself_for_a_lazy_reader():
    doc = doc_of(sample())
    span_past_chunk(doc)
    dm = open_dir_manifest(pack(doc))
    first, root = dm.listing(0)
    assert dm.listing(first + 1)[1].names == [b"link", b"y"]  # "b" reads
    a = dm.listing(first)
    with pytest.raises(ManifestInvalid, match="span past its chunk"):
        dm.listing(a[0] + 1)  # "a/z"
    with pytest.raises(ManifestInvalid):
        dm.listing(a[0] + 1)  # and again: never cached


def test_a_chain_of_hard_links_through_every_directory_needs_no_recursion():
    """Each directory's link has its group's first entry in the directory before it, so
    checking them one by one from the last would recurse through all of them."""
    n = 3000
    entries: list[Entry] = []
    for i in range(n):
        entries += [d(f"d{i:05}"), f(f"d{i:05}/a", group=i + 1)]
        if i:
            entries.append(f(f"d{i:05}/b", group=i))
    entries.append(f(f"d{n:05}", group=n))
    dm = open_dir_manifest(encode_v2(tree(*entries)))
    first, root = dm.listing(0)
    last = dm.listing(first + n - 1)
    assert last[1].names == [b"a", b"b"]
    assert len(walk(dm)) == len(entries)


@pytest.mark.parametrize("doc_change, message", [
    (lambda doc: doc.pop("links"), "missing or unexpected"),
    (lambda doc: doc["dirs"].__setitem__(0, [1, b"", 3]), "not the root"),
    (lambda doc: doc["dirs"][2].__setitem__(0, 5), "bad parent or name"),
    (lambda doc: doc["dirs"][2].__setitem__(1, b"a/b"), "bad parent or name"),
    (lambda doc: doc["dirs"][2].__setitem__(2, -1), "directory 2 count must be"),
    (lambda doc: doc["dirs"][2].append(0), r"directory 2 is not \[parent"),
    (lambda doc: doc["chunks"][0].__setitem__(1, 0), "chunk 0 size must be"),
    (lambda doc: doc["chunks"][0].__setitem__(0, "x" * 32), "chunk 0 has a malformed id"),
    (lambda doc: doc["links"].append([1, 1]), "malformed or out of order"),
    (lambda doc: doc["links"].__setitem__(0, [3, 2]), "malformed or out of order"),
    (lambda doc: doc["sections"].pop(), "without its section"),
    (lambda doc: doc.__setitem__("xattrs", 1), "not a boolean"),
    (lambda doc: doc["root"].__setitem__(1, "f"), "root entry is not a directory"),
])
def test_the_top_level_is_checked_whole_when_opened(doc_change, message):
    doc = doc_of(sample())
    doc_change(doc)
    with pytest.raises(ManifestInvalid, match=message):
        open_dir_manifest(pack(doc))


def test_a_format_2_manifest_with_no_files():
    dm = open_dir_manifest(encode_v2(Manifest(Header(), (), (d(""),))))
    assert dm.entry_count == 1 and dm.listing(0)[1].names == []
    assert decode_v2(msgpack.unpackb(encode_v2(Manifest(Header(), (), (d(""),))),
                                     raw=False)).entries == (d(""),)


@st.composite
def trees(draw) -> Manifest:
    """Random trees: nested directories, files, symlinks and hard links across them."""
    names = st.text("abz.-é", min_size=1, max_size=3).filter(lambda n: n not in (".", ".."))
    paths = {""}
    dirs = [""]
    for _ in range(draw(st.integers(0, 25))):
        parent = draw(st.sampled_from(dirs))
        path = f"{parent}/{draw(names)}" if parent else draw(names)
        if path not in paths:
            paths.add(path)
            if draw(st.booleans()):
                dirs.append(path)
    files = sorted(p for p in paths if p and p not in dirs)
    groups = {p: draw(st.integers(0, 3)) for p in files}  # 0: no hard link
    entries = [d(p) for p in dirs]
    for p in files:
        g = groups[p] if list(groups.values()).count(groups[p]) > 1 else 0
        entries.append(f(p, 0 if g else 10, 10, group=g) if g or draw(st.booleans()) else
                       Entry(p, SYMLINK, 0o777, 0, 0, 4, 1, target="x"))
    return Manifest(Header(), (ChunkRef(A, 1000, 500),),
                    tuple(sorted(entries, key=lambda e: path_key(e.path))))


def groups_of(m: Manifest) -> set[frozenset[str]]:
    by: dict[int, set[str]] = {}
    for e in m.entries:
        if e.link_group:
            by.setdefault(e.link_group, set()).add(e.path)
    return {frozenset(v) for v in by.values()}


@settings(max_examples=300, deadline=None)
@given(trees())
def test_any_tree_round_trips_and_reads_lazily_as_it_decodes(m):
    raw = encode_v2(m)
    whole = decode(raw)
    plain = [e._replace(link_group=0) for e in m.entries]
    assert [e._replace(link_group=0) for e in whole.entries] == plain
    assert groups_of(whole) == groups_of(m)
    assert encode_v2(whole) == raw
    assert walk(open_dir_manifest(raw)) == [e.path for e in whole.entries[1:]]


def test_a_directory_s_link_count_needs_no_decode_of_its_listing():
    dm = open_dir_manifest(encode_v2(sample()))
    first, _ = dm.listing(0)
    assert dm.subdirs(first) == 1  # "a" holds "a/z"
    assert dm.decoded_sections == 1  # the root's only


def test_past_its_bound_a_reader_drops_the_directories_decoded_longest_ago():
    entries = []
    for i in range(20):
        entries += [d(f"d{i:02}"), f(f"d{i:02}/a", group=i + 1), f(f"d{i:02}/b", group=i + 1)]
    raw = encode_v2(tree(*entries))
    dm = DirManifest(msgpack.unpackb(raw, raw=False), max_decoded=7)
    paths = walk(dm)  # 20 directories of 2 entries and the root's 20
    assert paths == [e.path for e in decode(raw).entries[1:]]
    assert dm.decoded_sections <= 11  # 40 entries at most: twice the largest directory
    first, root = dm.listing(0)  # dropped by now: decoded (and checked) again
    assert root.names[0] == b"d00"
    assert walk(dm) == paths


def test_a_hard_link_check_waits_for_its_first_member_even_after_a_drop():
    doc = doc_of(tree(d("a"), f("a/x", group=1), d("b"), f("b/y", group=1)))
    y = section(doc, 2)
    y[0][2] = 0o600  # "b/y" differs from "a/x"
    set_section(doc, 2, y)
    dm = DirManifest(doc, max_decoded=1)
    first, _ = dm.listing(0)
    dm.listing(first + 1)  # "b": its link's first member, in "a", is not decoded yet
    for _ in range(2):  # and again: the check is not used up by failing
        with pytest.raises(ManifestInvalid, match="hard-link group 1 differs"):
            dm.listing(first)  # "a"


def test_a_whole_decode_checks_hard_links_however_far_apart(monkeypatch):
    """With a reader's bound, the first member's directory would be dropped before the
    member's is decoded, and the member's check would wait for good."""
    import blobstore.image.dirmanifest as dirmanifest

    monkeypatch.setattr(dirmanifest, "MAX_DECODED", 1)
    entries = [d("a"), f("a/x", group=1)] + [d(f"m{i}") for i in range(5)]
    entries += [d("z"), f("z/y", group=1)]
    doc = doc_of(tree(*entries))
    y = section(doc, len(doc["dirs"]) - 1)
    y[0][2] = 0o600
    set_section(doc, len(doc["dirs"]) - 1, y)
    with pytest.raises(ManifestInvalid, match="hard-link group 1 differs"):
        decode(pack(doc))


def test_a_directory_bigger_than_the_bound_is_not_pushed_out_by_small_ones():
    entries = [d("big")] + [f(f"big/f{i}") for i in range(6)] + [d(f"s{i}") for i in range(4)]
    dm = DirManifest(doc_of(tree(*entries)), max_decoded=2)
    first, root = dm.listing(0)
    big = dm.listing(first)[1]
    for j in range(1, 5):
        dm.listing(first + j)  # s0..s3, empty
        assert dm.listing(first)[1] is big  # still decoded: not decoded again
