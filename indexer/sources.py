"""``open_source(path)``: what a path holds, as a SourceTree.

A directory is an OCI image layout when it has ``oci-layout`` and ``index.json``, else a
plain tree. A file is read through any compression; if it is a tar it is an ``oci-archive``
or ``docker-archive`` by its members, else a root-file-system tar; anything else is a single
file (model weights). ``fmt`` forces one reading.
"""

from __future__ import annotations

import os

from . import FORMATS
from .decompress import seekable
from .dirsource import dir_source, file_source
from .errors import SourceError
from .ocisource import archive_kind, archive_source, oci_layout_source
from .tarsource import apply_tar, is_tar, open_tarfile
from .tree import ReadOptions, SourceTree, TreeBuilder, newest_mtime, normalize


def open_source(path: str, *, platform: str = "linux/amd64", fmt: str = "auto",
                tmpdir: str | None = None) -> SourceTree:
    opts = ReadOptions(platform, tmpdir)
    if fmt not in FORMATS:
        raise SourceError(f"unknown source format {fmt!r}; use one of {', '.join(FORMATS)}")
    if not os.path.lexists(path):
        raise SourceError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        is_layout = all(os.path.isfile(os.path.join(path, n)) for n in ("oci-layout",
                                                                         "index.json"))
        if fmt == "oci" or (fmt == "auto" and is_layout):
            return oci_layout_source(path, opts)
        if fmt not in ("auto", "dir"):
            raise SourceError(f"{path}: a directory cannot be read as {fmt}")
        return dir_source(path)
    if fmt == "file":
        return file_source(path)
    return _file_or_archive(path, fmt, opts)


def _file_or_archive(path: str, fmt: str, opts: ReadOptions) -> SourceTree:
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the tree or below
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror})") from None
    closers = [raw.close]
    try:
        f, _ = seekable(raw, path, opts.tmpdir)
        if f is not raw:
            closers.append(f.close)
        if not is_tar(f):
            if fmt != "auto":
                raise SourceError(f"{path}: not a tar archive, cannot read it as {fmt}")
            for close in reversed(closers):
                close()
            return file_source(path)
        tf, members = open_tarfile(f, path)
        kind = archive_kind({normalize(m.name, path): m for m in members})
        if fmt in ("oci", "docker-archive") or (fmt == "auto" and kind):
            return archive_source(f, members, fmt if fmt != "auto" else kind, path, opts,
                                  closers)
        builder = TreeBuilder()
        apply_tar(tf, members, builder, path, layer=False)
        return SourceTree(builder.nodes, "tar", newest_mtime(builder.nodes), closers=closers)
    except BaseException as exc:
        for close in reversed(closers):
            close()
        if isinstance(exc, OSError):  # EIO from the disk or a remote file system
            raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from None
        raise
