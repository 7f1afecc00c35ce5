"""What a mount shows: one image (``thaw mount``) or every image of a store (the daemon).

``SingleImage`` is a thin face of one ``FsTree``. ``StoreImages`` shows a root with one
directory per manifest id, made on first lookup (the manifest is loaded and opened in a
worker thread), and ``refs/NAME/TAG`` symlinks to them, read from the store with a short
cache (tags move; images never do). Each image gets its own inode range, ``k << 32``, for
the life of the daemon. Trees are bounded: when the loaded images hold more than
``max_entries`` entries, the least recently used ones idle for ``idle`` seconds are dropped
(a tree holds its packed manifest and at most 50,000 entries decoded); a request for one
of their inodes (the kernel keeps inodes longer) loads the tree again, in the same range,
first (``ready``). Runs on the trio thread; store calls, and the decoding of a big directory
(``decoded``), go through ``trio.to_thread``.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable

import trio

from blobstore.errors import BlobNotFound
from blobstore.image.images import load_dir_manifest
from blobstore.image.refs import Refs
from blobstore.store.base import ObjectStore
from blobstore.store.blobs import BlobStore
from blobstore.store.digest import is_blob_id

from .errors import NoSuchInode, NotASymlink
from .tree import Attrs, FsTree

log = logging.getLogger(__name__)
ROOT, REFS = 1, 2
REFS_TTL = 2.0
_RANGE = 32  # bits of inode number per image
MAX_ENTRIES = 1_000_000  # entries of loaded trees the daemon keeps
DECODE_INLINE = 64 << 10  # packed bytes decoded on the trio thread (~2,000 entries, ~10 ms)
IDLE = 60.0  # seconds since its last request before a tree may be dropped


async def decoded(tree: FsTree, ino: int) -> None:
    """Decode the listing of directory ``ino`` in a worker thread if it is big and not
    decoded yet, so that the trio thread goes on answering others meanwhile."""
    if tree.listing_cost(ino) > DECODE_INLINE:
        await trio.to_thread.run_sync(tree.listing_cost, ino, True)


class SingleImage:
    kind = "image"

    def __init__(self, manifest_id: str, tree: FsTree) -> None:
        self.manifest_id, self.tree = manifest_id, tree

    async def ready(self, ino: int) -> None:
        """The one tree is always loaded."""

    def immutable(self, ino: int) -> bool:
        """Everything here is the image's, and images never change."""
        return True

    async def lookup(self, parent: int, name: bytes) -> int | None:
        await decoded(self.tree, parent)
        return self.tree.lookup(parent, name)

    async def children(self, ino: int) -> list[tuple[bytes, int]]:
        await decoded(self.tree, ino)
        return self.tree.children(ino)

    def attrs(self, ino: int) -> Attrs:
        return self.tree.attrs(ino)

    def readlink(self, ino: int) -> bytes:
        return self.tree.readlink(ino)

    def xattrs(self, ino: int) -> tuple[tuple[bytes, bytes], ...]:
        return self.tree.xattrs(ino)

    def tree_of(self, ino: int) -> FsTree:
        return self.tree

    def carries_xattrs(self) -> bool:
        """Whether any entry of the image has one (the answer for every getxattr if not)."""
        return self.tree.carries_xattrs()

    def totals(self) -> tuple[int, int]:
        return self.tree.manifest.data_size, self.tree.inode_count

    def images(self) -> dict[str, int]:
        return {self.manifest_id: self.tree.manifest.data_size}


class StoreImages:
    """Every image of one store under one mount point."""

    kind = "daemon"

    def __init__(self, objects: ObjectStore,
                 on_image: Callable[[FsTree], None] = lambda tree: None, *,
                 max_entries: int = MAX_ENTRIES, idle: float = IDLE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``on_image`` is called with each image's tree as it is (re)loaded."""
        self.objects = objects
        self._on_image = on_image
        self.max_entries, self.idle, self._clock = max_entries, idle, clock
        self.trees: dict[str, FsTree] = {}  # manifest id -> loaded tree
        self._used: dict[str, float] = {}  # manifest id -> last request
        self._by_range: dict[int, FsTree] = {}  # ino >> _RANGE -> loaded tree
        self._ranges: dict[str, int] = {}  # manifest id -> its range, for good
        self._image_of: dict[int, str] = {}  # range -> manifest id, for good
        self._sizes: dict[str, int] = {}  # manifest id -> data bytes, of every image served
        self._loading: dict[str, trio.Event] = {}
        self._synthetic: dict[int, tuple[str, str]] = {ROOT: ("d", ""), REFS: ("d", "refs")}
        self._by_path: dict[str, int] = {"": ROOT, "refs": REFS}
        self._refs: dict[str, str] = {}  # "NAME/TAG" -> manifest id
        self._refs_at = -1e9
        self._started_ns = time.time_ns()

    # -- images ------------------------------------------------------------------------------

    async def _image(self, mid: str) -> FsTree:
        while mid in self._loading:
            await self._loading[mid].wait()
        if mid in self.trees:
            self._touch(mid)
            return self.trees[mid]
        self._loading[mid] = trio.Event()
        try:
            k = self._ranges.setdefault(mid, len(self._ranges) + 1)
            blobs = BlobStore(self.objects)
            # The tree too is built in the worker: the trio thread keeps answering others.
            tree = await trio.to_thread.run_sync(
                lambda: FsTree(load_dir_manifest(blobs, mid), base=k << _RANGE, image_id=mid))
            self.trees[mid] = self._by_range[k] = tree
            self._image_of[k], self._sizes[mid] = mid, tree.manifest.data_size
            self._touch(mid)
            self._on_image(tree)
            self._shrink(keep=mid)
            return tree
        finally:
            self._loading.pop(mid).set()

    def _touch(self, mid: str) -> None:
        self._used[mid] = self._clock()

    def _shrink(self, keep: str) -> None:
        """Drop idle trees but ``keep``, least recently used first, while over
        ``max_entries``."""
        total = sum(t.inode_count for t in self.trees.values())
        now = self._clock()
        for mid in sorted(self.trees, key=self._used.__getitem__):  # least recent first
            if total <= self.max_entries:
                return
            if mid == keep or now - self._used[mid] < self.idle:
                continue
            tree = self.trees.pop(mid)
            del self._by_range[tree.base >> _RANGE]
            total -= tree.inode_count
            log.info("image %s: dropped its tree (%d entries, idle); reloaded on use",
                     mid[:12], tree.inode_count)

    async def ready(self, ino: int) -> None:
        """Load the tree of ``ino`` again if it was dropped (before a sync call on it)."""
        k = ino >> _RANGE
        if k and k not in self._by_range and k in self._image_of:
            await self._image(self._image_of[k])

    def immutable(self, ino: int) -> bool:
        """Whether ``ino`` is an image's (the root and ``refs/`` change)."""
        return bool(ino >> _RANGE)

    def _tree_for(self, ino: int) -> FsTree:
        tree = self._by_range.get(ino >> _RANGE)
        if tree is None:
            raise NoSuchInode(ino)
        self._touch(tree.image_id)
        return tree

    # -- refs --------------------------------------------------------------------------------

    async def _refresh_refs(self) -> None:
        if time.monotonic() - self._refs_at < REFS_TTL:
            return
        listed = await trio.to_thread.run_sync(lambda: list(Refs(self.objects).list()))
        self._refs = {f"{r.name}/{r.tag}": mid for r, mid in listed}
        self._refs_at = time.monotonic()
        for key in self._refs:
            parts = key.split("/")
            for depth in range(1, len(parts) + 1):
                path = "refs/" + "/".join(parts[:depth])
                if path not in self._by_path:
                    ino = len(self._synthetic) + 1
                    self._synthetic[ino] = ("l" if depth == len(parts) else "d", path)
                    self._by_path[path] = ino

    def _synthetic_of(self, ino: int) -> tuple[str, str]:
        found = self._synthetic.get(ino)
        if found is None:
            raise NoSuchInode(ino)
        return found

    def _ref_children(self, path: str) -> list[tuple[bytes, int]]:
        prefix = path + "/"
        names = {p[len(prefix):].split("/")[0] for p in self._by_path
                 if p.startswith(prefix) and p[len(prefix):]}
        live = [n for n in sorted(names) if self._live(prefix + n)]
        return [(os.fsencode(n), self._by_path[prefix + n]) for n in live]

    def _live(self, path: str) -> bool:
        key = path[len("refs/"):]
        return any(r == key or r.startswith(key + "/") for r in self._refs)

    # -- the namespace -----------------------------------------------------------------------

    async def lookup(self, parent: int, name: bytes) -> int | None:
        if parent >> _RANGE:
            await self.ready(parent)
            tree = self._tree_for(parent)
            await decoded(tree, parent)
            return tree.lookup(parent, name)
        text = os.fsdecode(name)
        if parent == ROOT and is_blob_id(text):
            try:
                return (await self._image(text)).root
            except BlobNotFound:
                return None  # no such image: ENOENT, like any missing name
        await self._refresh_refs()
        kind, path = self._synthetic_of(parent)
        child = f"{path}/{text}" if path else text
        return self._by_path.get(child) if child == "refs" or self._live(child) else None

    async def children(self, ino: int) -> list[tuple[bytes, int]]:
        if ino >> _RANGE:
            await self.ready(ino)
            tree = self._tree_for(ino)
            await decoded(tree, ino)
            return tree.children(ino)
        if ino == ROOT:
            return [(b"refs", REFS)] + [(m.encode(), (k << _RANGE) + 1) for m, k in sorted(
                self._ranges.items())]
        await self._refresh_refs()
        return self._ref_children(self._synthetic_of(ino)[1])

    def attrs(self, ino: int) -> Attrs:
        if ino >> _RANGE:
            return self._tree_for(ino).attrs(ino)
        kind, path = self._synthetic_of(ino)
        if kind == "l":
            target = self.readlink(ino)
            return Attrs(ino, stat.S_IFLNK | 0o777, 1, 0, 0, len(target), self._started_ns, 0,
                         0, ttl=REFS_TTL)
        return Attrs(ino, stat.S_IFDIR | 0o755, 2, 0, 0, 4096, self._started_ns, 0, 8,
                     ttl=REFS_TTL if ino != ROOT else None)

    def readlink(self, ino: int) -> bytes:
        if ino >> _RANGE:
            return self._tree_for(ino).readlink(ino)
        kind, path = self._synthetic_of(ino)
        if kind != "l":
            raise NotASymlink(ino)
        mid = self._refs.get(path[len("refs/"):])
        if mid is None:  # the tag was removed since the kernel learnt the link
            raise NoSuchInode(ino)
        return ("../" * path.count("/") + mid).encode()

    def xattrs(self, ino: int) -> tuple[tuple[bytes, bytes], ...]:
        return self._tree_for(ino).xattrs(ino) if ino >> _RANGE else ()

    def tree_of(self, ino: int) -> FsTree:
        return self._tree_for(ino)

    def carries_xattrs(self) -> bool:
        """Always: an image loaded later may carry some, and the kernel's answer to an
        ENOSYS holds for the rest of the mount."""
        return True

    def totals(self) -> tuple[int, int]:
        return (sum(t.manifest.data_size for t in self.trees.values()),
                sum(t.inode_count for t in self.trees.values()) + len(self._synthetic))

    def images(self) -> dict[str, int]:
        """Every image served since the daemon started, loaded now or not."""
        return dict(self._sizes)

