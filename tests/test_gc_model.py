"""`thaw gc` against a model: a Hypothesis state machine pushes, tags, retags, removes,
mounts and unmounts images, runs collector phases, moves the clock and crashes pushes and
collectors at any store write, and after every step checks that each image the model says
must stay readable (tagged, or held by a mount's lease) reads completely, and that every
object a run deleted was condemned a grace or more before. At the end, with nothing held,
a few more runs leave exactly the tagged images' blobs (and, on the real clock, those a dead
push's lease still holds for its last half hour): the work a crash left is finished.

The file store runs on a fake clock (the store's timestamps follow it); a shorter run on
SeaweedFS uses the real clock and the store's own timestamps, with a grace of zero.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from blobstore.image.images import load_manifest
from blobstore.image.refs import Refs, parse_ref
from blobstore.lifecycle.fence import BlobsCollected, GcBusy
from blobstore.lifecycle.gcrecord import CONDEMNED, LOCK, LOCK_STALE
from blobstore.lifecycle.leases import Lease, parse_lease
from blobstore.ops.gc import COLLECTED, GcLocked, collect
from blobstore.store.base import ObjectStore
from blobstore.store.blobs import BlobStore, blob_key
from blobstore.store.local import LocalStore
from blobstore.store.url import open_store
from indexer.chunker import ChunkerParams
from indexer.push import push_tree
from indexer.sources import open_source

HOUR = 3600.0
NAMES = ("a:1", "a:2", "b:1")


class Crash(BaseException):
    """The process dies here (nothing may catch it)."""


class Clock:
    def __init__(self, real: bool) -> None:
        self.real, self.now = real, time.time() + 60

    def __call__(self) -> float:
        return time.time() if self.real else self.now


class ModelStore(ObjectStore):
    """The store under test: at its ``crash_in``-th write the process "dies", and every
    call after that dies too (cleanup in ``finally`` clauses included) until ``revive``; on
    a fake clock it gives what it writes the clock's time as its timestamp."""

    def __init__(self, inner: ObjectStore, clock: Clock) -> None:
        self.inner, self.clock = inner, clock
        self.crash_in: int | None = None
        self.dead = False
        self.hook_in: int | None = None  # at that write, ``hook`` runs first (another client)
        self.hook: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._io = threading.Lock()  # a write and its timestamp are one step, as in a store

    def revive(self) -> None:
        self.crash_in, self.dead, self.hook_in, self.hook = None, False, None, None

    def _alive(self) -> None:
        if self.dead:
            raise Crash()

    def _tick(self) -> None:
        with self._lock:
            self._alive()
            hook = None
            if self.hook_in is not None:
                self.hook_in -= 1
                if self.hook_in < 0:
                    hook, self.hook, self.hook_in = self.hook, None, None
            elif self.crash_in is not None:
                self.crash_in -= 1
                if self.crash_in < 0:
                    self.dead = True
                    raise Crash()
        if hook is not None:
            hook()

    def _stamp(self, key: str) -> None:
        if isinstance(self.inner, LocalStore) and not self.clock.real:
            os.utime(self.inner._path(key), (self.clock.now, self.clock.now))

    def get(self, key):
        self._alive()
        return self.inner.get(key)

    def put(self, key, data):
        self._tick()
        with self._io:
            self.inner.put(key, data)
            self._stamp(key)

    def create(self, key, data):
        self._tick()
        with self._io:
            made = self.inner.create(key, data)
            if made:
                self._stamp(key)
        return made

    def size(self, key):
        self._alive()
        return self.inner.size(key)

    def delete(self, key):
        self._tick()
        self.inner.delete(key)

    def list_info(self, prefix=""):
        self._alive()
        with self._io:
            return iter(list(self.inner.list_info(prefix)))

    def __str__(self) -> str:
        return f"model({self.inner})"


def make_trees(root: Path) -> list[Path]:
    """Three small trees: the first two share a file, the third shares nothing."""
    shared = os.urandom(200_000)
    trees = []
    for n, own in enumerate((150_000, 100_000, 120_000)):
        tree = root / f"tree{n}"
        tree.mkdir(parents=True)
        if n < 2:
            (tree / "shared.bin").write_bytes(shared)
        (tree / f"own{n}.bin").write_bytes(os.urandom(own))
        trees.append(tree)
    return trees


class GcMachine(RuleBasedStateMachine):
    """Set ``store_factory``, ``trees``, ``real`` and ``grace`` on a subclass."""

    store_factory = None
    trees: list[Path] = []
    real = False
    grace = HOUR
    interleave = True  # a collector may run in the middle of a push

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock(self.real)
        self.objects = ModelStore(type(self).store_factory(), self.clock)
        self.tags: dict[str, str] = {}  # the model: ref -> manifest id
        self.held: dict[str, str] = {}  # lease key -> manifest id, for each live mount
        self.leases: dict[str, Lease] = {}
        self.lock_left = False  # a crashed collector's lock is in the store

    # -- what users do -------------------------------------------------------------------

    @rule(tree=st.integers(0, 2), ref=st.sampled_from(NAMES),
          event=st.none() | st.tuples(st.sampled_from(("crash", "gc")), st.integers(0, 12)))
    def push(self, tree, ref, event):
        """A push; it may die at a store write, or a collector may run at one (its sweep
        meeting the push's dedup: the race)."""
        if event and event[0] == "gc" and not self.interleave:
            event = None
        if event and event[0] == "crash":
            self.objects.crash_in = event[1]
        elif event:
            self.objects.hook_in, self.objects.hook = event[1], self._collect_meanwhile
        try:
            # the push's lease in the collector's clock, as a store clock gives it
            with mock.patch("indexer.push.Lease", partial(Lease, clock=self.clock)), \
                    mock.patch("blobstore.lifecycle.fence.MAX_WAIT", 0.0), \
                    open_source(str(self.trees[tree])) as src:
                mid = push_tree(src, self.objects, parse_ref(ref), jobs=2,
                                params=ChunkerParams("fastcdc", 64 << 10)).manifest_id
        except Crash:
            mid = None
        except (BlobsCollected, GcBusy):
            # The fence caught a collector that deleted, or may still delete, a blob the
            # push used: nothing is tagged (a dead collector's lock makes it wait; here 0 s).
            assert event is not None or self.lock_left
            mid = None
        finally:
            self.objects.revive()
        if mid is None:
            mid = self._ref(ref)  # the tag is written last: the new image, or the old one
            if mid is None:
                return
            assert self._readable(mid)
        self.tags[ref] = mid

    # What a rule draws never depends on the model's state (no preconditions, no bundles):
    # which pushes succeed depends on how the push's threads interleave, so a failure that
    # timing made is replayed with the same draws, and Hypothesis reports the original
    # error (as flaky) instead of a FlakyStrategyDefinition that hides it.

    @rule(src=st.sampled_from(NAMES), dst=st.sampled_from(NAMES))
    def tag(self, src, dst):  # `thaw tag`, retagging when dst exists
        if src not in self.tags:
            return
        Refs(self.objects).set(parse_ref(dst), self.tags[src])
        self.tags[dst] = self.tags[src]

    @rule(ref=st.sampled_from(NAMES))
    def rm(self, ref):
        if ref not in self.tags:
            return
        Refs(self.objects).delete(parse_ref(ref))
        del self.tags[ref]

    @rule(ref=st.sampled_from(NAMES))
    def mount(self, ref):
        if ref not in self.tags:
            return
        lease = Lease(self.objects, "mount", clock=self.clock, ttl=HOUR)
        lease.add(manifests=(self.tags[ref],))
        lease.write()  # before the mount answers a read
        self.leases[lease.key], self.held[lease.key] = lease, self.tags[ref]

    @rule(pick=st.integers(0, 7))
    def unmount(self, pick):
        if self.leases:
            self._unmount(list(self.leases)[pick % len(self.leases)])  # in mount order

    @rule(crash=st.none() | st.integers(0, 6))
    def gc(self, crash):
        before = set(self.objects.list(""))
        condemned = self._condemned()
        now = self.clock()
        self.objects.crash_in = crash
        try:
            self._collect()
            outcome = "done"
        except Crash:
            outcome = "crashed"
        except GcLocked:
            assert self.lock_left, "locked out with no collector running"
            outcome = "locked"
        finally:
            self.objects.revive()
        if outcome == "crashed":
            self.lock_left = self.objects.has(LOCK)
        elif outcome == "done":
            assert not self.objects.has(LOCK), "a finished collector left its lock"
            self.lock_left = False
        for key in before - set(self.objects.list("")):
            if not key.startswith(COLLECTED):
                continue  # gc/lock, taken over from a dead collector
            assert key in condemned, f"{key} deleted without being condemned first"
            assert now - condemned[key] >= self.grace, f"{key} deleted within its grace"

    @rule(minutes=st.sampled_from((10, 30, 60, 90)))
    def advance(self, minutes):
        if not self.real:
            self.clock.now += minutes * 60
        for lease in self.leases.values():
            lease.write()  # a mount renews its lease far more often than this

    # -- what must hold ------------------------------------------------------------------

    @invariant()
    def tagged_and_mounted_images_read_completely(self):
        for mid in {*self.tags.values(), *self.held.values()}:
            assert self._readable(mid), f"image {mid} lost blobs"

    def teardown(self):
        """With nothing held, later runs finish what crashes left: only tagged blobs stay."""
        for key in list(self.leases):
            self._unmount(key)
        if not self.real:
            self.clock.now += LOCK_STALE + HOUR  # a dead collector's lock is stale by then
        elif self.lock_left:
            self.objects.delete(LOCK)  # what an operator does rather than wait 6 h
        for _ in range(3):
            self._collect()
            if not self.real:
                self.clock.now += self.grace
        left = [parse_lease(self.objects.get(k)) for k in self.objects.list("leases/")]
        if not self.real:
            assert not left  # every lease a dead push left has expired and gone
        assert all(lease["expires"] > self.clock() for lease in left)
        want = {blob_key(i) for lease in left for i in lease["blobs"]}
        for mid in {*self.tags.values(), *(m for lease in left for m in lease["manifests"])}:
            want |= {blob_key(mid)} | {blob_key(c.id) for c in self._manifest(mid).chunks}
        assert set(self.objects.list("blobs/")) == want

    # -- helpers -------------------------------------------------------------------------

    def _unmount(self, key: str) -> None:
        self.leases.pop(key).release()
        del self.held[key]

    def _collect(self):
        # on the real clock, the store's own: the time it gives a probe it has just written
        return collect(self.objects, grace=self.grace, clock=None if self.real else self.clock)

    def _collect_meanwhile(self) -> None:
        try:
            self._collect()
        except GcLocked:
            assert self.lock_left

    def _ref(self, ref: str) -> str | None:
        try:
            return self.objects.get(parse_ref(ref).key).decode().strip()
        except Exception:
            return None

    def _manifest(self, mid: str):
        return load_manifest(BlobStore(self.objects), mid)

    def _readable(self, mid: str) -> bool:
        blobs = BlobStore(self.objects)
        return all(blobs.get(c.id, max_size=c.size) is not None
                   for c in self._manifest(mid).chunks)

    def _condemned(self) -> dict[str, float]:
        try:
            doc = json.loads(self.objects.get(CONDEMNED))
        except Exception:
            return {}
        return {k: v[0] for k, v in doc["objects"].items()}


@pytest.mark.allow_log_warnings  # a dead collector's lock is taken over, loudly
def test_gc_against_a_model_on_a_fake_clock(tmp_path):
    trees = make_trees(tmp_path / "trees")

    class OnFiles(GcMachine):
        pass

    OnFiles.trees = trees
    OnFiles.store_factory = staticmethod(lambda: LocalStore(tmp_path / f"s{uuid.uuid4().hex}"))
    run_state_machine_as_test(OnFiles, settings=settings(
        max_examples=200, stateful_step_count=40, deadline=None, database=None,
        suppress_health_check=list(HealthCheck)))


@pytest.mark.allow_log_warnings
@pytest.mark.e2e  # a minute or so: every step is a round trip to SeaweedFS
def test_gc_against_a_model_on_seaweedfs_with_the_real_clock(tmp_path, s3_env):
    trees = make_trees(tmp_path / "trees")

    class OnSeaweed(GcMachine):
        real = True
        # The real clock: what is condemned may go at the next run. A push's lease is
        # written again only every few minutes, far within any real grace but not within
        # zero, so no collector runs in the middle of a push here (the fake clock has that).
        grace = 0.0
        interleave = False

    OnSeaweed.trees = trees
    OnSeaweed.store_factory = staticmethod(
        lambda: open_store(f"s3://thaw/model-{uuid.uuid4().hex[:12]}"))
    run_state_machine_as_test(OnSeaweed, settings=settings(
        max_examples=5, stateful_step_count=15, deadline=None, database=None,
        suppress_health_check=list(HealthCheck)))
