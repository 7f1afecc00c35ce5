"""S3 as an object store (``s3://BUCKET/PREFIX``): AWS, MinIO, SeaweedFS.

The endpoint comes from the standard ``AWS_ENDPOINT_URL``, credentials and region from the
standard AWS chain (region defaults to us-east-1 for S3-compatible servers). One boto3
client is made at construction and shared: boto3 clients are thread-safe. Every botocore
error is turned into ours here, so nothing above this module sees boto3.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import boto3
import botocore.config
import botocore.exceptions as bexc

from .base import ObjectInfo, ObjectStore, check_key, check_prefix
from .errors import NotFound, StoreConfigError, StoreError, StoreUnavailable

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
        self._client = client or _make_client(max_pool, timeout)
        self.endpoint = self._client.meta.endpoint_url

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
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self.prefix + check_key(key))
        except (bexc.BotoCoreError, bexc.ClientError, OSError) as exc:
            raise self._error(exc, f"delete {key}") from None

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
        self._client.close()

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


def _code(exc: bexc.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _make_client(max_pool: int, timeout: float):
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
