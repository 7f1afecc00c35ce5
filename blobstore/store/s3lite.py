"""A lean S3 path: signed GET, HEAD, PUT and DELETE over ``http.client``, for the mount's calls.

boto3 costs ~0.3 s to import and set up a client, and ~2.5 ms of CPU (held under the GIL)
per 120 KB GET; a cold start that fetches 170 chunks spends more time there than on the
network (bench/coldstart.py, py-spy). This path signs a request (AWS Signature V4) and reads
the body with the standard library: ~10x less CPU per GET and nothing to import.

It keeps boto3's conventions where it applies, and steps aside where it cannot:
``from_environment`` returns None, so the caller uses boto3, unless the credentials are
static keys (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, or
``aws_access_key_id`` in the profile's shared credentials file) and nothing is configured
that it does not implement (a config-file endpoint, FIPS or dual-stack endpoints, an S3
section in the profile). Endpoint: ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, else AWS
in the region (``AWS_REGION``, ``AWS_DEFAULT_REGION``, the profile's ``region``, else
us-east-1), virtual-hosted style on AWS, path style elsewhere (as botocore does for an IP
or a custom endpoint). An answer it does not expect (a redirect to another region, say)
raises ``Unexpected`` so the caller retries that call with boto3.

Threading: one keep-alive connection per thread (``threading.local``); a request that
finds its connection closed by the server is sent once more on a fresh one.
"""

from __future__ import annotations

import configparser
import datetime
import hashlib
import hmac
import http.client
import os
import re
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_UNSUPPORTED_ENV = ("AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT",
                    "AWS_S3_USE_ARN_REGION", "AWS_S3_DISABLE_MULTIREGION_ACCESS_POINTS")
_CODE_RE = re.compile(rb"<Code>([^<]{1,100})</Code>")


class Unexpected(Exception):
    """An answer this path does not handle; the caller asks boto3 instead."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: dict[str, str]

    @property
    def code(self) -> str:
        """S3's error code from the XML body ('' when there is none)."""
        m = _CODE_RE.search(self.body)
        return m.group(1).decode("ascii", "replace") if m else ""


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None


def _profile_sections() -> tuple[str, dict[str, str], dict[str, str]]:
    profile = os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE") or "default"
    home = Path.home() / ".aws"
    creds = configparser.RawConfigParser()
    config = configparser.RawConfigParser()
    try:
        creds.read(os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or home / "credentials")
        config.read(os.environ.get("AWS_CONFIG_FILE") or home / "config")
    except configparser.Error:
        return profile, {}, {"unreadable": "1"}
    section = profile if profile == "default" else f"profile {profile}"
    c = dict(creds.items(profile)) if creds.has_section(profile) else {}
    k = dict(config.items(section)) if config.has_section(section) else {}
    return profile, c, k


def _credentials(creds: dict[str, str]) -> Credentials | None:
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
                           env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN"))
    if creds.get("aws_access_key_id") and creds.get("aws_secret_access_key"):
        return Credentials(creds["aws_access_key_id"], creds["aws_secret_access_key"],
                           creds.get("aws_session_token"))
    return None


def signing_key(secret: str, date: str, region: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def sign(method: str, host: str, path: str, creds: Credentials, region: str,
         now: datetime.datetime, body: bytes = b"") -> dict[str, str]:
    """The headers of a signed request (Signature V4, for S3)."""
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    payload = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    if creds.token:
        headers["x-amz-security-token"] = creds.token
    names = sorted(headers)
    canonical = "\n".join([method, path, "", *(f"{n}:{headers[n]}" for n in names), "",
                           ";".join(names), payload])
    scope = f"{date}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    signature = hmac.new(signing_key(creds.secret_key, date, region), to_sign.encode(),
                         hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                                f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return headers


class S3Lite:
    def __init__(self, endpoint: str, bucket: str, region: str, creds: Credentials, *,
                 timeout: float = 20.0, virtual_host: bool = False) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Unexpected(f"endpoint {endpoint!r}")
        self.endpoint, self.region, self.creds, self.timeout = endpoint, region, creds, timeout
        self.https = parts.scheme == "https"
        port = parts.port or (443 if self.https else 80)
        self.host = f"{bucket}.{parts.hostname}" if virtual_host else parts.hostname
        self.netloc = self.host if parts.port is None else f"{self.host}:{port}"
        self.port = port
        self.base = parts.path.rstrip("/") + ("" if virtual_host else f"/{bucket}")
        self._local = threading.local()
        self._context = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE")) \
            if self.https else None

    @classmethod
    def from_environment(cls, bucket: str, timeout: float) -> S3Lite | None:
        """The lean path for this bucket, or None where boto3's configuration applies."""
        if any(os.environ.get(v) for v in _UNSUPPORTED_ENV):
            return None
        _, creds_section, config = _profile_sections()
        creds = _credentials(creds_section)
        if creds is None or "endpoint_url" in config or "s3" in config or (
                "unreadable" in config):
            return None
        region = (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                  or config.get("region") or "us-east-1")
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        try:
            if endpoint:
                return cls(endpoint, bucket, region, creds, timeout=timeout)
            if "." in bucket:  # a dotted bucket breaks the wildcard certificate
                return cls(f"https://s3.{region}.amazonaws.com", bucket, region, creds,
                           timeout=timeout)
            return cls(f"https://s3.{region}.amazonaws.com", bucket, region, creds,
                       timeout=timeout, virtual_host=True)
        except Unexpected:
            return None

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.https:
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                                   context=self._context)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(self, method: str, key: str, body: bytes = b"") -> Response:
        """One signed request; ``OSError`` (a timeout included) when the network fails."""
        path = f"{self.base}/{quote(key, safe='/~')}"
        for attempt in (0, 1):
            fresh = getattr(self._local, "conn", None) is None
            headers = sign(method, self.netloc, path, self.creds, self.region,
                           datetime.datetime.now(datetime.UTC), body)
            if method == "PUT":
                headers["content-length"] = str(len(body))
            conn = self._connection()
            try:
                conn.request(method, path, body=body or None, headers=headers)
                resp = conn.getresponse()
                body = resp.read()  # b"" for a HEAD; read so the connection is reused
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._drop()
                if fresh or attempt:  # a new connection that fails: the server's answer
                    raise
                continue  # the server closed an idle keep-alive connection: once more
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                if isinstance(exc, OSError):
                    raise
                raise OSError(f"bad HTTP answer: {exc!r}") from None
            if resp.will_close:
                self._drop()
            return Response(resp.status, body, {k.lower(): v for k, v in resp.getheaders()})
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._drop()
