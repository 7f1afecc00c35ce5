"""The manifest codec and its validation: pure, no store."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from blobstore.errors import EntryNotFound, ManifestInvalid
from blobstore.image.manifest import (
    DIR,
    FILE,
    SYMLINK,
    ChunkRef,
    Entry,
    FileSpans,
    Header,
    Manifest,
    Span,
    decode,
    encode,
    encode_v1,
    manifest_id,
    stream_spans,
)

DATA = Path(__file__).parent / "data"
A, B = "a" * 64, "b" * 64


def sample() -> Manifest:
    chunks = (ChunkRef(A, 100, 60), ChunkRef(B, 50, 51))
    entries = (
        Entry("", DIR, 0o755, 0, 0, 1),
        Entry("bin", DIR, 0o755, 0, 0, 2),
        Entry("bin/sh", FILE, 0o4755, 0, 0, 3, 120, spans=(Span(0, 10, 90), Span(1, 0, 30)),
              xattrs=((b"security.capability", b"\x01"),), link_group=1),
        Entry("bin/sh2", FILE, 0o4755, 0, 0, 3, 120, spans=(Span(0, 10, 90), Span(1, 0, 30)),
              xattrs=((b"security.capability", b"\x01"),), link_group=1),
        Entry("lib", SYMLINK, 0o777, 0, 0, 4, 7, target="usr/lib"),
    )
    return Manifest(Header("image", "tar", {"algorithm": "fastcdc"}, 5), chunks, entries)


def replace_entry(m: Manifest, i: int, **changes) -> Manifest:
    entries = list(m.entries)
    entries[i] = entries[i]._replace(**changes)
    return Manifest(m.header, m.chunks, tuple(entries))


def test_round_trip_is_canonical():
    m = sample()
    raw = encode(m)
    again = decode(raw)
    assert again == m
    assert encode(again) == raw
    assert manifest_id(again) == manifest_id(m)


def test_lookup_by_path():
    m = sample()
    assert m.entry("/bin/sh").size == 120
    assert m.index_of("") == 0
    with pytest.raises(EntryNotFound, match="no 'nope' in the image"):
        m.entry("nope")


@pytest.mark.parametrize("change, message", [
    (dict(size=121), "spans' sum"),
    (dict(spans=(Span(5, 0, 120),)), "outside the chunks"),
    (dict(spans=(Span(0, 90, 30), Span(1, 0, 90))), "past its chunk"),
    (dict(path="bin/../etc"), "not normalised"),
    (dict(path="bin//x"), "not normalised"),
    (dict(type="?"), "unknown type"),
    (dict(rdev=5), "rdev on a non-device"),
    (dict(xattrs=((b"b", b""), (b"a", b""))), "xattr names"),
])
def test_invalid_entries_are_refused(change, message):
    with pytest.raises(ManifestInvalid, match=message):
        encode(replace_entry(sample(), 2, **change))


def plain() -> Manifest:
    """No xattrs: every entry takes validate's fast path."""
    chunks = (ChunkRef(A, 100, 60), ChunkRef(B, 50, 51))
    entries = (
        Entry("", DIR, 0o755, 0, 0, 1),
        Entry("bin", DIR, 0o755, 0, 0, 2),
        Entry("bin/sh", FILE, 0o755, 0, 0, 3, 120, spans=(Span(0, 10, 90), Span(1, 0, 30))),
        Entry("lib", SYMLINK, 0o777, 0, 0, 4, 7, target="usr/lib"),
    )
    return Manifest(Header("image", "tar", {}, 5), chunks, entries)


@pytest.mark.parametrize("index, change, message", [
    (2, dict(size=121), "spans' sum"),
    (2, dict(spans=(Span(5, 0, 120),)), "outside the chunks"),
    (2, dict(spans=(Span(0, 90, 30), Span(1, 0, 90))), "past its chunk"),
    (2, dict(spans=(Span(0, 0, 0), Span(0, 10, 90), Span(1, 0, 30))), "outside the chunks"),
    (2, dict(target="x"), "link target on a non-symlink"),
    (2, dict(rdev=5), "rdev on a non-device"),
    (2, dict(path="bin/."), "not normalised"),
    (2, dict(path="bin/.."), "not normalised"),
    (2, dict(path="bin/" + "x" * 256), "not normalised"),
    (2, dict(path="bin/a\0b"), "NUL in path"),
    (3, dict(path="/lib"), "not normalised"),
    (3, dict(path="lib/"), "not normalised"),
    (3, dict(size=8), "target's length"),
    (3, dict(spans=(Span(0, 0, 7),)), "only regular files"),
    (3, dict(target="", size=0), "bad symlink target"),
    (1, dict(size=1), "size on a 'd' entry"),
    (1, dict(link_group=2), "hard-linked directory"),
])
def test_invalid_entries_without_xattrs_are_refused(index, change, message):
    encode(plain())  # valid as it is
    with pytest.raises(ManifestInvalid, match=message):
        encode(replace_entry(plain(), index, **change))


def test_a_path_longer_than_4096_bytes_is_refused():
    dirs = [("d" * 200 + str(i)) for i in range(21)]
    entries = [Entry("", DIR, 0o755, 0, 0, 1)]
    for k in range(1, len(dirs) + 1):
        entries.append(Entry("/".join(dirs[:k]), DIR, 0o755, 0, 0, 1))
    m = Manifest(Header("image", "tar", {}, 5), (), tuple(entries[:20]))
    encode(m)  # 19 levels: 3,837 bytes
    with pytest.raises(ManifestInvalid, match="path too long"):
        encode(Manifest(m.header, (), tuple(entries)))


def test_parent_must_exist_and_order_hold():
    m = sample()
    orphan = Manifest(m.header, m.chunks, m.entries[:1] + m.entries[2:3])
    with pytest.raises(ManifestInvalid, match="parent directory missing"):
        encode(orphan)
    swapped = Manifest(m.header, m.chunks, (m.entries[0], m.entries[4], m.entries[1]))
    with pytest.raises(ManifestInvalid, match="not sorted"):
        encode(swapped)


def test_hard_link_group_must_agree():
    with pytest.raises(ManifestInvalid, match="group 1 differs"):
        encode(replace_entry(sample(), 3, mode=0o755))


@pytest.mark.parametrize("doc_change, message", [
    (lambda d: d.update(version=3), "format version 3"),
    (lambda d: d.pop("chunks"), "missing or unexpected"),
    (lambda d: d["entries"][2].__setitem__(2, -1), "mode must be"),
    (lambda d: d["chunks"][0].__setitem__(0, b"short"), "malformed id"),
    (lambda d: d["entries"].pop(0), "root directory"),
])
def test_decode_refuses_malformed_documents(doc_change, message):
    doc = msgpack.unpackb(encode_v1(sample()), raw=False)
    doc_change(doc)
    with pytest.raises(ManifestInvalid, match=message):
        decode(msgpack.packb(doc, use_bin_type=True))


@pytest.mark.parametrize("raw", [b"", b"\xc1", b"\x93\x01\x02", msgpack.packb([1, 2])])
def test_decode_refuses_garbage(raw):
    with pytest.raises(ManifestInvalid):
        decode(raw)


@pytest.mark.parametrize("name, message", [
    ("truncated.msgpack", "not msgpack"),
    ("wrong-version.msgpack", "format version"),
    ("dotdot-path.msgpack", "not normalised"),
])
def test_golden_bad_files(name, message):
    with pytest.raises(ManifestInvalid, match=message):
        decode((DATA / name).read_bytes())


@pytest.mark.parametrize("name, encoder", [("valid.msgpack", encode_v1),
                                           ("valid-v2.msgpack", encode)])
def test_golden_valid_file_keeps_its_id(name, encoder):
    """The encoding is a format: the same manifest must keep the same bytes and id; a
    manifest of format 1 (pushed by an older thaw) still reads."""
    raw = (DATA / name).read_bytes()
    assert encoder(decode(raw)) == raw
    assert decode(raw) == sample()


def test_spans_lookup():
    e = sample().entries[2]
    assert FileSpans(e.spans).lookup(0, 120) == [Span(0, 10, 90), Span(1, 0, 30)]
    assert FileSpans(e.spans).lookup(85, 10) == [Span(0, 95, 5), Span(1, 0, 5)]
    assert FileSpans(e.spans).lookup(100, 1000) == [Span(1, 10, 20)]
    assert FileSpans(e.spans).lookup(120, 10) == []
    assert FileSpans(()).lookup(0, 10) == []


def test_stream_spans_cut_at_chunk_boundaries():
    starts, sizes = [0, 100, 150], [100, 50, 70]
    assert stream_spans(90, 100, starts, sizes) == (Span(0, 90, 10), Span(1, 0, 50),
                                                    Span(2, 0, 40))
    assert stream_spans(100, 50, starts, sizes) == (Span(1, 0, 50),)
