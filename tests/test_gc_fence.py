"""The writer's fence against `thaw gc`, on the interleavings that broke it: a push that
uploads a condemned blob again after a running collector listed the store, and before that
collector deletes it; a dead collector's lock; a collector whose lock was taken over; a tag
written and a lease dropped between a collector's reads. Each is forced with a hook in the
collector's store (the real clock, grace 0: what one run condemns, the next deletes)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from functools import partial
from unittest import mock

import pytest

from blobstore.image.images import open_image
from blobstore.image.refs import Refs, parse_ref
from blobstore.lifecycle.fence import BlobsCollected, GcBusy, GcFence
from blobstore.lifecycle.gcrecord import CONDEMNED, LOCK, LOCK_STALE, GcAborted
from blobstore.lifecycle.leases import Lease
from blobstore.ops.gc import collect
from blobstore.store.blobs import BlobStore, blob_key
from blobstore.store.local import LocalStore

from .test_gc import blob_ids, push, readable, two_images  # noqa: F401 - a fixture

WAIT = 60  # seconds a test waits for the other thread before it fails


class Hooked(LocalStore):
    """The collector's view of the store: ``on(method, prefix_or_key, fn)`` runs ``fn`` once,
    before that call goes through."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.hooks: dict[tuple[str, str], Callable[[], None]] = {}

    def on(self, method: str, arg: str, fn: Callable[[], None]) -> None:
        self.hooks[(method, arg)] = fn

    def _fire(self, method: str, arg: str) -> None:
        fn = self.hooks.pop((method, arg), None)
        if fn is not None:
            fn()

    def list_info(self, prefix=""):
        self._fire("list_info", prefix)
        return super().list_info(prefix)

    def put(self, key, data):
        self._fire("put", key)
        return super().put(key, data)

    def delete_many(self, keys):
        self._fire("delete_many", "")
        return super().delete_many(keys)


def condemn_a(objects) -> set[str]:
    """Untag a:1 and let one run condemn what only it used; those blobs."""
    only_a = blob_ids(objects, "a:1") - blob_ids(objects, "b:1")
    Refs(objects).delete(parse_ref("a:1"))
    collect(objects, grace=0)
    return only_a


class PushThread(threading.Thread):
    """Pushes ``tree`` as a:1; its fence's first wait signals ``waiting`` and blocks until
    ``resume``."""

    def __init__(self, objects, tree) -> None:
        super().__init__(daemon=True)
        self.objects, self.tree = objects, tree
        self.waiting, self.resume = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self.waits = 0

    def sleep(self, _seconds: float) -> None:
        self.waits += 1
        self.waiting.set()
        assert self.resume.wait(WAIT)

    def run(self) -> None:
        try:
            with mock.patch("indexer.push.GcFence", partial(GcFence, sleep=self.sleep)):
                push(self.objects, self.tree, "a:1")
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            self.error = exc


@pytest.fixture
def other(two_images, tmp_path):  # noqa: F811
    return tmp_path / "other"  # a:1's tree


def test_a_blob_uploaded_again_between_a_collectors_listing_and_its_deletes_is_caught(
        two_images, other, tmp_path):  # noqa: F811
    """The race Hypothesis found: the push starts while the collector runs, uploads the
    condemned blobs again after its listing; the collector deletes them. The push must not
    tag; pushed again, it uploads them and the image reads."""
    only_a = condemn_a(two_images)
    collector = Hooked(tmp_path / "store")
    pusher = PushThread(LocalStore(tmp_path / "store"), other)

    def push_meanwhile():  # after the collector listed blobs/, before it deletes
        pusher.start()
        assert pusher.waiting.wait(WAIT), f"the push did not wait: {pusher.error!r}"
        assert all(two_images.has(blob_key(i)) for i in only_a)  # uploaded again

    collector.on("list_info", "nodes/", push_meanwhile)
    result = collect(collector, grace=0)
    assert {blob_key(i) for i in only_a} <= set(result.deleted)
    pusher.resume.set()
    pusher.join(WAIT)
    assert isinstance(pusher.error, BlobsCollected), pusher.error
    assert "nothing was tagged" in str(pusher.error)
    assert not two_images.has("refs/a/1")
    assert readable(two_images, "b:1")

    push(two_images, other, "a:1")  # the record still names them: uploaded again
    assert readable(two_images, "a:1")


def test_a_push_waiting_on_a_collector_longer_than_it_waits_fails_without_tagging(
        two_images, other, tmp_path):  # noqa: F811
    condemn_a(two_images)
    collector = Hooked(tmp_path / "store")
    errors = []

    def push_meanwhile():
        with mock.patch("indexer.push.GcFence", partial(GcFence, max_wait=0)):
            with pytest.raises(GcBusy, match="nothing was tagged") as info:
                push(two_images, other, "a:1")
        errors.append(info.value)

    collector.on("list_info", "nodes/", push_meanwhile)
    collect(collector, grace=0)
    assert errors and not two_images.has("refs/a/1")


def _stale_lock(objects, holder: str, age: float) -> None:
    objects.put(LOCK, json.dumps({"holder": holder, "started": time.time() - age}).encode())
    past = time.time() - age
    os.utime(objects._path(LOCK), (past, past))


def test_a_dead_collectors_lock_holds_a_push_only_until_it_is_stale(two_images, other):  # noqa: F811
    only_a = condemn_a(two_images)
    _stale_lock(two_images, "node-7:1:dead", 60)  # died a minute ago, mid-run

    def sleep(_seconds):  # time passes: the lock goes stale
        os.utime(two_images._path(LOCK), (time.time() - LOCK_STALE - 1,) * 2)
        waits.append(1)

    waits: list[int] = []
    with mock.patch("indexer.push.GcFence", partial(GcFence, sleep=sleep)):
        push(two_images, other, "a:1")
    assert len(waits) == 1  # waited once, then found the lock stale, checked and tagged
    assert readable(two_images, "a:1") and only_a <= blob_ids(two_images, "a:1")


def test_a_push_that_uses_nothing_condemned_does_not_wait_for_a_collector(
        two_images, rich_tree, tmp_path):  # noqa: F811
    _stale_lock(two_images, "node-7:1:live", 5)  # a live run, renewed 5 s ago

    def sleep(_seconds):
        raise AssertionError("the push waited")

    (rich_tree / "new.bin").write_bytes(os.urandom(100_000))
    with mock.patch("indexer.push.GcFence", partial(GcFence, sleep=sleep)):
        push(two_images, rich_tree, "c:1")
    assert readable(two_images, "c:1")


def test_a_collector_whose_lock_was_taken_over_deletes_nothing(two_images, tmp_path):  # noqa: F811
    only_a = condemn_a(two_images)
    collector = Hooked(tmp_path / "store")
    collector.on("put", CONDEMNED, lambda: collector.put(
        LOCK, json.dumps({"holder": "node-9:2:other", "started": time.time()}).encode()))
    with pytest.raises(GcAborted, match="taken over by node-9:2:other"):
        collect(collector, grace=0)
    assert all(two_images.has(blob_key(i)) for i in only_a)
    record = json.loads(two_images.get(CONDEMNED))
    assert {blob_key(i) for i in only_a} <= set(record["deleting"])  # named before


def test_a_tag_written_and_a_lease_dropped_between_a_collectors_reads_keeps_the_image(
        two_images, tmp_path):  # noqa: F811
    """A writer tags, then drops its lease. The collector reads leases, then refs, so
    whichever moment the two land in, it sees one of them."""
    mid, _ = open_image(two_images, "a:1")
    only_a = condemn_a(two_images)
    lease = Lease(two_images, "mount")
    lease.add(manifests=(mid,))
    lease.write()
    collector = Hooked(tmp_path / "store")

    def tag_then_release():  # after the collector read the leases, before the refs
        Refs(two_images).set(parse_ref("a:1"), mid)
        lease.release()

    collector.on("list_info", "refs/", tag_then_release)
    result = collect(collector, grace=0)
    assert not {blob_key(i) for i in only_a} & set(result.deleted)
    assert readable(two_images, "a:1")


def test_the_record_names_what_a_run_deletes_and_a_push_uploads_it_again(
        two_images, other):  # noqa: F811
    only_a = condemn_a(two_images)
    result = collect(two_images, grace=0)
    assert {blob_key(i) for i in only_a} <= set(result.deleted)
    record = json.loads(two_images.get(CONDEMNED))
    assert set(result.deleted) == set(record["deleting"])
    fence = GcFence(two_images)
    assert only_a <= fence.condemned
    blobs = BlobStore(two_images)
    assert not any(blobs.has(i) for i in only_a)
    push(two_images, other, "a:1")
    assert readable(two_images, "a:1")


def test_a_push_waits_long_enough_for_a_dead_collectors_lock_to_go_stale():
    from blobstore.lifecycle.fence import MAX_WAIT
    from blobstore.lifecycle.gcrecord import LOCK_REFRESH

    assert LOCK_STALE + LOCK_REFRESH < MAX_WAIT <= 13 * 60  # as the README says


@pytest.mark.allow_log_warnings
def test_a_collector_never_writes_over_or_removes_a_lock_taken_over_from_it(tmp_path):
    from blobstore.ops.gc import _Lock

    objects = LocalStore(tmp_path / "store")
    lock = _Lock(objects, time.time)
    lock.acquire()
    mine = objects.get(LOCK)
    assert lock._renew(mine)  # its own: renewed
    lock.check()
    other = json.dumps({"holder": "node-9:2:other", "started": time.time()}).encode()
    objects.put(LOCK, other)  # taken over while it stalled
    assert not lock._renew(mine)  # the renewing thread stops, writing nothing
    with pytest.raises(GcAborted, match="taken over"):
        lock.check()
    lock.release()
    assert objects.get(LOCK) == other


def test_a_collector_that_could_not_renew_its_lock_deletes_nothing(tmp_path):
    from blobstore.ops.gc import _Lock

    lock = _Lock(LocalStore(tmp_path / "store"), time.time)
    lock.acquire()
    lock.renewed -= LOCK_STALE  # its renewals failed for that long
    with pytest.raises(GcAborted, match="could not be renewed"):
        lock.check()
    lock.release()
