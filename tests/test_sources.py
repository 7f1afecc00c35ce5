"""Sources: the tree rules, tars, OCI layouts and archives, and hostile input."""

from __future__ import annotations

import gzip
import json
import tarfile

import pytest
import zstandard

from indexer.errors import SourceError
from indexer.sources import open_source
from indexer.tree import Node, TreeBuilder

from .support import docker_archive, member, oci_layout, sha256, tar_bytes


def file_text(tree, path: str) -> bytes:
    with tree.nodes[path].data.open() as f:
        return f.read()


# -- tree rules ------------------------------------------------------------------------------


def test_whiteouts_and_opaque_directories():
    b = TreeBuilder()
    b.new_layer()
    for path in ("etc/a", "etc/b", "var/log/x", "var/log/y", "opt/keep"):
        b.add(path, Node("f", 0o644), "layer 0")
    b.new_layer()
    assert b.whiteout("etc/.wh.a", "layer 1")
    assert b.whiteout("var/log/.wh..wh..opq", "layer 1")
    assert b.whiteout("opt/.wh.missing", "layer 1")
    b.add("var/log/z", Node("f", 0o644), "layer 1")
    assert sorted(b.nodes) == ["", "etc", "etc/b", "opt", "opt/keep", "var", "var/log",
                               "var/log/z"]


def test_replacing_a_directory_with_a_file_drops_its_subtree():
    b = TreeBuilder()
    b.add("d/x/y", Node("f", 0o644), "l0")
    b.new_layer()
    b.add("d/x", Node("f", 0o600), "l1")
    assert sorted(b.nodes) == ["", "d", "d/x"]


def test_duplicates_in_one_layer_are_refused():
    b = TreeBuilder()
    b.add("a", Node("f", 0o644), "l0")
    with pytest.raises(SourceError, match="appears twice"):
        b.add("a", Node("f", 0o644), "l0")


# -- tars ------------------------------------------------------------------------------------


def write(tmp_path, name: str, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("compress", [lambda b: b, gzip.compress,
                                      lambda b: zstandard.ZstdCompressor().compress(b)])
def test_tar_in_any_compression(tmp_path, compress):
    raw = tar_bytes([member("./", type=tarfile.DIRTYPE, mode=0o755),
                     member("./etc/", type=tarfile.DIRTYPE),
                     member("./etc/os-release", b"ID=debian\n"),
                     member("./etc/link", type=tarfile.LNKTYPE, linkname="./etc/os-release")])
    with open_source(str(write(tmp_path, "img.tar", compress(raw)))) as tree:
        assert tree.source == "tar"
        assert file_text(tree, "etc/os-release") == b"ID=debian\n"
        assert tree.nodes["etc/link"] is tree.nodes["etc/os-release"]


HOSTILE = [
    ([member("../evil", b"x")], "climbs out"),
    ([member("/etc/passwd", b"x")], "absolute path"),
    ([member("a", b"1"), member("a", b"2")], "appears twice"),
    ([member("link", type=tarfile.SYMTYPE, linkname="")], "empty or NUL target"),
    ([member("l", type=tarfile.SYMTYPE, linkname="/etc"), member("l/passwd", b"x")],
     "not a directory"),  # an entry that goes through a symlink
    ([member("l", type=tarfile.SYMTYPE, linkname="../.."), member("l/x", b"x")],
     "not a directory"),
    ([member("h", type=tarfile.LNKTYPE, linkname="nowhere")], "no such earlier entry"),
    ([member("h", type=tarfile.LNKTYPE, linkname="../x")], "climbs out"),
    ([member("f", b"x"), member("f/g", b"y")], "not a directory"),
]


@pytest.mark.parametrize("members, message", HOSTILE)
def test_hostile_tars_name_the_entry(tmp_path, members, message):
    path = write(tmp_path, "bad.tar", tar_bytes(members))
    with pytest.raises(SourceError, match=message) as info:
        open_source(str(path))
    assert "entry" in str(info.value) or "bad.tar" in str(info.value)


def test_truncated_tar_is_refused(tmp_path):
    raw = tar_bytes([member("big", b"z" * 100_000)])
    with pytest.raises(SourceError, match="truncated|not a readable tar"):
        open_source(str(write(tmp_path, "t.tar", raw[:50_000])))


def test_absurd_size_is_refused(tmp_path):
    raw = bytearray(tar_bytes([member("big", b"z" * 10)]))
    info = tarfile.TarInfo("huge")
    info.size = 1 << 45
    header = info.tobuf(tarfile.GNU_FORMAT)
    raw[:len(header)] = header
    with pytest.raises(SourceError, match="absurd size|truncated|not a readable"):
        open_source(str(write(tmp_path, "h.tar", bytes(raw))), fmt="tar")


@pytest.mark.parametrize("compress, message", [
    (lambda b: gzip.compress(b)[:-40], "truncated gzip|corrupt or truncated gzip"),
    (lambda b: gzip.compress(b)[:20] + b"\xff" * 50 + gzip.compress(b)[70:], "gzip"),
    (lambda b: zstandard.ZstdCompressor().compress(b)[:-30], "zstd"),
])
def test_corrupt_compression_is_refused(tmp_path, compress, message):
    raw = tar_bytes([member(f"f{i}", bytes([i]) * 5000) for i in range(20)])
    with pytest.raises(SourceError, match=message):
        open_source(str(write(tmp_path, "c.tar.x", compress(raw))))


def test_a_non_tar_file_is_a_single_file_image(tmp_path):
    p = write(tmp_path, "model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with open_source(str(p)) as tree:
        assert tree.kind == "file"
        assert sorted(tree.nodes) == ["", "model.safetensors"]


# -- OCI -------------------------------------------------------------------------------------


def layers():
    base = tar_bytes([member("etc/", type=tarfile.DIRTYPE), member("etc/a", b"base a"),
                      member("etc/b", b"base b"), member("var/", type=tarfile.DIRTYPE),
                      member("var/cache/", type=tarfile.DIRTYPE),
                      member("var/cache/old", b"old")])
    top = tar_bytes([member("etc/.wh.a", b""), member("etc/b", b"top b"),
                     member("var/cache/.wh..wh..opq", b""), member("var/cache/new", b"new")])
    return [base, top]


def test_oci_layout_applies_layers_in_order(tmp_path):
    layout = oci_layout(tmp_path / "oci", layers())
    with open_source(str(layout)) as tree:
        assert tree.source == "oci"
        assert sorted(p for p, n in tree.nodes.items() if n.type == "f") == [
            "etc/b", "var/cache/new"]
        assert file_text(tree, "etc/b") == b"top b"
        assert tree.created_ns == 1704164645_123456789


def test_oci_gzip_layers_and_platform_choice(tmp_path):
    layout = oci_layout(tmp_path / "oci", [gzip.compress(x) for x in layers()],
                        layer_type="application/vnd.oci.image.layer.v1.tar+gzip",
                        platforms=("linux/amd64", "linux/arm64"))
    with open_source(str(layout), platform="linux/arm64") as tree:
        assert file_text(tree, "var/cache/new") == b"new"
    with pytest.raises(SourceError, match="no image for linux/s390x.*linux/amd64"):
        open_source(str(layout), platform="linux/s390x")


def test_oci_archive_tar(tmp_path):
    layout = oci_layout(tmp_path / "oci", layers())
    archive = tmp_path / "img.oci.tar"
    with tarfile.open(archive, "w") as tf:
        for p in sorted(layout.rglob("*")):
            tf.add(p, arcname=str(p.relative_to(layout)), recursive=False)
    with open_source(str(archive)) as tree:
        assert tree.source == "oci"
        assert file_text(tree, "etc/b") == b"top b"


def test_docker_archive(tmp_path):
    paths = [write(tmp_path, f"l{i}.tar", data) for i, data in enumerate(layers())]
    archive = docker_archive(tmp_path / "img.docker.tar", paths)
    with open_source(str(archive)) as tree:
        assert tree.source == "docker-archive"
        assert "etc/a" not in tree.nodes and "var/cache/old" not in tree.nodes


def test_oci_unknown_media_type(tmp_path):
    layout = oci_layout(tmp_path / "oci", layers(), layer_type="application/x-mystery")
    with pytest.raises(SourceError, match="unknown media type 'application/x-mystery'"):
        open_source(str(layout))


def test_oci_missing_blob(tmp_path):
    layout = oci_layout(tmp_path / "oci", layers())
    victim = sha256(layers()[1])[7:]
    (layout / "blobs" / "sha256" / victim).unlink()
    with pytest.raises(SourceError, match=f"missing blobs/sha256/{victim}"):
        open_source(str(layout))


def test_oci_tampered_layer(tmp_path):
    layout = oci_layout(tmp_path / "oci", layers())
    victim = layout / "blobs" / "sha256" / sha256(layers()[0])[7:]
    victim.write_bytes(victim.read_bytes().replace(b"base a", b"evil a"))
    with pytest.raises(SourceError, match="does not match its digest"):
        open_source(str(layout))


def test_oci_malformed_index(tmp_path):
    layout = oci_layout(tmp_path / "oci", layers())
    (layout / "index.json").write_text("{not json")
    with pytest.raises(SourceError, match="index.json is not valid JSON"):
        open_source(str(layout))
    (layout / "index.json").write_text(json.dumps({"manifests": []}))
    with pytest.raises(SourceError, match="lists no manifests"):
        open_source(str(layout))


def test_missing_source(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        open_source(str(tmp_path / "nothing"))


def test_hostile_layer_whiteout_cannot_escape(tmp_path):
    bad = tar_bytes([member("etc/.wh...", b"")])
    layout = oci_layout(tmp_path / "oci", [bad])
    with pytest.raises(SourceError):
        open_source(str(layout))


# -- directories -----------------------------------------------------------------------------


def test_links_that_climb_out_are_kept_verbatim_from_every_source(tmp_path):
    """As docker and podman keep them: data, resolved inside the container's root when read."""
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "shadow").symlink_to("../../../../etc/shadow")
    with open_source(str(tree)) as src:
        assert src.nodes["etc/shadow"].target == "../../../../etc/shadow"
    tar = tmp_path / "t.tar"
    tar.write_bytes(tar_bytes([member("etc/", type=tarfile.DIRTYPE),
                               member("etc/x", type=tarfile.SYMTYPE, linkname="../../y")]))
    with open_source(str(tar)) as src:
        assert src.nodes["etc/x"].target == "../../y"


def _read_bytes() -> int:
    """Bytes this process has passed through read calls (``rchar``)."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def test_a_sparse_file_is_read_by_its_extents_not_hole_by_hole(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    data = bytes(range(256)) * 4096  # 1 MiB
    with open(tree / "disk.img", "wb") as f:
        f.truncate(1 << 30)
        f.seek(300 << 20)
        f.write(data)
        f.seek((1 << 30) - len(data))
        f.write(data)  # data at the very end, after a hole
    with open_source(str(tree)) as src:
        before = _read_bytes()
        total = nonzero = 0
        with src.nodes["disk.img"].data.open() as f:
            while block := f.read(8 << 20):
                total += len(block)
                nonzero += len(block) - block.count(0)
        read = _read_bytes() - before
    assert read < 16 << 20  # the two data extents, not the 1 GiB
    assert total == 1 << 30 and nonzero == 2 * (len(data) - data.count(0))


def test_a_sparse_file_reads_back_exactly(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    with open(tree / "s", "wb") as f:
        f.truncate(5 << 20)
        f.seek(1 << 20)
        f.write(b"middle")
    with open(tree / "tail-hole", "wb") as f:
        f.write(b"head")
        f.truncate(3 << 20)
    with open_source(str(tree)) as src:
        for name in ("s", "tail-hole"):
            with src.nodes[name].data.open() as f:
                assert f.read() == (tree / name).read_bytes()


@pytest.mark.mount
@pytest.mark.allow_log_warnings
def test_a_zero_size_file_that_reads_bytes_is_warned_about(tmp_path, caplog):
    """A /proc file says size 0 but reads bytes: pushed empty, with a warning naming it."""
    import subprocess

    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "version").write_bytes(b"")
    (tree / "empty").write_bytes(b"")
    subprocess.run(["mount", "--bind", "/proc/version", str(tree / "version")], check=True)
    try:
        with open_source(str(tree)) as src:
            assert src.nodes["version"].size == 0
    finally:
        subprocess.run(["umount", str(tree / "version")], check=True)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "version" in warned[0] and "pushed empty" in warned[0]
