"""Writing an image: chunks uploaded in parallel, bounded, skipping what the store has; then
the manifest; then the tag, last. Push (``indexer``) and snapshot (``restorer``) both feed
an ``ImageWriter``; each cuts its own chunks and builds its own manifest.

Threading: ``submit`` is called from one producer thread (it hashes, the caller already
did); compression and upload run in a pool of ``jobs`` threads, with at most ``2 * jobs``
chunks in flight, which bounds memory. A chunk submitted twice is uploaded once. A store
error in a worker reaches the producer at its next ``submit`` (``raise_failed``) or at
``finish``. The tag is written after every chunk and the manifest are stored, and after the
writer's ``GcFence`` (``fence.py``) has made sure no collector deleted or may still delete
any of them, so a tag never names missing blobs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from ..errors import BlobNotFound, StoreUnavailable
from ..lifecycle.fence import GcFence
from ..lifecycle.leases import Lease
from ..store.blobs import BlobStore
from ..store.digest import blob_id
from .manifest import ChunkRef, Manifest, encode
from .refs import Ref, Refs


class KnownBlobs:
    """What the store already holds, learnt from one listing in a background thread.

    A listing returns a thousand keys per S3 request where asking per chunk costs a request
    each, so when the store is small next to the image, listing is far cheaper. The listing
    gives up past ``limit`` blobs, and then each chunk is looked up on its own: the cost is
    never much worse than per-chunk lookups. A store that cannot even list is an error at
    once (the listing already waited out its time budget)."""

    def __init__(self, blobs: BlobStore, limit: int, condemned: set[str] = frozenset()) -> None:
        """``condemned``: blobs a collector has condemned: counted as absent, so they are
        uploaded again (which also renews their timestamp, releasing them)."""
        self.condemned = condemned
        self.sizes: dict[str, int] = {}
        self.complete = False
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._list, args=(blobs, limit), daemon=True,
                                        name="thaw-list")
        self._thread.start()

    def _list(self, blobs: BlobStore, limit: int) -> None:
        try:
            for id, size in blobs.iter_stored_sizes():
                if len(self.sizes) >= limit:
                    return
                self.sizes[id] = size
            self.complete = True
        except BaseException as exc:  # noqa: BLE001 - the uploader falls back to lookups
            self._error = exc
        finally:
            self._done.set()

    def stored_size(self, blobs: BlobStore, id: str) -> int | None:
        """The stored size of ``id`` if the store has it, else None."""
        self._done.wait()
        if id in self.condemned:
            return None
        if self.complete:
            return self.sizes.get(id)
        if isinstance(self._error, StoreUnavailable):
            raise self._error
        return _lookup(blobs, id)


def _lookup(blobs: BlobStore, id: str) -> int | None:
    try:
        return blobs.stored_size(id)
    except BlobNotFound:
        return None


class ImageWriter:
    """Chunks in, an image out. ``known``: a ``KnownBlobs`` to skip lookups per chunk."""

    def __init__(self, blobs: BlobStore, *, jobs: int = 8, known: KnownBlobs | None = None,
                 thread_name: str = "thaw-upload", lease: Lease | None = None,
                 fence: GcFence | None = None) -> None:
        """``lease``: the writer's lease, told every blob it relies on without uploading;
        ``fence``: crossed before the tag; the blobs it says a collector condemned are
        uploaded again whether present or not. Both or neither."""
        self.blobs, self.known, self.lease, self.fence = blobs, known, lease, fence
        self.condemned = fence.condemned if fence is not None else frozenset()
        self.pool = ThreadPoolExecutor(jobs, thread_name_prefix=thread_name)
        self.slots = threading.BoundedSemaphore(2 * jobs)
        self.by_id: dict[str, Future] = {}
        self.new_chunks = 0
        self.uploaded_bytes = 0
        self._lock = threading.Lock()
        self._recent: list[Future] = []

    def submit(self, id: str, data: bytes) -> Future:
        """Store ``data`` (whose blob id is ``id``) unless the store has it; the future
        gives its stored size."""
        if id in self.by_id:
            return self.by_id[id]
        self.raise_failed()
        self.slots.acquire()
        fut = self.pool.submit(self._store, id, data)
        fut.add_done_callback(lambda _: self.slots.release())
        self.by_id[id] = fut
        self._recent = [*self._recent[-7:], fut]
        return fut

    def raise_failed(self) -> None:
        """Raise a store error a recent upload hit, so the producer stops reading at once."""
        failed = next((f for f in self._recent if f.done() and f.exception()), None)
        if failed is not None:
            failed.result()

    def _store(self, id: str, data: bytes) -> int:
        known: Callable[[], int | None] = (
            (lambda: self.known.stored_size(self.blobs, id)) if self.known
            else (lambda: _lookup(self.blobs, id)))
        size = None if id in self.condemned else known()
        if size is not None:
            if self.lease is not None:
                self.lease.add(blobs=(id,))
            return size
        size = self.blobs.put_new(id, data)
        with self._lock:
            self.new_chunks += 1
            self.uploaded_bytes += size
        return size

    def table(self, chunks: list[tuple[str, int, Future]]) -> list[ChunkRef]:
        """The chunk table, once every upload of ``(id, size, future)`` has landed."""
        return [ChunkRef(id, size, fut.result()) for id, size, fut in chunks]

    def finish(self, manifest: Manifest, ref: Ref | None) -> str:
        """Store the manifest, then point ``ref`` at it (last); the manifest id."""
        raw = encode(manifest)
        mid = blob_id(raw)
        stored = (self.blobs.put_new(mid, raw) if mid in self.condemned
                  else self.blobs.ensure(mid, raw)[1])
        with self._lock:
            self.uploaded_bytes += stored
        if self.fence is not None and self.lease is not None:
            self.fence.cross(self.lease, {mid, *(c.id for c in manifest.chunks)})
        if ref is not None:
            Refs(self.blobs.objects).set(ref, mid)
        return mid

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
