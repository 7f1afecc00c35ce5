"""Builders of test inputs: a tree with every kind of metadata, tars and OCI images."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import struct
import subprocess
import tarfile
from pathlib import Path

CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


def build_rich_tree(root: Path) -> Path:
    """Every kind of entry and metadata a root file system holds."""
    root.mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("thaw\n")
    (root / "bin").mkdir()
    ping = root / "bin" / "ping"
    ping.write_bytes(os.urandom(3 << 20))  # spans several chunks
    os.chown(ping, 0, 0)
    os.setxattr(ping, "security.capability", CAP_NET_RAW)
    suid = root / "bin" / "su"
    suid.write_bytes(b"#!/bin/sh\n" * 100)
    os.chmod(suid, 0o4755)
    sgid = root / "bin" / "wall"
    sgid.write_bytes(b"wall")
    os.chown(sgid, 0, 5)
    os.chmod(sgid, 0o2755)
    tmp = root / "tmp"
    tmp.mkdir()
    os.chmod(tmp, 0o1777)
    user = root / "home" / "user"
    user.mkdir(parents=True)
    (user / "notes.txt").write_bytes(b"hello\n" * 1000)
    os.chown(user / "notes.txt", 1234, 5678)
    os.chown(user, 1234, 5678)
    os.setxattr(user / "notes.txt", "user.origin", b"thaw-test")
    (user / "empty").write_bytes(b"")
    (root / "caf\udce9 name with spaces").write_bytes(b"latin-1 name")
    sparse = root / "sparse.img"
    with open(sparse, "wb") as f:
        f.truncate(8 << 20)
        f.seek(5 << 20)
        f.write(b"data in the middle")
    links = root / "usr" / "lib"
    links.mkdir(parents=True)
    (links / "a").write_bytes(b"hard-linked content\n" * 50)
    os.link(links / "a", links / "b")
    os.link(links / "a", root / "etc" / "c")
    os.symlink("../etc/hostname", root / "bin" / "rel-link")
    os.symlink("/etc/hostname", root / "bin" / "abs-link")
    os.symlink("/does/not/exist", root / "bin" / "dangling")
    dev = root / "dev"
    dev.mkdir()
    os.mknod(dev / "null", 0o666 | 0o020000, os.makedev(1, 3))
    os.mknod(dev / "loop0", 0o660 | 0o060000, os.makedev(7, 0))
    os.mkfifo(dev / "initctl", 0o600)
    for i, p in enumerate(sorted(root.rglob("*"), reverse=True)):
        os.utime(p, ns=(1_700_000_000_123_456_789 + i, 1_700_000_000_123_456_789 + i),
                 follow_symlinks=False)
    os.utime(root, ns=(1_690_000_000_000_000_001,) * 2)
    return root


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str, data: bytes | None = None, *, type: bytes = tarfile.REGTYPE,
           linkname: str = "", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = type, linkname, mode, 1_700_000_000
    if data is not None:
        info.size = len(data)
    return info, data


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci_layout(dest: Path, layers: list[bytes], *, layer_type: str =
               "application/vnd.oci.image.layer.v1.tar", platforms=("linux/amd64",),
               created: str = "2024-01-02T03:04:05.123456789Z") -> Path:
    """An OCI image layout with one image per platform, all of the same layers."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = sha256(data)
        (blobs / digest[7:]).write_bytes(data)
        return digest

    descs = []
    for platform in platforms:
        os_, arch = platform.split("/")[:2]
        config = json.dumps({"architecture": arch, "os": os_, "created": created,
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": put(config), "size": len(config)},
            "layers": [{"mediaType": layer_type, "digest": put(layer), "size": len(layer)}
                       for layer in layers]}).encode()
        descs.append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "digest": put(manifest), "size": len(manifest),
                      "platform": {"os": os_, "architecture": arch}})
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": descs}))
    return dest


def docker_archive(dest: Path, layers: list[Path]) -> Path:
    """A docker-archive tar, as `docker save` wrote it before OCI layouts."""
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "created": "2024-05-06T07:08:09Z"}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    names = [f"{i:064x}/layer.tar" for i in range(len(layers))]
    manifest = json.dumps([{"Config": config_name, "RepoTags": ["test:latest"],
                            "Layers": names}]).encode()
    with tarfile.open(dest, "w") as tf:
        for name, data in ((config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, layer in zip(names, layers, strict=True):
            tf.add(layer, arcname=name)
    return dest


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A tmpfs of ``size`` ("1m") mounted at ``path`` (made if missing): a full disk on
    demand. Unmounted on exit."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def safetensors_bytes() -> bytes:
    """A one-tensor safetensors file (four float32 zeros), made without torch: the format
    is a little-endian header length, a JSON header and the bytes."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})
    return struct.pack("<Q", len(header)) + header.encode() + bytes(16)
