"""S3 as an object store (``s3://BUCKET/PREFIX``): AWS, MinIO, SeaweedFS.

The endpoint comes from the standard ``AWS_ENDPOINT_URL``, credentials and region from the
standard AWS chain (region defaults to us-east-1 for S3-compatible servers). Reads,
writes and single deletes (``get``, ``size``, ``put``, ``delete``) go through ``s3lite``
where the configuration allows it: a mount starts, fetches, saves its hints and reports,
and releases its lease without boto3. Everything
else, and every call ``s3lite`` cannot answer, goes through one boto3 client, made (and
boto3 imported) on first use and shared: boto3 clients are thread-safe. Every error of
either is turned into ours here, so nothing above this module sees them.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import botocore.exceptions as bexc

from ..errors import NotFound, StoreConfigError, StoreError, StoreUnavailable
from .base import ObjectInfo, ObjectStore, check_key, check_prefix
from .s3lite import Response, S3Lite, Unexpected

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_MISSING = {"NoSuchKey", "404", "NotFound"}
_CONFIG = {
    "NoSuchBucket": "the bucket does not exist; create it first",
    "AccessDenied": "access denied; check the credentials and the bucket policy",
    "403": "access denied; check the credentials and the bucket policy",
    "InvalidAccessKeyId": "the access key is not known to the server; check AWS_ACCESS_KEY_ID",
    "SignatureDoesNotMatch": "the secret key is wrong; check AWS_SECRET_ACCESS_KEY",
    "InvalidBucketName": "the bucket name is not valid",
}


class S3Store(ObjectStore):
    def __init__(self, bucket: str, prefix: str = "", *, client=None, max_pool: int = 72,
                 timeout: float = 20.0):
        """``timeout``: seconds one request may wait to connect, or for the next bytes of
        its answer; retries belong to the caller (``Retrying``, the mount's fetcher)."""
        if not _BUCKET_RE.fullmatch(bucket):
            raise StoreConfigError(f"s3://{bucket}: not a valid bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if self.prefix:
            check_key(self.prefix.rstrip("/"))
        self._given_client, self._max_pool, self._timeout = client, max_pool, timeout
        self._boto = None
        self._lock = threading.Lock()
        self._lite = None if client else S3Lite.from_environment(bucket, timeout)

    @property
    def _client(self):
        with self._lock:
            if self._boto is None:
                self._boto = self._given_client or _make_client(self._max_pool, self._timeout)
            return self._boto

    def prepare(self) -> None:
        """The boto3 client that listings need (~0.3 s of imports and set-up, more on a
        cold page cache), made now rather than on the first listing, and its paginator
        model loaded: finding that walks the ~400 directories of botocore's service data
        (0.2 s on a cold page cache), once per process."""
        try:
            self._client.get_paginator("list_objects_v2")
        except (bexc.BotoCoreError, bexc.ClientError) as exc:
            raise self._error(exc, "set up a client") from None

    @property
    def endpoint(self) -> str:
        return self._lite.endpoint if self._lite else self._client.meta.endpoint_url

    def _lite_error(self, resp: Response, key: str, doing: str) -> StoreError:
        where = f"{self} ({self.endpoint}): cannot {doing}"
        code = resp.code or str(resp.status)
        if resp.status == 404 and code in _MISSING | {"404"}:
            return NotFound(f"{key} not found in {self}")
        if code in _CONFIG:
            return StoreConfigError(f"{where}: {_CONFIG[code]}")
        if resp.status >= 500 or code in {"SlowDown", "RequestTimeout"}:
            return StoreUnavailable(f"{where}: server error {code}")
        raise Unexpected(code)

    def _lite_call(self, method: str, key: str, doing: str, body: bytes = b""
                   ) -> Response | None:
        """The answer of the lean path, or None when boto3 must answer instead."""
        if self._lite is None:
            return None
        try:
            resp = self._lite.request(method, self.prefix + check_key(key), body)
        except OSError as exc:
            raise StoreUnavailable(f"{self} ({self.endpoint}): cannot {doing}: "
                                   f"{exc or type(exc).__name__}") from None
        if resp.status in (200, 206) or resp.status == 204 and method == "DELETE":
            return resp
        try:
            raise self._lite_error(resp, key, doing)
        except Unexpected:
            return None  # a redirect to another region, say: boto3 knows what to do

    def _error(self, exc: Exception, doing: str) -> StoreError:
        where = f"{self} ({self.endpoint}): cannot {doing}"
        if isinstance(exc, bexc.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in _CONFIG:
                return StoreConfigError(f"{where}: {_CONFIG[code]}")
            if status >= 500 or code in {"SlowDown", "RequestTimeout", "InternalError"}:
                return StoreUnavailable(f"{where}: server error {code or status}")
            return StoreError(f"{where}: {code or status}")
        if isinstance(exc, bexc.NoCredentialsError | bexc.PartialCredentialsError):
            return StoreConfigError(f"{where}: no usable AWS credentials ({exc})")
        return StoreUnavailable(f"{where}: {exc}")

    def get(self, key: str) -> bytes:
        resp = self._lite_call("GET", key, f"read {key}")
        if resp is not None:
            return resp.body
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=self.prefix + check_key(key))
            return resp["Body"].read()
        except bexc.ClientError as exc:
            if _code(exc) in _MISSING:
                raise NotFound(f"{key} not found in {self}") from None
            raise self._error(exc, f"read {key}") from None
        except (bexc.BotoCoreError, OSError) as exc:
            raise self._error(exc, f"read {key}") from None

    def put(self, key: str, data: bytes) -> None:
        if self._lite_call("PUT", key, f"write {key}", bytes(data)) is not None:
            return
        try:
            self._client.put_object(Bucket=self.bucket, Key=self.prefix + check_key(key),
                                    Body=bytes(data))
        except (bexc.BotoCoreError, bexc.ClientError, OSError) as exc:
            raise self._error(exc, f"write {key}") from None

    def create(self, key: str, data: bytes) -> bool:
        """``If-None-Match: *``: the server refuses the write (412) if the key exists; a
        409 (a racing conditional write in progress) is transient, for the caller to retry."""
        try:
            self._client.put_object(Bucket=self.bucket, Key=self.prefix + check_key(key),
                                    Body=bytes(data), IfNoneMatch="*")
            return True
        except bexc.ClientError as exc:
            if _code(exc) in ("PreconditionFailed", "412"):
                return False
            if _code(exc) in ("ConditionalRequestConflict", "409"):
                raise StoreUnavailable(f"{self}: a racing write of {key}; try again") from None
            raise self._error(exc, f"create {key}") from None
        except (bexc.BotoCoreError, OSError) as exc:
            raise self._error(exc, f"create {key}") from None

    def size(self, key: str) -> int:
        resp = self._lite_call("HEAD", key, f"look up {key}")
        if resp is not None:
            return int(resp.headers.get("content-length", 0))
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self.prefix + check_key(key))
            return int(head["ContentLength"])
        except bexc.ClientError as exc:
            if _code(exc) in _MISSING:
                raise NotFound(f"{key} not found in {self}") from None
            raise self._error(exc, f"look up {key}") from None
        except (bexc.BotoCoreError, OSError) as exc:
            raise self._error(exc, f"look up {key}") from None

    def delete(self, key: str) -> None:
        try:  # a mount releasing its lease: the lean path spares it boto3's start
            if self._lite_call("DELETE", key, f"delete {key}") is not None:
                return
        except NotFound:
            return  # S3 answers 204 for a missing key; a server that says 404 means the same
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self.prefix + check_key(key))
        except (bexc.BotoCoreError, bexc.ClientError, OSError) as exc:
            raise self._error(exc, f"delete {key}") from None

    def delete_many(self, keys: list[str]) -> None:
        """DeleteObjects, 1,000 keys a request (S3's bound)."""
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            objects = [{"Key": self.prefix + check_key(k)} for k in batch]
            try:
                answer = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
            except (bexc.BotoCoreError, bexc.ClientError, OSError) as exc:
                raise self._error(exc, f"delete {batch[0]} and {len(batch) - 1} more") \
                    from None
            errors = [e for e in answer.get("Errors", ()) if e.get("Code") != "NoSuchKey"]
            if errors:
                raise StoreUnavailable(
                    f"{self}: cannot delete {len(errors)} of {len(batch)} objects, "
                    f"{errors[0].get('Key', '?')}: {errors[0].get('Code', '?')} "
                    f"{errors[0].get('Message', '')}".rstrip())

    def list_info(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full = self.prefix + check_prefix(prefix)
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full)
            for page in pages:
                for obj in page.get("Contents", ()):
                    yield ObjectInfo(obj["Key"][len(self.prefix):], int(obj["Size"]),
                                     obj["LastModified"].timestamp())
        except (bexc.BotoCoreError, bexc.ClientError, OSError) as exc:
            raise self._error(exc, f"list {prefix or '/'}") from None

    def close(self) -> None:
        if self._lite:
            self._lite.close()
        if self._boto is not None:
            self._boto.close()

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


def _code(exc: bexc.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _make_client(max_pool: int, timeout: float):
    import boto3  # ~0.3 s: only where a call needs it
    import botocore.config

    session = boto3.session.Session()
    config = botocore.config.Config(
        region_name=session.region_name or "us-east-1",
        max_pool_connections=max_pool,
        connect_timeout=min(5.0, timeout),
        read_timeout=timeout,
        # Callers retry within a time budget (Retrying, the mount's fetcher); botocore's
        # retries underneath would multiply the time a hung store takes to report.
        retries={"mode": "standard", "max_attempts": 1},
        # Blobs are verified by their blake3 id on every read; an extra CRC32 per request
        # costs client CPU that bench/push.py showed to matter.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return session.client("s3", config=config)
