"""Cache peers: owners by rendezvous hashing, `thaw serve` against hostile clients, and
three nodes that fetch each chunk from the store once between them."""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from blobstore.errors import UsageError
from blobstore.image.images import open_image
from blobstore.store.blobs import BlobStore
from blobstore.store.lru import BytesLRU
from blobstore.store.peers import Membership, normalise_url, owners
from blobstore.store.url import open_store

from .conftest import REPO, Mounted
from .proxy import RemoteLikeProxy
from .seaweed import free_ports

TOKEN = "t0ken-of-the-cluster"


# -- pure --------------------------------------------------------------------------------------


@pytest.mark.parametrize("given, normal", [
    ("http://Node-1.Example:8740/", "http://node-1.example:8740"),
    ("http://10.0.0.2", "http://10.0.0.2:80"),
    ("https://peer.example", "https://peer.example:443"),
])
def test_peer_urls_are_normalised_before_hashing(given, normal):
    assert normalise_url(given) == normal


@pytest.mark.parametrize("bad", ["ftp://x:1", "http://x:1/path", "x:1", "http://:1",
                                 "http://x:port"])
def test_a_bad_peer_url_is_a_usage_error(bad):
    with pytest.raises(UsageError, match="peer URL"):
        normalise_url(bad)


def test_a_fourth_node_moves_about_a_quarter_of_the_owners():
    three = [f"http://10.0.0.{i}:8740" for i in (1, 2, 3)]
    four = [*three, "http://10.0.0.4:8740"]
    ids = [random.Random(i).randbytes(32).hex() for i in range(8000)]
    moved = [id for id in ids if owners(three, id, 1) != owners(four, id, 1)]
    assert 0.2 < len(moved) / len(ids) < 0.3
    assert all(owners(four, id, 1) == ["http://10.0.0.4:8740"] for id in moved)
    assert owners(list(reversed(four)), ids[0]) == owners(four, ids[0])  # order-free


def test_a_bytes_lru_keeps_the_most_recently_used_within_its_bound():
    recent = BytesLRU(250)
    recent.put("a", b"x" * 100)
    recent.put("b", b"y" * 100)
    assert recent.get("a") == b"x" * 100  # now the most recent
    recent.put("c", b"z" * 100)  # over the bound: b, the least recent, goes
    assert recent.get("b") is None and recent.get("a") and recent.get("c")
    assert "b" not in recent and "a" in recent
    assert recent.size == 200 and recent.hits == 3
    recent.put("big", b"w" * 300)  # larger than the bound: never kept
    assert recent.get("big") is None and recent.size == 200


@pytest.mark.allow_log_warnings  # the damaged entry, dropped when nothing remembers it
@pytest.mark.parametrize("memory", [1 << 20, 0])
def test_serve_reads_and_verifies_a_chunk_many_peers_ask_for_once(tmp_path, memory):
    from blobstore.ops.peerserver import PeerServer
    from blobstore.store.digest import blob_id
    from blobstore.store.diskcache import DiskCache
    from blobstore.store.memory import MemoryStore
    from blobstore.store.tiers import node_tiers

    data = os.urandom(100_000)
    id = blob_id(data)
    blobs = BlobStore(MemoryStore())
    blobs.put_new(id, data)
    tiers = node_tiers(blobs, DiskCache(tmp_path / "cache", 1 << 30))
    server = PeerServer(tiers, TOKEN, memory_bytes=memory)
    try:
        first = server._stored(id)  # read through, verified, kept
        tiers.disk.inner._path(id).write_bytes(first[:-1] + b"!")  # damaged on disk later
        for _ in range(5):  # ninety-nine peers, in short
            assert server._stored(id) == first
            assert server._stored(id, cached_only=True) == first
        disk_reads = tiers.disk.stats.snapshot().as_dict()["chunks"]
        store_reads = tiers.store.stats.snapshot().as_dict()["chunks"]
        if memory:  # once from the store, never again from the (damaged) disk
            assert (server.recent.hits, store_reads, disk_reads) == (10, 1, 0)
        else:  # the damaged entry dropped and fetched again, never served
            assert server.recent.hits == 0 and store_reads == 2
    finally:
        server._pool.shutdown()


def test_a_peer_file_is_read_again_when_it_changes(tmp_path):
    now = [0.0]
    path = tmp_path / "peers"
    path.write_text("http://a:1\n# a comment\nhttp://b:2\n")
    m = Membership.parse(f"@{path}")
    m._clock = lambda: now[0]
    assert m.urls() == ["http://a:1", "http://b:2"]
    path.write_text("http://a:1\nhttp://c:3\n")
    now[0] += 5
    assert m.urls() == ["http://a:1", "http://c:3"]


@pytest.mark.allow_log_warnings
def test_a_peer_file_that_is_not_utf8_is_one_line_and_a_mount_keeps_its_last_list(
        tmp_path, caplog):
    path = tmp_path / "peers"
    path.write_bytes(b"\xff\xfehttp://a:1\n")
    with pytest.raises(UsageError, match="not UTF-8 text"):
        Membership.parse(f"@{path}")
    now = [0.0]
    path.write_text("http://a:1\n")
    m = Membership.parse(f"@{path}")
    m._clock = lambda: now[0]
    path.write_bytes(b"http://b:2\n\xff\n")  # a running mount re-reads it: turned bad
    now[0] += 5
    assert m.urls() == ["http://a:1"]
    assert "peer list not refreshed, keeping 1 peers" in caplog.text and "UTF-8" in caplog.text


def test_the_peer_list_file_cli_error_is_one_line(thaw, tmp_path):
    (tmp_path / "peers").write_bytes(b"\xff\xfe")
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o600)
    proc = thaw("mount", "a:1", str(tmp_path / "m"), "--peers", f"@{tmp_path / 'peers'}",
                "--peer-token-file", str(tmp_path / "token"), check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.count("\n") == 1 and "not UTF-8 text" in err, err


@pytest.mark.allow_log_warnings
def test_a_token_file_others_can_read_is_warned_about_as_ssh_does(tmp_path, caplog):
    from blobstore.store.peers import read_token

    path = tmp_path / "token"
    path.write_text(TOKEN)
    path.chmod(0o600)
    assert read_token(str(path), "--token-file") == TOKEN and not caplog.text
    path.chmod(0o640)
    assert read_token(str(path), "--token-file") == TOKEN
    assert "readable by others (mode 640)" in caplog.text and "chmod 600" in caplog.text


# -- thaw serve against hostile clients ----------------------------------------------------------


@contextmanager
def serving(thaw, cache: Path, host: str, *extra: str, store: str | None = None,
            log: list[str] | None = None):
    """A real `thaw serve`; what it wrote to stderr after its first line goes to ``log``."""
    token = cache.parent / f"token-{host}"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    port = free_ports(1)[0]
    cmd = [sys.executable, "-m", "thaw", "--store", store or thaw.store, "serve", "--listen",
           f"{host}:{port}", "--cache-dir", str(cache), "--token-file", str(token), *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **thaw.env},
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "serving" in line, line + proc.stderr.read()
        yield f"http://{host}:{port}", proc
    finally:
        if proc.poll() is None:  # a test may have killed it
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0  # SIGTERM: a graceful stop
        rest = proc.stderr.read()
        if log is not None:
            log.append(rest)
        # aiohttp drops every handler option it is given wrongly, warning per connection
        assert "misconfiguration" not in rest


def request(url: str, path: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    return resp.status, resp.read(), dict(resp.getheaders())


def cache_has(cache: Path, id: str) -> bool:
    return (cache / id[:2] / id).exists()


@pytest.fixture
def pushed(thaw, rich_tree, store_url):
    thaw("push", str(rich_tree), "rich:1", "--chunker", "fastcdc:64K")
    from blobstore.store.local import LocalStore

    objects = LocalStore(store_url[len("file://"):])
    return objects, *open_image(objects, "rich:1")


@pytest.mark.mount
def test_serve_refuses_what_it_must_and_never_reads_outside_the_cache(thaw, pushed,
                                                                       tmp_path):
    objects, _, manifest = pushed
    id = manifest.chunks[0].id
    cache = tmp_path / "node" / "cache"
    (tmp_path / "node").mkdir()
    secret = tmp_path / "node" / "secret"
    secret.write_text("SECRET-NEXT-TO-THE-CACHE")
    with serving(thaw, cache, "127.0.0.2", "--header-timeout", "2") as (url, _):
        auth = {"Authorization": f"Bearer {TOKEN}"}
        only = {**auth, "X-Thaw-Cached-Only": "1"}  # a hedge: not cached here, no store read
        assert request(url, f"/v1/blobs/{id}", only)[0] == 404 and not cache_has(cache, id)
        status, body, headers = request(url, f"/v1/blobs/{id}", auth)
        assert cache_has(cache, id) and request(url, f"/v1/blobs/{id}", only)[:2] == (200, body)
        assert status == 200 and body == BlobStore(objects).get_stored(id)
        assert headers["ETag"] == f'"{id}"' and int(headers["Content-Length"]) == len(body)
        for bad in ({}, {"Authorization": "Bearer nope"},
                    {"Authorization": "Bearer " + "x" * len(TOKEN)},
                    {"Authorization": TOKEN}):
            assert request(url, f"/v1/blobs/{id}", bad)[0] == 401
        for path in ("/v1/blobs/..%2fsecret", "/v1/blobs/%2e%2e%2fsecret",
                     "/v1/blobs/" + "g" * 64, "/v1/blobs/" + id.upper(), "/v1/blobs/" + id[:-1]):
            status, body, _ = request(url, path, auth)  # a malformed blob id: 400, always
            assert status == 400 and b"SECRET" not in body, (path, status)
        for path in ("/v1/blobs/../secret", "/v1/blobs/../../node/secret"):
            status, body, _ = request(url, path, auth)  # normalised off the blob route
            assert status == 404 and b"SECRET" not in body, (path, status)
        assert request(url, "/v1/blobs/" + "0" * 64, auth)[0] == 404
        stored = BlobStore(objects).get_stored(id)
        status, body, headers = request(url, f"/v1/blobs/{id}", {**auth, "Range": "bytes=2-9"})
        assert (status, body) == (206, stored[2:10])
        assert headers["Content-Range"] == f"bytes 2-9/{len(stored)}"
        status, _, headers = request(url, f"/v1/blobs/{id}",
                                     {**auth, "Range": f"bytes={len(stored)}-"})
        assert status == 416 and headers["Content-Range"] == f"bytes */{len(stored)}"
        for bad in ("bytes=9-2", "lines=1-2", "bytes=1-2,4-5", "bytes=-"):
            assert request(url, f"/v1/blobs/{id}", {**auth, "Range": bad})[0] == 400
        # The README's limits: a header's value or the path 8 KiB at most, 64 headers.
        assert request(url, f"/v1/blobs/{id}", {**auth, "X-Big": "y" * 8192})[0] == 200
        assert request(url, f"/v1/blobs/{id}", {**auth, "X-Big": "y" * 8193})[0] in (400, 431)
        base = {**auth, "Host": "x", "Accept-Encoding": "identity"}  # http.client's own
        fill = {f"X-{i}": "y" for i in range(64 - len(base))}
        assert request(url, f"/v1/blobs/{id}", {**base, **fill})[0] == 200
        assert request(url, f"/v1/blobs/{id}", {**base, **fill, "X-65": "y"})[0] in (400, 431)
        assert request(url, "/healthz")[:2] == (200, b"ok\n")
        metrics = request(url, "/metrics")[1].decode()
        assert 'thaw_serve_requests_total{status="401"} 4.0' in metrics and id not in metrics
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as slow:
            slow.sendall(b"GET /v1/blobs/")  # and then nothing, as a slow-loris client
            assert slow.recv(100) == b""  # cut off after --header-timeout, not 10 s later
    assert not any("secret" in p.name for p in cache.rglob("*"))


@pytest.mark.mount
def test_serve_logs_a_malformed_request_in_one_line_quoting_none_of_it(thaw, pushed,
                                                                       tmp_path):
    secret = "Bearer SECRET-" + "s" * 30_000  # an oversized header: its bytes were logged
    log: list[str] = []
    with serving(thaw, tmp_path / "cache", "127.0.0.2", log=log) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        for head in (f"GET /v1/blobs/x HTTP/1.1\r\nAuthorization: {secret}\r\n\r\n",
                     f"GET /{'a' * 20000} HTTP/1.1\r\n\r\n", "GET / HTTP/9\r\n\r\n",
                     "\x16\x03\x01 binary, as TLS to a plain port\r\n\r\n") * 3:
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(head.encode("latin-1"))
                assert re.match(rb"HTTP/1\.[01] 4", s.recv(100))
        metrics = request(url, "/metrics")[1].decode()
    assert "thaw_serve_malformed_requests" in metrics
    assert "Traceback" not in log[0] and "SECRET" not in log[0] and "aaaa" not in log[0]
    assert log[0].count("malformed request") == 1, log[0]  # then one line a minute at most


@pytest.mark.mount
@pytest.mark.allow_log_warnings
def test_serve_says_a_blob_corrupt_in_the_store_is_corrupt_with_a_502(thaw, pushed, tmp_path):
    from blobstore.store.blobs import blob_key

    objects, _, manifest = pushed
    id = manifest.chunks[0].id
    objects.put(blob_key(id), b"\x00garbage")
    with serving(thaw, tmp_path / "cache", "127.0.0.2") as (url, _):
        status, body, _ = request(url, f"/v1/blobs/{id}", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 502 and b"corrupt" in body
        assert "thaw_serve_corrupt_blobs_total 1.0" in request(url, "/metrics")[1].decode()


@pytest.mark.mount
def test_serve_closes_a_connection_that_sends_nothing_after_the_header_timeout(thaw, pushed,
                                                                               tmp_path):
    """It was the 30 s keep-alive; the harness allows 10 s for a 1 s --header-timeout."""
    with serving(thaw, tmp_path / "cache", "127.0.0.2", "--header-timeout", "1") as (url, _):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as silent:
            assert silent.recv(100) == b""


def test_serve_closes_an_idle_keep_alive_connection(tmp_path):
    import asyncio

    from blobstore.ops.peerserver import PeerServer
    from blobstore.store.diskcache import DiskCache
    from blobstore.store.memory import MemoryStore
    from blobstore.store.tiers import node_tiers

    tiers = node_tiers(BlobStore(MemoryStore()), DiskCache(tmp_path / "cache", 1 << 20))
    server = PeerServer(tiers, TOKEN, keepalive=0.2)
    port = free_ports(1)[0]

    async def main() -> tuple[bytes, bytes]:
        ready = asyncio.Event()
        serving = asyncio.create_task(server.run("127.0.0.1", port, ready.set))
        try:
            await asyncio.wait_for(ready.wait(), 10)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"ok\n"), 10)
            rest = await asyncio.wait_for(reader.read(), 10)  # closed: b""
            writer.close()
            return head, rest
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)

    head, rest = asyncio.run(main())
    assert head.startswith(b"HTTP/1.1 200") and rest == b""  # after keepalive, not an hour


@pytest.mark.mount
def test_serve_bad_options_are_one_line(thaw, tmp_path):
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o600)
    taken = socket.socket()
    taken.bind(("127.0.0.2", 0))
    taken.listen()
    port = taken.getsockname()[1]
    for args, message in (
            (["--listen", "nohost", "--token-file", str(tmp_path / "token")], "--listen"),
            (["--listen", "127.0.0.2:1", "--token-file", str(tmp_path / "none")],
             "--token-file"),
            (["--listen", f"127.0.0.2:{port}", "--token-file", str(tmp_path / "token")],
             "cannot listen on"),
            (["--listen", "127.0.0.2:1", "--token-file", str(tmp_path / "token"),
              "--memory", "lots"], "invalid size 'lots'")):
        proc = thaw("serve", *args, "--cache-dir", str(tmp_path / "c"), check=False)
        assert proc.returncode == 2 and message in proc.stderr.decode(), proc.stderr
        assert b"Traceback" not in proc.stderr
    taken.close()


# -- three nodes -------------------------------------------------------------------------------


class WrongBytes(BaseHTTPRequestHandler):
    """A peer that answers every blob with bytes that are not it."""

    def do_GET(self):  # noqa: N802 - the stdlib's name
        body = b"\x00not the blob you asked for"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.stat().st_size}


@pytest.mark.mount
@pytest.mark.s3
def test_three_nodes_fetch_each_chunk_from_the_store_once(thaw, rich_tree, s3_env,
                                                          seaweed, tmp_path):
    store = "s3://thaw/peers-" + os.urandom(4).hex()
    thaw("push", str(rich_tree), "rich:1", "--chunker", "fastcdc:64K", store=store)
    # Every file is read, so every chunk of the image: not what each node's stats say it
    # fetched, since its own `thaw serve` fills its disk cache for the others, and a chunk
    # it then reads from that cache is counted under neither the peers nor the store.
    distinct = len({c.id for c in open_image(open_store(store), "rich:1")[1].chunks})
    host, port = seaweed.endpoint.removeprefix("http://").split(":")
    with RemoteLikeProxy((host, int(port)), delay=0, rate=1e12) as s3:
        thaw.env["AWS_ENDPOINT_URL"] = s3.endpoint
        hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        with serving(thaw, tmp_path / "c2", hosts[0], store=store) as (u2, _), \
                serving(thaw, tmp_path / "c3", hosts[1], store=store) as (u3, _), \
                serving(thaw, tmp_path / "c4", hosts[2], store=store) as (u4, serve4):
            urls = [u2, u3, u4]
            (tmp_path / "peers").write_text("\n".join(urls))
            mounts = []
            for i, url in enumerate(urls):
                mnt = tmp_path / f"mnt{i}"
                mounts.append(Mounted(thaw, mnt, "mount", "rich:1", str(mnt), "--cache-dir",
                                      str(tmp_path / f"c{i + 2}"), "--prefetch", "none",
                                      "--peers", f"@{tmp_path / 'peers'}", "--self", url,
                                      "--peer-token-file", str(tmp_path / "token-127.0.0.2"),
                                      store=store))
            for m in mounts:
                m.__enter__()
            try:
                s3.reset()
                expected = read_tree(rich_tree)
                results: list[dict] = [{}, {}, {}]
                threads = [threading.Thread(target=lambda i=i: results.__setitem__(
                    i, read_tree(mounts[i].mountpoint))) for i in range(3)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                assert all(r == expected for r in results)
                stats = [json.loads(thaw("stats", str(m.mountpoint), "--json").stdout)
                         for m in mounts]
                gets = s3.count("GET", "/blobs/")
                assert gets <= 1.1 * distinct, (gets, distinct)
                assert sum(s["tiers"]["peer"]["chunks"] for s in stats) > distinct
                # A peer's server dies in the middle of a new node's reads: they complete.
                fresh = tmp_path / "mnt-fresh"
                with Mounted(thaw, fresh, "mount", "rich:1", str(fresh), "--cache-dir",
                             str(tmp_path / "c-fresh"), "--prefetch", "none", "--peers",
                             f"@{tmp_path / 'peers'}", "--peer-token-file",
                             str(tmp_path / "token-127.0.0.2"), store=store):
                    got: list[dict] = []
                    reader = threading.Thread(target=lambda: got.append(read_tree(fresh)))
                    reader.start()
                    serve4.kill()
                    reader.join()
                    assert got == [expected]
            finally:
                for m in mounts:
                    m.__exit__(None, None, None)


@pytest.mark.mount
def test_a_peer_that_serves_wrong_bytes_is_named_and_skipped(thaw, pushed, rich_tree,
                                                             tmp_path):
    bad = ThreadingHTTPServer(("127.0.0.5", 0), WrongBytes)
    threading.Thread(target=bad.serve_forever, daemon=True).start()
    bad_url = f"http://127.0.0.5:{bad.server_address[1]}"
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o600)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        out = thaw("mount", "rich:1", str(mnt), "--background", "--cache-dir",
                   str(tmp_path / "c"), "--peers", bad_url, "--self", "http://127.0.0.9:1",
                   "--peer-token-file", str(tmp_path / "token")).stderr.decode()
        log = Path(re.search(r"log (\S+)\)", out).group(1))
        assert read_tree(mnt) == read_tree(rich_tree)
        stats = json.loads(thaw("stats", str(mnt), "--json").stdout)
        assert stats["peers"][bad_url]["skipped"] and stats["tiers"]["store"]["chunks"] > 0
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)])
        bad.shutdown()
    text = log.read_text()
    assert f"peer {bad_url}: served wrong bytes" in text
    assert text.count("served wrong bytes") == 1  # named once, then skipped quietly


class FaultyPeer(BaseHTTPRequestHandler):
    """Serves one blob's stored bytes, slowly or cut off, as the test sets on the server."""

    def do_GET(self):  # noqa: N802 - the stdlib's name
        srv = self.server
        srv.requests.append(self.headers.get("Range"))
        srv.cached_only.append(self.headers.get("X-Thaw-Cached-Only"))
        if srv.hold is not None:
            srv.hold.wait(10)
        if srv.missing:  # it holds no copy: 404, and then let whoever waits on it go
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.wfile.flush()
            if srv.then is not None:
                srv.then.set()
            return
        body, status = srv.stored, 200
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            body, status = body[start:], 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut and not rng:
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def faulty_peers(n: int, stored: bytes):
    servers = []
    for i in range(n):
        srv = ThreadingHTTPServer((f"127.0.0.{6 + i}", 0), FaultyPeer)
        srv.stored, srv.hold, srv.cut, srv.requests = stored, None, False, []
        srv.cached_only, srv.missing, srv.then = [], False, None
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    try:
        yield {f"http://127.0.0.{6 + i}:{s.server_address[1]}": s for i, s in enumerate(servers)}
    finally:
        for s in servers:
            if s.hold is not None:
                s.hold.set()
            s.shutdown()


def _blob():
    from blobstore.store.codec import encode_blob
    from blobstore.store.digest import blob_id

    data = os.urandom(200_000)
    return blob_id(data), data, encode_blob(data)


def test_a_slow_first_owner_is_hedged_to_the_second():
    from blobstore.store.peerhealth import PeerHealth
    from blobstore.store.peers import PeerTier

    id, data, stored = _blob()
    with faulty_peers(2, stored) as peers:
        first, second = owners(list(peers), id)
        tier = PeerTier(Membership(urls=list(peers)), None, TOKEN)
        tier.health.peers[first] = PeerHealth(latencies=[0.01] * 30)  # it is usually quick
        peers[first].hold = threading.Event()  # and now it hangs
        assert tier.fetch(id).data == data
        assert tier.hedge.hedged == 1 and peers[second].requests == [None]
        assert peers[second].cached_only == ["1"]  # a hedge never makes a store GET there
        assert tier.hedge.delay(tier.health.latencies(second)) is None  # too few answers yet


def _hedging_tier(peers: dict, id: str):
    """A tier that will hedge ``id``'s next request: its first owner is usually quick."""
    from blobstore.store.peerhealth import PeerHealth
    from blobstore.store.peers import PeerTier

    first, second = owners(list(peers), id)
    tier = PeerTier(Membership(urls=list(peers)), None, TOKEN)
    tier.health.peers[first] = PeerHealth(latencies=[0.01] * 30)
    return tier, peers[first], peers[second]


def test_a_hedge_that_finds_nothing_waits_for_the_slow_first_owner():
    """The second owner holds no copy (a hedge never reads through): the first owner's
    answer, however late, is the one used, and the second is not asked again."""
    id, data, stored = _blob()
    with faulty_peers(2, stored) as peers:
        tier, first, second = _hedging_tier(peers, id)
        first.hold = threading.Event()
        second.missing, second.then = True, first.hold  # its 404 lets the first answer
        assert tier.fetch(id).data == data
        assert tier.hedge.hedged == 1 and first.requests == [None]
        assert second.cached_only == ["1"]


def test_a_quick_miss_at_the_first_owner_asks_the_second_to_read_through():
    from blobstore.store.peerhealth import PeerHealth

    id, data, stored = _blob()
    with faulty_peers(2, stored) as peers:
        tier, first, second = _hedging_tier(peers, id)
        first_url = owners(list(peers), id)[0]
        tier.health.peers[first_url] = PeerHealth(latencies=[5.0] * 30)  # hedged after 5 s
        first.missing = True
        assert tier.fetch(id).data == data
        assert tier.hedge.hedged == 0  # the first answered in time: no hedge
        assert second.cached_only == [None]  # asked as an owner, reading through


@pytest.mark.allow_log_warnings
def test_a_first_owner_that_refuses_connections_is_not_a_hedge(caplog):
    """The second owner is then asked as the owner (reading through on a miss), and the
    dead one is named."""
    from blobstore.store.peerhealth import PeerHealth
    from blobstore.store.peers import PeerTier

    dead = f"http://127.0.0.5:{free_ports(1)[0]}"  # nothing listens there
    id, data, stored = _blob()
    with faulty_peers(1, stored) as peers:
        (live, srv), = peers.items()
        while owners([live, dead], id)[0] != dead:  # the dead one must be asked first
            id, data, stored = _blob()
        srv.stored = stored
        tier = PeerTier(Membership(urls=[live, dead]), None, TOKEN)
        tier.health.peers[dead] = PeerHealth(latencies=[0.01] * 30)
        assert tier.fetch(id).data == data
        assert tier.hedge.hedged == 0 and srv.cached_only == [None]
    assert f"peer {dead}: cannot fetch blob {id}" in caplog.text


def test_hedges_stay_within_their_share_of_the_requests():
    """A node that is itself the slow part finds every owner slower than its p90; hedging
    them all doubles the load that made them slow. At most one in twenty are hedged."""
    from blobstore.store.peerhedge import HedgePolicy

    policy = HedgePolicy()
    assert policy.may_hedge()  # the first may
    policy.hedging()
    allowed = [policy.may_hedge() for _ in range(40)]
    assert allowed.index(True) == 19  # once 1 in 20 again (the README's share)
    assert policy.asked == 1 + len(allowed)


def test_a_transfer_cut_midway_is_resumed_with_a_range():
    from blobstore.store.peers import PeerTier

    id, data, stored = _blob()
    with faulty_peers(1, stored) as peers:
        (url, srv), = peers.items()
        srv.cut = True
        tier = PeerTier(Membership(urls=[url]), None, TOKEN)
        assert tier.fetch(id).data == data
        assert srv.requests == [None, f"bytes={len(stored) // 2}-"]
