"""The pure tree: inodes, lookups, attributes, spans. No FUSE."""

from __future__ import annotations

import stat

from blobstore.image.images import open_image
from blobstore.image.refs import parse_ref
from blobstore.store.memory import MemoryStore
from fusefs.tree import FsTree
from indexer.chunker import ChunkerParams
from indexer.push import push_tree
from indexer.sources import open_source


def tree_of(path, base: int = 0) -> FsTree:
    objects = MemoryStore()
    with open_source(str(path)) as src:
        push_tree(src, objects, parse_ref("t:1"), params=ChunkerParams("fastcdc", 64 << 10))
    return FsTree(open_image(objects, "t:1")[1], base)


def walk(tree: FsTree, path: str) -> int:
    ino = tree.root
    for part in path.split("/"):
        ino = tree.lookup(ino, part.encode("utf-8", "surrogateescape"))
        assert ino is not None, path
    return ino


def test_lookup_children_and_attrs(rich_tree):
    t = tree_of(rich_tree)
    assert t.root == 1
    names = [n for n, _ in t.children(t.root)]
    assert names == sorted(names) and b"etc" in names and b"caf\xe9 name with spaces" in names
    su = t.attrs(walk(t, "bin/su"))
    assert stat.S_ISREG(su.mode) and stat.S_IMODE(su.mode) == 0o4755
    assert t.attrs(walk(t, "tmp")).mode == stat.S_IFDIR | 0o1777
    assert t.attrs(walk(t, "home/user/notes.txt")).uid == 1234
    null = t.attrs(walk(t, "dev/null"))
    assert stat.S_ISCHR(null.mode) and null.rdev != 0
    assert t.readlink(walk(t, "bin/rel-link")) == b"../etc/hostname"
    assert t.lookup(t.root, b"nope") is None
    assert t.lookup(walk(t, "etc/hostname"), b"x") is None  # not a directory


def test_hard_links_share_one_inode(rich_tree):
    t = tree_of(rich_tree)
    a, b, c = walk(t, "usr/lib/a"), walk(t, "usr/lib/b"), walk(t, "etc/c")
    assert a == b == c
    assert t.attrs(a).nlink == 3


def test_directory_link_counts(rich_tree):
    t = tree_of(rich_tree)
    subdirs = sum(1 for _, ino in t.children(t.root) if t.is_dir(ino))
    assert t.attrs(t.root).nlink == 2 + subdirs


def test_spans_and_blocks(rich_tree):
    t = tree_of(rich_tree)
    ping = walk(t, "bin/ping")
    size = t.attrs(ping).size
    assert size == 3 << 20 and t.attrs(ping).blocks == size // 512
    assert sum(s.length for s in t.spans(ping, 0, size + 100)) == size
    assert t.spans(ping, size, 10) == []
    assert sum(s.length for s in t.spans(ping, 1000, 200_000)) == 200_000


def test_inode_ranges_of_several_images(rich_tree):
    t = tree_of(rich_tree, base=5 << 32)
    assert t.root == (5 << 32) + 1
    assert t.contains(walk(t, "etc/hostname")) and not t.contains(1)


def test_a_directory_is_sorted_once_however_often_it_is_listed(rich_tree):
    t = tree_of(rich_tree)
    first = t.children(t.root)
    assert t.children(t.root) is first
    assert [n for n, _ in first] == sorted(n for n, _ in first)
