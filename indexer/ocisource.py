"""OCI images as source trees: an OCI image layout directory, an ``oci-archive`` tar and a
``docker-archive`` tar (as ``podman save`` and ``docker save`` write them).

The image for the platform asked for is picked from the index, every JSON blob and every
layer whose digest is known is checked against its sha256, media types outside the OCI and
Docker sets are refused, and the layers are applied in order with whiteouts and opaque
directories. Anything missing or malformed is a SourceError naming the blob. Single-threaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from calendar import timegm
from typing import BinaryIO

from .decompress import FileSlice, seekable
from .errors import SourceError
from .tarsource import apply_tar, open_tarfile
from .tree import ReadOptions, SourceTree, TreeBuilder, newest_mtime, normalize

INDEX_TYPES = {"application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json"}
MANIFEST_TYPES = {"application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json"}
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
}
MAX_JSON = 16 << 20
_DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")
_TIME_RE = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?"
                      r"(Z|z|[+-]\d\d:\d\d)?")


class _Blobs:
    """Where an image's blobs are: a layout directory or the members of an archive."""

    def __init__(self, name: str, layout_dir: str | None = None,
                 archive: tuple[BinaryIO, dict[str, tarfile.TarInfo]] | None = None) -> None:
        self.name, self.layout_dir, self.archive = name, layout_dir, archive

    def open(self, path: str) -> BinaryIO:
        """A file of the layout (``index.json``, ``blobs/sha256/...``)."""
        if self.layout_dir is not None:
            try:
                return open(os.path.join(self.layout_dir, path), "rb")  # noqa: SIM115
            except OSError:
                raise SourceError(f"{self.name}: missing {path}; the image is incomplete") from None
        f, members = self.archive  # type: ignore[misc]
        m = members.get(normalize(path, self.name))
        if m is None or not m.isreg():
            raise SourceError(f"{self.name}: missing {path}; the image is incomplete")
        return io.BufferedReader(FileSlice(f, m.offset_data, m.size), 1 << 20)  # type: ignore

    def has(self, path: str) -> bool:
        if self.layout_dir is not None:
            return os.path.isfile(os.path.join(self.layout_dir, path))
        return normalize(path, self.name) in self.archive[1]  # type: ignore[index]

    def blob_path(self, digest: str) -> str:
        match = _DIGEST_RE.fullmatch(str(digest))
        if not match:
            raise SourceError(f"{self.name}: unsupported or malformed digest {digest!r}")
        return f"blobs/sha256/{match.group(1)}"

    def read_json(self, path: str, digest: str | None = None) -> dict | list:
        with self.open(path) as f:
            data = f.read(MAX_JSON + 1)
        if len(data) > MAX_JSON:
            raise SourceError(f"{self.name}: {path} is larger than {MAX_JSON} bytes")
        if digest and "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise SourceError(f"{self.name}: {path} does not match its digest {digest}")
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SourceError(f"{self.name}: {path} is not valid JSON ({exc})") from None


def _verify(f: BinaryIO, digest: str, what: str) -> None:
    h = hashlib.sha256()
    while block := f.read(1 << 20):
        h.update(block)
    f.seek(0)
    if "sha256:" + h.hexdigest() != digest:
        raise SourceError(f"{what} does not match its digest {digest}; the image is corrupt")


def _platform_of(desc: dict) -> str:
    p = desc.get("platform") or {}
    parts = [p.get("os", "?"), p.get("architecture", "?")] + ([p["variant"]] if "variant"
                                                                in p else [])
    return "/".join(parts)


def _matches(desc: dict, platform: str) -> bool:
    want = platform.split("/")
    have = _platform_of(desc).split("/")
    return have[:2] == want[:2] and (len(want) < 3 or have[2:3] == want[2:3])


def _pick(blobs: _Blobs, index: dict, platform: str) -> dict:
    """The image manifest for ``platform``, following nested indexes."""
    manifests = index.get("manifests")
    if not isinstance(manifests, list) or not manifests:
        raise SourceError(f"{blobs.name}: the index lists no manifests")
    candidates = [d for d in manifests if isinstance(d, dict)]
    if len(candidates) > 1 or any("platform" in d for d in candidates):
        wanted = [d for d in candidates if _matches(d, platform)]
        if not wanted:
            have = ", ".join(sorted({_platform_of(d) for d in candidates}))
            raise SourceError(f"{blobs.name}: no image for {platform}; it has {have} "
                              "(choose with --platform)")
        candidates = wanted
    desc = candidates[0]
    doc = blobs.read_json(blobs.blob_path(desc.get("digest")), desc.get("digest"))
    if not isinstance(doc, dict):
        raise SourceError(f"{blobs.name}: manifest {desc.get('digest')} is not an object")
    media = desc.get("mediaType") or doc.get("mediaType")
    if media in INDEX_TYPES:
        return _pick(blobs, doc, platform)
    if media not in MANIFEST_TYPES:
        raise SourceError(f"{blobs.name}: unknown manifest media type {media!r}")
    return doc


def parse_created(text: object) -> int | None:
    """An RFC 3339 time as ns since the epoch, or None."""
    match = _TIME_RE.fullmatch(text) if isinstance(text, str) else None
    if not match:
        return None
    y, mo, d, h, mi, s, frac, zone = match.groups()
    secs = timegm((int(y), int(mo), int(d), int(h), int(mi), int(s)))
    if zone and zone not in "Zz":
        sign = 1 if zone[0] == "+" else -1
        secs -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return secs * 1_000_000_000 + int((frac or "0")[:9].ljust(9, "0"))


def _apply_layers(blobs: _Blobs, layers: list[tuple[str, str | None]], opts: ReadOptions,
                  closers: list) -> TreeBuilder:
    builder = TreeBuilder()
    for n, (path, digest) in enumerate(layers):
        what = f"{blobs.name}: layer {n} ({path})"
        raw = blobs.open(path)
        closers.append(raw.close)
        if digest:
            _verify(raw, digest, what)
        f, _ = seekable(raw, what, opts.tmpdir)
        if f is not raw:
            closers.append(f.close)
        tf, members = open_tarfile(f, what)
        apply_tar(tf, members, builder, what, layer=True)
    return builder


def _oci_layers(blobs: _Blobs, platform: str) -> tuple[list, dict]:
    index = blobs.read_json("index.json")
    if not isinstance(index, dict):
        raise SourceError(f"{blobs.name}: index.json is not an object")
    manifest = _pick(blobs, index, platform)
    config_desc = manifest.get("config") or {}
    config = blobs.read_json(blobs.blob_path(config_desc.get("digest")), config_desc["digest"])
    layers = []
    for desc in manifest.get("layers") or []:
        media = desc.get("mediaType") if isinstance(desc, dict) else None
        if media not in LAYER_TYPES:
            raise SourceError(f"{blobs.name}: layer of unknown media type {media!r}")
        layers.append((blobs.blob_path(desc.get("digest")), desc["digest"]))
    return layers, config if isinstance(config, dict) else {}


def _docker_layers(blobs: _Blobs) -> tuple[list, dict]:
    doc = blobs.read_json("manifest.json")
    if not isinstance(doc, list) or not doc or not isinstance(doc[0], dict):
        raise SourceError(f"{blobs.name}: manifest.json lists no image")
    image = doc[0]
    if not isinstance(image.get("Config"), str) or not isinstance(image.get("Layers"), list):
        raise SourceError(f"{blobs.name}: manifest.json lacks Config or Layers")
    config = blobs.read_json(image["Config"])
    layers = []
    for path in image["Layers"]:
        if not isinstance(path, str):
            raise SourceError(f"{blobs.name}: manifest.json has a malformed layer {path!r}")
        match = re.fullmatch(r"blobs/sha256/([0-9a-f]{64})", path)
        layers.append((path, f"sha256:{match.group(1)}" if match else None))
    return layers, config if isinstance(config, dict) else {}


def _tree(blobs: _Blobs, kind: str, opts: ReadOptions, closers: list) -> SourceTree:
    try:
        if kind == "docker-archive":
            layers, config = _docker_layers(blobs)
        else:
            layers, config = _oci_layers(blobs, opts.platform)
        builder = _apply_layers(blobs, layers, opts, closers)
    except (KeyError, TypeError, AttributeError) as exc:
        raise SourceError(f"{blobs.name}: malformed image metadata ({exc!r})") from None
    created = parse_created(config.get("created"))
    return SourceTree(builder.nodes, kind, created if created is not None
                      else newest_mtime(builder.nodes), closers=closers)


def oci_layout_source(path: str, opts: ReadOptions) -> SourceTree:
    closers: list = []
    try:
        return _tree(_Blobs(path, layout_dir=path), "oci", opts, closers)
    except BaseException:
        for close in reversed(closers):
            close()
        raise


def archive_kind(members: dict[str, tarfile.TarInfo]) -> str | None:
    """'oci-archive', 'docker-archive' or None (a plain rootfs tar) from the member names."""
    if "oci-layout" in members and "index.json" in members:
        return "oci-archive"
    if "manifest.json" in members and any(n.endswith(".json") and n != "manifest.json"
                                          for n in members):
        return "docker-archive"
    return None


def archive_source(f: BinaryIO, members: list[tarfile.TarInfo], kind: str, name: str,
                   opts: ReadOptions, closers: list) -> SourceTree:
    """An image inside an (uncompressed, seekable) archive whose headers are read."""
    by_name = {normalize(m.name, name): m for m in members}
    blobs = _Blobs(name, archive=(f, by_name))
    return _tree(blobs, "docker-archive" if kind == "docker-archive" else "oci", opts, closers)
