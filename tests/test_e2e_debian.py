"""End to end on a real Debian 12 root file system (mmdebstrap), through SeaweedFS S3.

Heavy: marked ``e2e`` (CI runs them; ``pytest -m 'not e2e'`` skips them locally).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from .conftest import rsync_diff
from .support import docker_archive

pytestmark = [pytest.mark.e2e, pytest.mark.s3]


def gnu_extract(tar: Path, dest: Path, *extra: str) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf",
                    str(tar), "-C", str(dest), *extra], check=True)
    return dest


@pytest.fixture(scope="module")
def gnu_tree(debian_tar, tmp_path_factory) -> Path:
    return gnu_extract(debian_tar, tmp_path_factory.mktemp("gnu") / "root")


def test_debian_rootfs_round_trips_through_s3(thaw, debian_tar, gnu_tree, s3_url, tmp_path):
    out = json.loads(thaw("push", str(debian_tar), "debian:12", "--json", store=s3_url).stdout)
    assert out["files"] > 5000
    thaw("export", "debian:12", str(tmp_path / "out"), store=s3_url)
    assert rsync_diff(gnu_tree, tmp_path / "out") == ""
    again = json.loads(thaw("push", str(debian_tar), "debian:12", "--json",
                            store=s3_url).stdout)
    assert again["uploaded_bytes"] == 0 and again["manifest"] == out["manifest"]
    assert thaw("verify", "debian:12", store=s3_url).returncode == 0


def _dir_member(root: Path, rel: str, mtime: int) -> tarfile.TarInfo:
    st = (root / rel).lstat()
    info = tarfile.TarInfo(rel + "/")
    info.type, info.mode, info.uid, info.gid, info.mtime = (
        tarfile.DIRTYPE, st.st_mode & 0o7777, st.st_uid, st.st_gid, mtime)
    return info


def _file_member(rel: str, data: bytes, mode: int, mtime: int) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(rel)
    info.size, info.mode, info.mtime = len(data), mode, mtime
    return info, data


def upper_layer(base: Path, dest: Path) -> Path:
    """A layer that deletes (files, a subtree, a directory's contents) and replaces files."""
    mtime = 1_750_000_000
    dirs = ["etc", "usr", "usr/bin", "usr/share", "usr/share/doc", "opt", "opt/app"]
    files = [
        ("etc/.wh.motd", b"", 0o644),
        ("usr/share/.wh.zoneinfo", b"", 0o644),
        ("usr/share/doc/.wh..wh..opq", b"", 0o644),
        ("usr/share/doc/README.thaw", b"only this remains\n", 0o644),
        ("etc/os-release", b"PRETTY_NAME=thaw test\n", 0o644),  # was a symlink
        ("usr/bin/env", b"#!/bin/sh\necho replaced\n", 0o755),
        ("opt/app/run.sh", b"#!/bin/sh\nexit 0\n", 0o4755),
    ]
    (base / "opt").mkdir(exist_ok=True)
    (base / "opt" / "app").mkdir(exist_ok=True)
    # Directories after their contents: GNU tar, the reference here, sets the times of a
    # directory that already exists at once, so a file written after it would bump them.
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tf:
        for rel, data, mode in files:
            info, body = _file_member(rel, data, mode, mtime)
            tf.addfile(info, io.BytesIO(body))
        for d in reversed(dirs):
            tf.addfile(_dir_member(base, d, mtime))
    return dest


def flatten_by_hand(base_tar: Path, layer: Path, dest: Path) -> Path:
    """What a container runtime shows: lower layer, deletions, then the upper layer."""
    gnu_extract(base_tar, dest)
    (dest / "etc" / "motd").unlink(missing_ok=True)
    shutil.rmtree(dest / "usr" / "share" / "zoneinfo", ignore_errors=True)
    for child in (dest / "usr" / "share" / "doc").iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    gnu_extract(layer, dest, "--exclude=.wh.*")
    return dest


def test_docker_archive_with_a_deleting_layer(thaw, debian_tar, tmp_path):
    scratch = gnu_extract(debian_tar, tmp_path / "scratch")
    layer = upper_layer(scratch, tmp_path / "upper.tar")
    archive = docker_archive(tmp_path / "image.docker.tar", [debian_tar, layer])
    expected = flatten_by_hand(debian_tar, layer, tmp_path / "expected")
    assert not (expected / "usr" / "share" / "zoneinfo").exists()
    out = json.loads(thaw("push", str(archive), "debian:layered", "--json").stdout)
    assert out["manifest"]
    thaw("export", "debian:layered", str(tmp_path / "out"))
    assert rsync_diff(expected, tmp_path / "out") == ""
    assert (tmp_path / "out" / "etc" / "os-release").is_file()


def test_one_package_added_uploads_a_small_fraction(thaw, debian_tar, tmp_path):
    tree = gnu_extract(debian_tar, tmp_path / "v1")
    first = json.loads(thaw("push", str(tree), "debian:v1", "--json").stdout)
    debs = tmp_path / "debs"
    debs.mkdir()
    subprocess.run(["apt-get", "download", "-q", "less"], cwd=debs, check=True,
                   capture_output=True)
    deb = next(debs.glob("less_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    second = json.loads(thaw("push", str(tree), "debian:v2", "--json").stdout)
    fraction = second["uploaded_bytes"] / first["uploaded_bytes"]
    print(f"\none package added: {second['new_chunks']} of {second['chunks']} chunks new, "
          f"{second['uploaded_bytes']} of {first['uploaded_bytes']} bytes "
          f"({fraction:.1%}) uploaded")
    assert second["manifest"] != first["manifest"]
    assert fraction < 0.10
