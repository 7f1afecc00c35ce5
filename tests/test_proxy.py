"""The remote-like proxy: requests are counted and delayed, responses paced, bytes intact.
Its sleeps are recorded, not slept, so nothing here is timed."""

from __future__ import annotations

import http.client
import http.server
import os
import threading

import pytest

from .proxy import RemoteLikeProxy

BODY = os.urandom(300_000)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def do_PUT(self):
        data = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address
    server.shutdown()


class FakeTime:
    """A clock that only its sleeps move; the sleeps are recorded."""

    def __init__(self) -> None:
        self.now, self.slept, self._lock = 0.0, [], threading.Lock()

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self.now += seconds

    def clock(self) -> float:
        return self.now


def test_requests_are_counted_delayed_and_responses_paced(upstream):
    fake = FakeTime()
    slept = fake.slept
    with RemoteLikeProxy(upstream, delay=0.02, rate=1e6, sleep=fake.sleep,
                         clock=fake.clock) as proxy:
        conn = http.client.HTTPConnection(*proxy.address)
        for path in ("/bucket/blobs/aa/1", "/bucket/refs/x/y"):
            conn.request("GET", path)
            assert conn.getresponse().read() == BODY
        payload = os.urandom(100_000)
        conn.request("PUT", "/bucket/blobs/bb/2", body=payload)
        assert conn.getresponse().read() == payload
        conn.close()
        assert proxy.count() == 3 and proxy.count("GET") == 2
        assert proxy.count(contains="/blobs/") == 2
        assert proxy.requests[0] == ("GET", "/bucket/blobs/aa/1")
    delays = [s for s in slept if s == 0.02]
    pacing = sum(s for s in slept if s != 0.02)
    assert len(delays) == 3
    sent = 2 * len(BODY) + len(payload)  # plus response heads
    assert sent / 1e6 <= pacing <= (sent + 3 * 200) / 1e6 + 1e-9


def test_pacing_makes_up_for_a_sleep_that_overshoots_and_banks_no_credit_when_idle(upstream):
    """A sleep that lasts longer than asked is taken off the next piece's, so a
    connection moves ``rate`` bytes a second however coarse the timer; after an idle spell
    the next response is paced from when it arrives."""
    fake = FakeTime()
    asked: list[float] = []

    def oversleep(seconds: float) -> None:
        if seconds != 0.02:  # a request's delay is slept as asked; every pause lasts 3x
            asked.append(seconds)
            seconds *= 3
        fake.sleep(seconds)

    with RemoteLikeProxy(upstream, delay=0.02, rate=1e6, sleep=oversleep,
                         clock=fake.clock) as proxy:
        conn = http.client.HTTPConnection(*proxy.address)
        conn.request("GET", "/one")
        assert conn.getresponse().read() == BODY
        # The clock moved 3x each pause; the pauses asked for made up for it, so together
        # they took about what the body takes at the rate, not the 3x that sleeping a
        # piece's time per piece takes. (Where the upstream had nothing ready for a moment,
        # the schedule starts anew and that overshoot is not made up: hence 2x, not 1x.)
        took = 3 * sum(asked)
        assert len(BODY) / 1e6 <= took < 2 * len(BODY) / 1e6
        fake.now += 100.0  # idle: no credit banked
        before = len(asked)
        conn.request("GET", "/two")
        assert conn.getresponse().read() == BODY
        conn.close()
        assert 3 * sum(asked[before:]) >= len(BODY) / 1e6


def test_a_second_connection_is_delayed_on_its_own(upstream):
    slept: list[float] = []
    with RemoteLikeProxy(upstream, delay=0.5, rate=0, sleep=slept.append) as proxy:
        for _ in range(2):
            conn = http.client.HTTPConnection(*proxy.address)
            conn.request("GET", "/x")
            assert conn.getresponse().read() == BODY
            conn.close()
    assert slept == [0.5, 0.5] and proxy.count("GET", "/x") == 2


@pytest.mark.s3
def test_an_s3_store_works_through_the_proxy_and_its_gets_are_counted(seaweed, monkeypatch):
    from blobstore.store.blobs import BlobStore
    from blobstore.store.url import open_store

    host, port = seaweed.endpoint.removeprefix("http://").split(":")
    with RemoteLikeProxy((host, int(port)), delay=0.001, rate=500e6) as proxy:
        for key, value in {**seaweed.env(), "AWS_ENDPOINT_URL": proxy.endpoint}.items():
            monkeypatch.setenv(key, value)
        blobs = BlobStore(open_store("s3://thaw/proxy-test"))
        ids = [blobs.put(os.urandom(200_000))[0] for _ in range(5)]
        proxy.reset()
        for id in ids:
            blobs.get(id)
        assert proxy.count("GET", "/blobs/") == 5
