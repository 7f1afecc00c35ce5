"""FUSE handlers called directly under pytest-trio: no mount, real tree and store."""

from __future__ import annotations

import errno
import json
import os

import pyfuse3
import pytest

from blobstore.image.images import open_image
from blobstore.image.refs import parse_ref
from blobstore.store.blobs import BlobStore, blob_key
from blobstore.store.codec import encode_blob
from blobstore.store.memory import MemoryStore
from blobstore.store.tiers import node_tiers
from fusefs.fetch import ChunkFetcher, RetryPolicy
from fusefs.namespace import SingleImage
from fusefs.ops import ImageOps
from fusefs.stats import MountStats
from fusefs.tree import FsTree
from indexer.chunker import ChunkerParams
from indexer.push import push_tree
from indexer.sources import open_source


@pytest.fixture
def image(rich_tree):
    objects = MemoryStore()
    with open_source(str(rich_tree)) as src:
        push_tree(src, objects, parse_ref("t:1"), params=ChunkerParams("fastcdc", 64 << 10))
    mid, manifest = open_image(objects, "t:1")
    tiers = node_tiers(BlobStore(objects), None)
    fetcher = ChunkFetcher(lambda id, size: tiers.stack.get(id, max_size=size),
                           retry=RetryPolicy(attempts=1))
    ns = SingleImage(mid, FsTree(manifest, image_id=mid))

    def statistics() -> MountStats:
        return MountStats.collect(ns.images(), tiers, fetcher.statistics())

    return ImageOps(ns, fetcher, statistics=statistics), objects, manifest


async def path_ino(ops: ImageOps, path: str) -> int:
    ino = pyfuse3.ROOT_INODE
    for part in path.split("/"):
        ino = (await ops.lookup(ino, part.encode(), None)).st_ino
    return ino


async def read_all(ops: ImageOps, ino: int, step: int) -> bytes:
    fh = (await ops.open(ino, os.O_RDONLY, None)).fh
    out, off = [], 0
    while True:
        piece = bytes(await ops.read(fh, off, step))
        if not piece:
            break
        assert len(piece) == step or off + len(piece) == (await ops.getattr(ino)).st_size
        out.append(piece)
        off += len(piece)
    await ops.release(fh)
    return b"".join(out)


@pytest.mark.parametrize("step", [4096, 131072, 1 << 20, 3_000_001])
async def test_reads_fill_the_request_across_chunks(image, rich_tree, step):
    ops, _, _ = image
    ino = await path_ino(ops, "bin/ping")
    assert await read_all(ops, ino, step) == (rich_tree / "bin" / "ping").read_bytes()


async def test_lookup_getattr_errors(image):
    ops, _, _ = image
    missing = await ops.lookup(pyfuse3.ROOT_INODE, b"missing", None)
    assert missing.st_ino == 0 and missing.entry_timeout >= 3600  # a negative entry
    assert ops.requests["lookup_missing"] == 1
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.getattr(987654)
    assert e.value.errno == errno.ENOENT
    ino = await path_ino(ops, "etc/hostname")
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.open(ino, os.O_WRONLY, None)
    assert e.value.errno == errno.EROFS


@pytest.mark.allow_log_warnings
async def test_a_corrupt_chunk_is_eio_never_wrong_bytes(image, caplog):
    ops, objects, manifest = image
    ino = await path_ino(ops, "bin/ping")
    spans = ops.ns.tree.spans(ino, 0, 1)
    victim = manifest.chunks[spans[0].chunk].id
    objects.put(blob_key(victim), encode_blob(b"forged"))
    fh = (await ops.open(ino, os.O_RDONLY, None)).fh
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.read(fh, 0, 4096)
    assert e.value.errno == errno.EIO
    mid = ops.ns.manifest_id
    assert f"image {mid[:12]} /bin/ping: blob {victim}" in caplog.text  # image, file, chunk
    other = await path_ino(ops, "etc/hostname")
    fh2 = (await ops.open(other, os.O_RDONLY, None)).fh
    assert bytes(await ops.read(fh2, 0, 100)) == b"thaw\n"  # the rest still works


@pytest.mark.allow_log_warnings
async def test_a_read_across_chunks_that_fails_is_one_logged_line_not_a_bug(image, caplog):
    """The chunks of a multi-chunk read are fetched in a nursery: its failure must reach the
    boundary as the one store error (image, file, chunk), never as an ExceptionGroup."""
    ops, objects, manifest = image
    ino = await path_ino(ops, "bin/ping")
    spans = ops.ns.tree.spans(ino, 0, 1 << 20)
    assert len(spans) > 2
    for s in spans[1:3]:  # two of the chunks fail at once
        objects.delete(blob_key(manifest.chunks[s.chunk].id))
    fh = (await ops.open(ino, os.O_RDONLY, None)).fh
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.read(fh, 0, 1 << 20)
    assert e.value.errno == errno.EIO
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "/bin/ping: blob" in errors[0] and "not found" in errors[0]
    assert "bug in" not in caplog.text and not any(r.exc_info for r in caplog.records)


@pytest.mark.allow_log_warnings
@pytest.mark.parametrize("bug", [RuntimeError("boom"), KeyError("a dictionary bug")])
async def test_a_bug_in_a_handler_is_eio_not_a_dead_mount(image, caplog, bug):
    """A KeyError too: lookups use named errors, so a KeyError is a bug, not ENOENT."""
    ops, _, _ = image

    def broken(ino):
        raise bug

    ops.ns.attrs = broken
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.getattr(pyfuse3.ROOT_INODE)
    assert e.value.errno == errno.EIO
    assert "bug in getattr" in caplog.text


async def test_xattrs_and_the_hidden_stats_file(image):
    ops, _, manifest = image
    ping = await path_ino(ops, "bin/ping")
    assert await ops.listxattr(ping, None) == [b"security.capability"]
    assert len(await ops.getxattr(ping, b"security.capability", None)) == 20
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.getxattr(ping, b"user.none", None)
    assert e.value.errno == pyfuse3.ENOATTR
    await read_all(ops, ping, 1 << 20)
    listed = [name async for name in _names(ops, pyfuse3.ROOT_INODE)]
    assert b".thaw-stats" not in listed and b"bin" in listed
    stats = await path_ino(ops, ".thaw-stats")
    fh = (await ops.open(stats, os.O_RDONLY, None)).fh
    pieces = [bytes(await ops.read(fh, off, 7)) for off in range(0, 1 << 16, 7)]
    await ops.release(fh)
    doc = json.loads(b"".join(pieces))  # in small reads: made once, at open
    assert doc["image_bytes"] == manifest.data_size
    assert 3 << 20 <= doc["fetched_bytes"] < manifest.data_size
    assert (await ops.getattr(stats)).attr_timeout == 0  # the kernel asks every time
    assert await path_ino(ops, "bin/.thaw-stats") == 0  # only at the root (0: missing)
    assert await path_ino(ops, f".thaw-warm.{ping}.boot") == 0  # a single image cannot warm


async def test_an_image_without_xattrs_lets_the_kernel_answer_getxattr(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"x")
    objects = MemoryStore()
    with open_source(str(tmp_path / "src")) as src:
        push_tree(src, objects, parse_ref("plain:1"))
    mid, manifest = open_image(objects, "plain:1")
    ns = SingleImage(mid, FsTree(manifest, image_id=mid))
    ops = ImageOps(ns, ChunkFetcher(lambda id, size: objects.get(id)))
    for name in (b"security.selinux", b"system.posix_acl_access"):
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.getxattr(pyfuse3.ROOT_INODE, name, None)
        assert e.value.errno == errno.ENOSYS  # the kernel stops asking: no data, always
    assert await ops.listxattr(pyfuse3.ROOT_INODE, None) == []


async def _names(ops, ino):
    fh = await ops.opendir(ino, None)
    replies = []
    real = pyfuse3.readdir_reply
    pyfuse3.readdir_reply = lambda token, name, attrs, nxt: replies.append(name) or True
    try:
        await ops.readdir(fh, 0, None)
    finally:
        pyfuse3.readdir_reply = real
    for name in replies:
        yield name


async def test_statfs_and_links(image):
    ops, _, manifest = image
    s = await ops.statfs(None)
    assert s.f_blocks * 4096 >= manifest.data_size and s.f_files == len(manifest.entries)
    assert await ops.readlink(await path_ino(ops, "bin/abs-link"), None) == b"/etc/hostname"
    dot = await ops.lookup(pyfuse3.ROOT_INODE, b".", None)
    assert dot.st_ino == pyfuse3.ROOT_INODE


@pytest.fixture
async def running(image, nursery):
    ops, objects, manifest = image
    await nursery.start(ops.fetcher.run)
    return ops, manifest


async def _settled_fetches(ops) -> int:
    import trio.testing

    await trio.testing.wait_all_tasks_blocked()
    s = ops.fetcher.statistics()
    return s.demand_fetches + s.prefetches


async def test_random_reads_fetch_only_the_chunks_they_touch(running):
    """A jump starts no read-ahead: 4 KiB reads at scattered offsets fetch their own chunks
    and nothing after them."""
    import random

    ops, manifest = running
    ino = await path_ino(ops, "bin/ping")
    tree = ops.ns.tree
    fh = (await ops.open(ino, os.O_RDONLY, None)).fh
    rng = random.Random(7)
    touched = set()
    for off in sorted({rng.randrange(0, 3 << 20, 4096) for _ in range(12)}, reverse=True):
        await ops.read(fh, off, 4096)
        touched.update(s.chunk for s in tree.spans(ino, off, 4096))
    assert await _settled_fetches(ops) == len({manifest.chunks[i].id for i in touched})


async def test_sequential_reads_fetch_ahead_of_the_reader(running):
    ops, manifest = running
    ino = await path_ino(ops, "bin/ping")
    fh = (await ops.open(ino, os.O_RDONLY, None)).fh
    await ops.read(fh, 0, 131072)
    await ops.read(fh, 131072, 131072)
    await _settled_fetches(ops)
    assert ops.fetcher.statistics().prefetches > 0


async def test_named_lookup_errors_map_to_their_errno(image):
    """readlink of a file is EINVAL, an unknown handle EBADF, an unknown inode ENOENT."""
    ops, _, _ = image
    cases = [(ops.readlink(await path_ino(ops, "etc/hostname"), None), errno.EINVAL),
             (ops.read(12345, 0, 10), errno.EBADF),
             (ops.getattr(1 << 40), errno.ENOENT)]
    for call, expected in cases:
        with pytest.raises(pyfuse3.FUSEError) as e:
            await call
        assert e.value.errno == expected


@pytest.mark.parametrize("kept", [100_000, 10])
async def test_a_listing_in_many_requests_builds_each_entrys_attributes_once(
        tmp_path, monkeypatch, kept):
    """Whether the directory's attributes are kept (small) or not (over LISTED_ENTRIES),
    a listing that takes many readdir requests builds each entry's attributes about once.
    The kernel's reply buffer is played by a fake ``readdir_reply`` that takes 20 names."""
    import fusefs.ops as ops_module

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(200):
        (src / "d" / f"f{i:03d}").touch()
    objects = MemoryStore()
    with open_source(str(src)) as tree:
        push_tree(tree, objects, parse_ref("d:1"))
    mid, manifest = open_image(objects, "d:1")
    ns = SingleImage(mid, FsTree(manifest, image_id=mid))
    ops = ImageOps(ns, ChunkFetcher(lambda id, size: b""))
    built = []
    real_attrs = ns.attrs
    monkeypatch.setattr(ns, "attrs", lambda ino: built.append(ino) or real_attrs(ino))
    monkeypatch.setattr(ops_module, "LISTED_ENTRIES", kept)
    names: list[bytes] = []

    class Page:
        def __init__(self) -> None:
            self.taken = 0

    def reply(token, name, attrs, next_id):
        if token.taken == 20:
            return False
        token.taken += 1
        names.append(name)
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    d = await path_ino(ops, "d")
    fh = await ops.opendir(d, None)
    while True:
        page = Page()
        await ops.readdir(fh, len(names), page)
        if not page.taken:
            break
    assert names == sorted(f"f{i:03d}".encode() for i in range(200))
    assert len(built) <= 200 + 11  # one extra per page at most, never per request x size


def test_control_file_names():
    from fusefs import control

    assert control.parse(b".thaw-stats") == control.Control("stats")
    assert control.parse(control.warm_name(4294967297, "boot").encode()) == \
        control.Control("warm", 4294967297, "boot")
    for bad in (b".thaw-stats2", b".thaw-warm.12", b".thaw-warm.x.boot", b".thaw-warm.1.-x",
                b".thaw-warm.1." + b"w" * 65, b".thaw-warm.1.a/b"):
        assert control.parse(bad) is None, bad
