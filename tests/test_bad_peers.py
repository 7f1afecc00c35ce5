"""A cache peer that cuts answers off, drips them, sends garbage or hangs: every read still
gets the right bytes, a bad peer costs a read at most two peer deadlines and one store
fetch, and it is skipped after its third failure (README, "Cache peers")."""

from __future__ import annotations

import json
import os
import threading

import pytest

from blobstore.image.images import open_image
from blobstore.store.blobs import BlobStore
from blobstore.store.codec import encode_blob
from blobstore.store.digest import blob_id
from blobstore.store.local import LocalStore
from blobstore.store.peerclient import FIRST_BYTE, FLOOR_RATE, PeerClient, PeerFailed, deadline
from blobstore.store.peers import Membership, PeerTier, owners
from blobstore.store.tiers import BlobTier, Counting, FirstHit

from .badpeer import MODES, BadPeer
from .conftest import Mounted
from .test_peers import TOKEN, read_tree, serving


def _blob(size: int = 200_000):
    data = os.urandom(size)
    return blob_id(data), data, encode_blob(data)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_documented_deadline_is_two_seconds_then_ten_megabytes_a_second():
    assert (FIRST_BYTE, FLOOR_RATE) == (2.0, 10e6)
    assert deadline(100.0, 4_000_000) == pytest.approx(102.4)


@pytest.mark.parametrize("mode", MODES)
def test_the_client_fails_every_bad_answer(mode):
    id, _, stored = _blob()
    peer = BadPeer("127.0.0.2", mode, lambda _: stored, drip=0.05)
    client = PeerClient(TOKEN, first_byte=0.2, floor_rate=1e6)  # 0.4 s for this blob
    try:
        with pytest.raises(PeerFailed) as failed:
            client.get(peer.url, id)
    finally:
        peer.close()
    if mode == "cut":  # resumed once from where it broke, then given up
        assert "cut off again" in str(failed.value)
        assert len(peer.requests) == 2 and b"bytes=100000-" in peer.requests[1].lower()
    elif mode in ("slow", "hang"):
        assert "deadline" in str(failed.value) and len(peer.requests) == 1
    else:  # what it sent is named escaped, on one line of the log
        assert "\\x00" in str(failed.value) and not set("\0\r\n") & set(str(failed.value))


def test_a_slow_answer_is_cut_at_its_deadline_though_every_byte_comes_in_time():
    """The defect: a socket timeout bounds each read, so a byte a second never tripped it.
    Here each byte moves a fake clock a second and arrives at once: the answer is given up
    when the clock passes its deadline, not 200,000 s later."""
    id, _, stored = _blob()
    clock = Clock()
    sent = []

    def tick() -> None:
        clock.now += 1.0
        sent.append(1)

    peer = BadPeer("127.0.0.2", "slow", lambda _: stored, drip=0.001, on_byte=tick)
    client = PeerClient(TOKEN, clock=clock)
    try:
        with pytest.raises(PeerFailed, match="deadline"):
            client.get(peer.url, id)
    finally:
        peer.close()
    assert deadline(0, len(stored)) < clock.now < 100 and len(sent) < 100


class ScriptedClient:
    """Stands in for ``PeerClient`` on a fake clock: each peer's answer takes
    ``seconds[peer]`` (inf: never), and one that would outlast its deadline (the real
    client's, tested above) costs the deadline and fails."""

    def __init__(self, clock: Clock, seconds: dict[str, float], stored: bytes) -> None:
        self.clock, self.seconds, self.stored = clock, seconds, stored
        self.asked: list[str] = []

    def get(self, peer: str, id: str, cached_only: bool = False) -> bytes:
        self.asked.append(peer)
        due = deadline(0.0, len(self.stored))
        if self.seconds[peer] > due:
            self.clock.now += due
            raise PeerFailed("no whole answer within its deadline")
        self.clock.now += self.seconds[peer]
        return self.stored

    def drop(self, peer: str) -> None:
        pass


class SlowStore(BlobTier):
    """The store: every fetch takes ``seconds`` on the fake clock."""

    def __init__(self, clock: Clock, stored: bytes, seconds: float = 0.1) -> None:
        self.clock, self.stored, self.seconds = clock, stored, seconds

    def get_stored(self, id: str) -> bytes:
        self.clock.now += self.seconds
        return self.stored


@pytest.mark.allow_log_warnings
@pytest.mark.parametrize("healthy_second", [False, True])
def test_a_bad_peer_costs_at_most_two_deadlines_and_a_store_fetch_then_is_skipped(
        healthy_second):
    clock = Clock()
    id, data, stored = _blob(100_000)
    first, second = owners(["http://127.0.0.2:1", "http://127.0.0.3:1"], id)
    seconds = {first: float("inf"), second: 0.01 if healthy_second else float("inf")}
    client = ScriptedClient(clock, seconds, stored)
    tier = PeerTier(Membership(urls=list(seconds)), None, TOKEN, client=client, clock=clock)
    store = SlowStore(clock, stored)
    stack = FirstHit([Counting(tier, "peer"), store])
    one = deadline(0.0, len(stored))
    for n in range(10):
        started = clock.now
        assert stack.fetch(id).data == data
        cost = clock.now - started
        assert cost <= 2 * one + store.seconds + 1e-9, (n, cost)
    bad = [p for p in seconds if seconds[p] == float("inf")]
    assert all(client.asked.count(p) == 3 for p in bad)  # skipped after its third failure
    assert all(tier.peer_stats()[p] == {"chunks": 0, "bytes": 0, "errors": 3,
                                        "skipped": True} for p in bad)
    assert clock.now - started == pytest.approx(0.01 if healthy_second else store.seconds)


@pytest.fixture
def pushed(thaw, rich_tree, store_url):
    thaw("push", str(rich_tree), "rich:1", "--chunker", "fastcdc:64K")
    objects = LocalStore(store_url[len("file://"):])
    return objects, *open_image(objects, "rich:1")


@pytest.mark.mount
@pytest.mark.parametrize("mode", MODES)
def test_a_mount_reads_every_file_right_beside_a_bad_peer(thaw, pushed, rich_tree, tmp_path,
                                                           mode):
    """The probe's case: a healthy `thaw serve` and a bad peer, `--prefetch none
    --no-hints`; every file compares equal, and the bad peer is counted and skipped."""
    objects, _, manifest = pushed
    blobs = BlobStore(objects)
    bad = BadPeer("127.0.0.2", mode, blobs.get_stored, drip=1.0)
    try:
        with serving(thaw, tmp_path / "c3", "127.0.0.3") as (good, _):
            mnt = tmp_path / "mnt"
            token = tmp_path / "token-127.0.0.3"
            first = {owners([bad.url, good], c.id)[0] for c in manifest.chunks}
            assert first == {bad.url, good}  # the bad peer owns some of the chunks
            with Mounted(thaw, mnt, "mount", "rich:1", str(mnt), "--cache-dir",
                         str(tmp_path / "c"), "--prefetch", "none", "--no-hints",
                         "--peers", f"{bad.url},{good}", "--peer-token-file", str(token)):
                assert read_tree(mnt) == read_tree(rich_tree)
                stats = json.loads(thaw("stats", str(mnt), "--json").stdout)
    finally:
        bad.close()
    assert stats["peers"][bad.url]["errors"] >= 3 and stats["peers"][bad.url]["skipped"]
    assert stats["peers"][good]["chunks"] > 0


def test_a_peer_is_skipped_for_30_s_after_three_failures_then_probed():
    """The README's figures, on a fake clock."""
    from blobstore.store.peerhealth import HealthBook

    clock = Clock()
    book = HealthBook(clock=clock)
    peer = "http://127.0.0.2:1"
    for _ in range(2):
        book.failed(peer)
        assert book.usable(peer)
    book.failed(peer)  # the third in a row
    clock.now += 29.9
    assert not book.usable(peer)
    clock.now += 0.1
    assert book.usable(peer)  # one request probes it
    assert not book.usable(peer)  # and no other meanwhile
    book.failed(peer)  # the probe failed: another 30 s
    clock.now += 29.9
    assert not book.usable(peer)
    clock.now += 0.1
    assert book.usable(peer)
    book.answered(peer, 100, 0.01)  # it answered: in use again
    assert book.usable(peer) and book.usable(peer)
    book.failed(peer)
    assert book.usable(peer)  # one failure is not three in a row


def test_one_kept_alive_connection_carries_many_answers():
    """A peer that keeps its connections alive, as `thaw serve` does: every answer is
    whole, and they all come over one connection."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    id, data, stored = _blob()
    connections = []

    class KeepAlive(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            connections.append(self.client_address)

        def do_GET(self):  # noqa: N802 - the stdlib's name
            body = stored if self.path.endswith(id) else b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.2", 0), KeepAlive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.2:{server.server_address[1]}"
    client = PeerClient(TOKEN)
    try:
        for _ in range(5):
            assert client.get(url, id) == stored
            assert client.get(url, "0" * 64) is None  # a 404 too
    finally:
        server.shutdown()
    assert len(connections) == 1
