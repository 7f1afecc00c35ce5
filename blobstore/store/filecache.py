"""Files whose bytes are all on the node, as plain files: what FUSE passthrough serves.

A regular file of an image is its spans: pieces of chunks. When every chunk of a file is in
the node's disk cache, its bytes can be written once as a plain file in the cache's
directory, ``DIR/.files/ab/<key>``, which the kernel then reads and maps without the FUSE
daemon. The key is named by content, from the span list (``file_key``: blake3 of each
piece's chunk id, offset and length), so images that share a file share it; manifests hold
no per-file digest, and spans cut chunks, so the span list is the natural name. The file's
own blake3 is computed as it is written and kept in the xattr ``user.thaw.blake3``; the
bytes come from chunks the disk cache verified on the way out.

Integrity: a file is written under a temporary name, its hash recorded, then renamed into
place, so a crash never leaves a partial one under its key. ``verify`` hashes a file again
against its record (a restarted daemon does it before it hands a file out); a file that
fails, or has no record, is dropped. Files count in the disk cache's bound with the chunks
and are evicted by the same least-recently-used order, by unlink, never truncated: a
process that has one open (directly, or through a passthrough backing file) keeps reading
its inode's bytes. Thread-safe and process-safe as the disk cache is.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from blake3 import blake3

from ..errors import StoreUnavailable
from .digest import check_blob_id
from .diskcache import FILES, DiskCache
from .tempfiles import temp_path

log = logging.getLogger(__name__)
XATTR = "user.thaw.blake3"
_PIECE = 1 << 20  # bytes hashed at a time when a file is verified


def file_key(pieces: Iterable[tuple[str, int, int]]) -> str:
    """The name of a file made of ``pieces`` (chunk id, offset in it, length), in order."""
    h = blake3()
    for id, offset, length in pieces:
        h.update(f"{check_blob_id(id)} {offset} {length}\n".encode())
    return h.hexdigest()


class FileCache:
    def __init__(self, disk: DiskCache) -> None:
        self.disk = disk
        self.root = disk.root / FILES

    def path(self, key: str) -> Path:
        return self.root / key[:2] / check_blob_id(key)

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def write(self, key: str, pieces: Iterable[bytes | memoryview], size: int) -> Path:
        """Write the file ``key`` from ``pieces`` (its bytes, in order, from verified chunks)
        and record its blake3; StoreUnavailable if it cannot (a full disk, no xattrs)."""
        path, tmp = self.path(key), temp_path(self.disk.root, key)
        h, written = blake3(), 0
        try:
            tmp.parent.mkdir(exist_ok=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "xb") as f:
                for piece in pieces:
                    f.write(piece)
                    h.update(piece)
                    written += len(piece)
            if written != size:
                raise StoreUnavailable(f"file {key}: {written} bytes, expected {size}")
            os.setxattr(tmp, XATTR, h.hexdigest().encode())
            os.replace(tmp, path)
        except OSError as exc:
            reason = ("no space left" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else
                      "no user xattrs here" if exc.errno == errno.ENOTSUP else exc.strerror)
            raise StoreUnavailable(f"{self.disk}: cannot write file {key}: {reason}") \
                from None
        finally:
            tmp.unlink(missing_ok=True)
        self.disk.added(size)
        return path

    def verify(self, key: str) -> bool:
        """Whether the file ``key`` still hashes to what was recorded when it was written;
        one that does not, or has no record, is dropped (and made again later)."""
        path = self.path(key)
        try:
            recorded = os.getxattr(path, XATTR).decode()
            h = blake3()
            with open(path, "rb") as f:
                while piece := f.read(_PIECE):
                    h.update(piece)
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("%s: dropping file %s: %s", self.disk, key, exc.strerror)
            self.drop(key)
            return False
        if h.hexdigest() != recorded:
            log.warning("%s: file %s does not hash to what was written; dropped (it is made "
                        "again from its chunks)", self.disk, key)
            self.drop(key)
            return False
        return True

    def touch(self, key: str) -> None:
        """A use, for eviction's order."""
        try:
            os.utime(self.path(key))
        except FileNotFoundError:
            pass

    def drop(self, key: str) -> None:
        path = self.path(key)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return
        self.disk.drop(path, size)
