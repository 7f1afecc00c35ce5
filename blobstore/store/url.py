"""``open_store(url)``: one small opener per scheme, each returning None for a foreign URL.

Schemes: ``file://DIR`` (or a plain path) and ``s3://BUCKET/PREFIX``. The
default store is ``$THAW_STORE``, else ``$XDG_DATA_HOME/thaw/store`` (a local directory).
A network store is bounded in time: each request by a third of ``timeout``, each call,
retries included, by ``timeout`` (``Retrying``), so nothing waits on a hung store for long.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import StoreConfigError
from .base import ObjectStore
from .local import LocalStore
from .retrying import DEFAULT_BUDGET, Retrying


def default_store_url() -> str:
    if os.environ.get("THAW_STORE"):
        return os.environ["THAW_STORE"]
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"file://{Path(data_home) / 'thaw' / 'store'}"


def get_file_store(url: str, timeout: float) -> ObjectStore | None:
    if url.startswith("file://"):
        path = url[len("file://"):]
        if not path.startswith("/"):
            raise StoreConfigError(f"{url}: a file:// URL needs an absolute path (file:///DIR)")
        return LocalStore(path)
    if "://" not in url:
        return LocalStore(url)
    return None


def get_s3_store(url: str, timeout: float) -> ObjectStore | None:
    if not url.startswith("s3://"):
        return None
    parts = urlsplit(url)
    if not parts.netloc:
        raise StoreConfigError(f"{url}: an S3 URL names a bucket: s3://BUCKET/PREFIX")
    from .s3 import S3Store  # boto3 is slow to import; only pay for it when used

    return S3Store(parts.netloc, parts.path, timeout=timeout / 3)


_OPENERS = (get_file_store, get_s3_store)


def open_store(url: str | None = None, *, timeout: float = DEFAULT_BUDGET,
               retry: bool = True) -> ObjectStore:
    """The object store at ``url`` (default: ``default_store_url()``).

    ``timeout``: seconds one call may take, retries included (``--store-timeout``); one
    request of a network store gets a third of it. ``retry=False``: the bare backend, for
    a caller that retries itself (the mount's fetcher).
    """
    if not timeout > 0:
        raise StoreConfigError(f"the store timeout must be a number of seconds > 0, not "
                               f"{timeout}")
    url = url or default_store_url()
    for opener in _OPENERS:
        store = opener(url, timeout)
        if store is not None:
            remote = not isinstance(store, LocalStore)
            return Retrying(store, timeout) if retry and remote else store
    raise StoreConfigError(f"{url}: unknown store URL; use file:///DIR or s3://BUCKET/PREFIX")
