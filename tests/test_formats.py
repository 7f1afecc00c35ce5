"""Every source format the README lists, pushed and exported back, byte and metadata exact.

The reference is what GNU tar itself extracts from the same archive, so each test checks
thaw's reading of a format, not tar's idea of a rich tree.
"""

from __future__ import annotations

import subprocess
import tarfile

import pytest

from blobstore.image.images import open_image
from blobstore.image.refs import parse_ref
from blobstore.store.blobs import BlobStore
from blobstore.store.memory import MemoryStore
from indexer.export import export_tree
from indexer.push import push_tree
from indexer.sources import open_source

from .conftest import rsync_diff
from .support import docker_archive, oci_layout

TAR_FLAGS = ["--xattrs", "--xattrs-include=*", "--numeric-owner"]
COMPRESSORS = {"": [], ".gz": ["--gzip"], ".zst": ["--zstd"], ".xz": ["--xz"]}


def gnu_tar(src, dest, *flags):
    subprocess.run(["tar", *TAR_FLAGS, "--sparse", *flags, "-cpf", str(dest), "-C", str(src),
                    "."], check=True)
    return dest


def gnu_extract(tar, dest):
    dest.mkdir()
    subprocess.run(["tar", *TAR_FLAGS, "-xpf", str(tar), "-C", str(dest)], check=True)
    return dest


def round_trip(source, tmp_path):
    objects = MemoryStore()
    with open_source(str(source)) as tree:
        push_tree(tree, objects, parse_ref("img:v1"))
    _, m = open_image(objects, "img:v1")
    out = tmp_path / "out"
    export_tree(m, BlobStore(objects), str(out))
    return out, tree.source


@pytest.mark.parametrize("suffix", list(COMPRESSORS))
def test_rootfs_tar_in_every_compression_round_trips(rich_tree, tmp_path, suffix):
    tar = gnu_tar(rich_tree, tmp_path / f"rich.tar{suffix}", *COMPRESSORS[suffix])
    out, source = round_trip(tar, tmp_path)
    assert source == "tar"
    assert rsync_diff(gnu_extract(tar, tmp_path / "gnu"), out) == ""


@pytest.mark.parametrize("media, flags", [
    ("application/vnd.oci.image.layer.v1.tar", []),
    ("application/vnd.oci.image.layer.v1.tar+gzip", ["--gzip"]),
    ("application/vnd.oci.image.layer.v1.tar+zstd", ["--zstd"]),
])
def test_oci_layout_and_oci_archive_round_trip(rich_tree, tmp_path, media, flags):
    layer = gnu_tar(rich_tree, tmp_path / "layer", *flags)
    layout = oci_layout(tmp_path / "layout", [layer.read_bytes()], layer_type=media)
    reference = gnu_extract(layer, tmp_path / "gnu")
    out, source = round_trip(layout, tmp_path)
    assert source == "oci" and rsync_diff(reference, out) == ""
    archive = tmp_path / "image.oci.tar"
    with tarfile.open(archive, "w") as tf:
        for name in ("oci-layout", "index.json", "blobs"):
            tf.add(layout / name, arcname=name)
    (tmp_path / "out").rename(tmp_path / "out-layout")
    out, source = round_trip(archive, tmp_path)
    assert source == "oci" and rsync_diff(reference, out) == ""


def test_docker_archive_round_trips(rich_tree, tmp_path):
    layer = gnu_tar(rich_tree, tmp_path / "layer.tar")
    archive = docker_archive(tmp_path / "image.docker.tar", [layer])
    out, source = round_trip(archive, tmp_path)
    assert source == "docker-archive"
    assert rsync_diff(gnu_extract(layer, tmp_path / "gnu"), out) == ""
