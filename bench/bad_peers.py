#!/usr/bin/env python3
"""What a bad cache peer costs a read, in wall time, against the README's bound.

A node's read stack with two cache peers (``FirstHit([peers, store])``, as a mount builds
it) reads 1 MiB chunks the bad peer owns first, beside a healthy peer that owns them
second, over real HTTP on loopback; the bad peer cuts its answers off, drips them, answers
garbage or hangs (``tests/badpeer.py``). The bound a read must keep: two peer deadlines
(2 s to begin, then the body at 10 MB/s) plus one store fetch, until the bad peer is skipped
after its third failure; then it costs nothing. The store is a local directory here (its
fetch is the last column); against a store 20 ms away only that column grows. Usage:
python bench/bad_peers.py [--reads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from common import table

from blobstore.store.blobs import BlobStore
from blobstore.store.codec import encode_blob
from blobstore.store.digest import blob_id
from blobstore.store.local import LocalStore
from blobstore.store.peerclient import deadline
from blobstore.store.peers import Membership, PeerTier, owners
from blobstore.store.tiers import Counting, FirstHit
from tests.badpeer import MODES, BadPeer

TOKEN = "bench-token"
CHUNK = 1 << 20


def good_peer(blobs: BlobStore) -> ThreadingHTTPServer:
    class Good(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 - the stdlib's name
            body = blobs.get_stored(self.path.rsplit("/", 1)[-1])
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.3", 0), Good)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def chunks_owned_by(bad: str, good: str, blobs: BlobStore, n: int) -> list[str]:
    """``n`` incompressible 1 MiB chunks, in the store, that ``bad`` owns first."""
    ids = []
    while len(ids) < n:
        data = os.urandom(CHUNK)
        id = blob_id(data)
        if owners([bad, good], id)[0] == bad:
            blobs.put_stored(id, encode_blob(data))
            ids.append(id)
    return ids


def run(mode: str, reads: int, root: str) -> list:
    blobs = BlobStore(LocalStore(os.path.join(root, mode)))
    good = good_peer(blobs)
    good_url = f"http://127.0.0.3:{good.server_address[1]}"
    bad = BadPeer("127.0.0.2", mode, blobs.get_stored, drip=1.0)
    try:
        ids = chunks_owned_by(bad.url, good_url, blobs, reads)
        tier = PeerTier(Membership(urls=[bad.url, good_url]), None, TOKEN)
        stack = FirstHit([Counting(tier, "peer"), Counting(blobs, "store")])
        times = []
        for id in ids:
            started = time.monotonic()
            stack.fetch(id)
            times.append(time.monotonic() - started)
        store = []
        for id in ids[:5]:
            started = time.monotonic()
            blobs.fetch(id)
            store.append(time.monotonic() - started)
    finally:
        bad.close()
        good.shutdown()
    bound = 2 * (deadline(0, len(blobs.get_stored(ids[0])))) + max(store)
    skipped = tier.peer_stats()[bad.url]["skipped"]
    return [mode, reads, f"{max(times[:3]):.2f}", f"{bound:.2f}",
            "yes" if max(times[:3]) <= bound else "NO",
            f"{statistics.median(times[3:]):.3f}", f"{statistics.median(store):.3f}",
            "yes" if skipped else "no"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reads", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="thaw-bench-") as root:
        rows = [run(mode, args.reads, root) for mode in MODES]
    print(f"\n{args.reads} reads of 1 MiB chunks a bad peer owns first (a healthy peer "
          "second); seconds of wall time\n")
    print(table(["bad peer", "reads", "worst of the first three", "bound (2 deadlines + "
                 "store)", "within", "median after (skipped)", "store fetch alone",
                 "skipped"], rows))


if __name__ == "__main__":
    main()
