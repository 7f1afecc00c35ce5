"""A source image as a tree of paths to inodes, built from directories, tars and layers.

Pure logic, no I/O beyond the ``DataRef`` objects that sources hand in: ``TreeBuilder``
checks every path (normalised, no ``..``, not absolute, parents are directories), applies OCI
whiteouts and opaque directories, and refuses duplicates within one layer. A hard link is two
paths holding the same ``Node`` object, exactly as two names of one inode. Single-threaded:
a source builds its tree in one thread.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from blobstore.image.manifest import DIR, FILE, SYMLINK, path_key

from .errors import SourceError

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


class DataRef(Protocol):
    """Where a regular file's bytes are: ``open()`` gives a stream of the file's bytes."""

    def open(self) -> BinaryIO: ...


@dataclass(eq=False)
class Node:
    """One inode: its metadata and, for a regular file, where its bytes are."""

    type: str
    mode: int
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    size: int = 0
    target: str = ""
    rdev: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    data: DataRef | None = None


def implicit_dir() -> Node:
    """A directory a layer implies but does not list (as runtimes create it)."""
    return Node(DIR, 0o755)


def normalize(name: str, where: str) -> str:
    """A member name as a relative path ('' for the root); SourceError if it is hostile."""
    if name.startswith("/"):
        raise SourceError(f"{where}: absolute path {name!r} in the archive; refusing it")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SourceError(f"{where}: path {name!r} climbs out with '..'; refusing it")
    if "\0" in name:
        raise SourceError(f"{where}: NUL byte in path {name!r}")
    return "/".join(parts)


def check_symlink(path: str, target: str, where: str) -> None:
    """Refuse a symlink whose target is empty or holds a NUL. Any other target is data,
    kept verbatim as docker and podman keep it, and resolved inside the container's root
    when read: a link that climbs out of the image is no danger to a push, and where the
    tree is written out (``thaw export``) links are never followed."""
    if not target or "\0" in target:
        raise SourceError(f"{where}: symlink {path!r} has an empty or NUL target")


@dataclass(frozen=True)
class ReadOptions:
    """How a source is read: which platform of a multi-platform image, and where
    temporary copies go."""

    platform: str = "linux/amd64"
    tmpdir: str | None = None


class TreeBuilder:
    """Paths to nodes, with the rules every source shares."""

    def __init__(self, root: Node | None = None) -> None:
        self.nodes: dict[str, Node] = {"": root or implicit_dir()}
        self.children: dict[str, set[str]] = {"": set()}
        self._layer_paths: set[str] = set()

    def new_layer(self) -> None:
        """Start a layer: duplicates are refused within a layer, overrides allowed across."""
        self._layer_paths = set()

    def add(self, path: str, node: Node, where: str) -> None:
        if path in self._layer_paths:
            raise SourceError(f"{where}: {path!r} appears twice; refusing an ambiguous archive")
        self._layer_paths.add(path)
        if node.type == SYMLINK:
            check_symlink(path, node.target, where)
        if path == "":
            if node.type != DIR:
                raise SourceError(f"{where}: the root is not a directory")
            self.nodes[""] = node
            return
        self._ensure_parents(path, where)
        old = self.nodes.get(path)
        if old is not None and (old.type != DIR or node.type != DIR):
            self.remove(path)
        if node.type == DIR and path not in self.children:
            self.children[path] = set()
        self.nodes[path] = node
        self.children[posixpath.dirname(path)].add(path)

    def add_hardlink(self, path: str, target: str, where: str) -> None:
        node = self.nodes.get(target)
        if node is None:
            raise SourceError(f"{where}: hard link {path!r} -> {target!r}: no such earlier entry")
        if node.type == DIR:
            raise SourceError(f"{where}: hard link {path!r} -> {target!r} names a directory")
        if path == target:
            raise SourceError(f"{where}: hard link {path!r} points at itself")
        self.add(path, node, where)

    def _ensure_parents(self, path: str, where: str) -> None:
        parent = posixpath.dirname(path)
        if parent in self.nodes:
            if self.nodes[parent].type != DIR:
                raise SourceError(f"{where}: {path!r} lies under {parent!r}, not a directory")
            return
        self._ensure_parents(parent, where)
        self.nodes[parent] = implicit_dir()
        self.children[parent] = set()
        self.children[posixpath.dirname(parent)].add(parent)

    def remove(self, path: str) -> None:
        """Remove ``path`` and everything under it; a missing path is not an error."""
        if path not in self.nodes:
            return
        for child in list(self.children.get(path, ())):
            self.remove(child)
        self.children.pop(path, None)
        del self.nodes[path]
        self.children[posixpath.dirname(path)].discard(path)

    def whiteout(self, member_path: str, where: str) -> bool:
        """Apply ``member_path`` if it is a whiteout; True when it was one."""
        parent, name = posixpath.split(member_path)
        if name == OPAQUE:
            for child in list(self.children.get(parent, ())):
                self.remove(child)
            return True
        if name.startswith(WHITEOUT):
            victim = name[len(WHITEOUT):]
            if victim in ("", ".", ".."):
                raise SourceError(f"{where}: whiteout {member_path!r} names no valid entry")
            self.remove(posixpath.join(parent, victim))
            return True
        return False


@dataclass
class SourceTree:
    """What a source gives the indexer: the tree and a description of where it came from."""

    nodes: dict[str, Node]
    source: str  # dir, tar, oci, docker-archive, file
    created_ns: int  # the source's own time (image config, else newest mtime)
    kind: str = "image"
    closers: list = field(default_factory=list)
    _sorted: list[str] | None = field(default=None, repr=False)

    def sorted_paths(self) -> list[str]:
        """Every path in manifest order (sorted by components), computed once."""
        if self._sorted is None:
            self._sorted = sorted(self.nodes, key=path_key)
        return self._sorted

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        self.closers.clear()

    def __enter__(self) -> SourceTree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def data_nodes(self) -> Iterator[tuple[str, Node]]:
        """Regular files with bytes, one per inode, in the data stream's order."""
        seen: set[int] = set()
        for path in self.sorted_paths():
            node = self.nodes[path]
            if node.type == FILE and node.size and id(node) not in seen:
                seen.add(id(node))
                yield path, node


def newest_mtime(nodes: dict[str, Node]) -> int:
    return max((n.mtime_ns for n in nodes.values()), default=0)
