"""The lean S3 path: its signature is botocore's, it steps aside where boto3's configuration
applies, and a mount's calls never import boto3."""

from __future__ import annotations

import datetime
import subprocess
import sys

import botocore.auth
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from blobstore.errors import NotFound, StoreConfigError
from blobstore.store.s3 import S3Store
from blobstore.store.s3lite import Credentials, S3Lite, sign

from .conftest import REPO

NOW = datetime.datetime(2026, 12, 2, 1, 2, 3, tzinfo=datetime.UTC)


@pytest.mark.parametrize("token", [None, "session-token"])
@pytest.mark.parametrize("body", [b"", b"a report"])
def test_the_signature_is_botocores(monkeypatch, token, body):
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    method = "PUT" if body else "GET"
    path = "/thaw/prefix/blobs/ab/ab%2Bcd~x"
    ours = sign(method, "127.0.0.1:8333", path, creds, "eu-west-1", NOW, body)
    request = AWSRequest(method=method, url=f"http://127.0.0.1:8333{path}", data=body,
                         headers={"x-amz-content-sha256": ours["x-amz-content-sha256"]})
    auth = S3SigV4Auth(BotoCredentials(creds.access_key, creds.secret_key, token), "s3",
                       "eu-west-1")
    monkeypatch.setattr(botocore.auth, "get_current_datetime",
                        lambda: NOW.replace(tzinfo=None))
    auth.add_auth(request)
    assert request.headers["X-Amz-Date"] == ours["x-amz-date"]
    assert ours["authorization"] == request.headers["Authorization"]


def _env(monkeypatch, tmp_path, **values):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
                 "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_USE_FIPS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    for k, v in values.items():
        monkeypatch.setenv(k, v)


def test_static_keys_and_region_choose_the_lean_path_on_aws(monkeypatch, tmp_path):
    _env(monkeypatch, tmp_path, AWS_ACCESS_KEY_ID="a", AWS_SECRET_ACCESS_KEY="b",
         AWS_REGION="eu-west-1")
    lite = S3Lite.from_environment("my-bucket", 5.0)
    assert (lite.host, lite.base, lite.region) == ("my-bucket.s3.eu-west-1.amazonaws.com", "",
                                                   "eu-west-1")
    dotted = S3Lite.from_environment("my.bucket", 5.0)
    assert (dotted.host, dotted.base) == ("s3.eu-west-1.amazonaws.com", "/my.bucket")


def test_keys_from_the_shared_credentials_file(monkeypatch, tmp_path):
    _env(monkeypatch, tmp_path, AWS_PROFILE="ci", AWS_ENDPOINT_URL="http://10.0.0.1:8333")
    (tmp_path / "credentials").write_text("[ci]\naws_access_key_id = k\n"
                                          "aws_secret_access_key = s\n")
    (tmp_path / "config").write_text("[profile ci]\nregion = ap-south-1\n")
    lite = S3Lite.from_environment("thaw", 5.0)
    assert (lite.creds.access_key, lite.region, lite.host, lite.base) == (
        "k", "ap-south-1", "10.0.0.1", "/thaw")


@pytest.mark.parametrize("setup", [
    {},  # no static keys: instance roles, SSO, ... are boto3's
    {"AWS_USE_FIPS_ENDPOINT": "true"},
    {"config": "[default]\nendpoint_url = http://x:1\n"},
    {"config": "[default]\ns3 =\n  addressing_style = path\n"},
])
def test_boto3_answers_where_its_configuration_applies(monkeypatch, tmp_path, setup):
    keys = {} if not setup else {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    _env(monkeypatch, tmp_path, **keys, **{k: v for k, v in setup.items() if k != "config"})
    (tmp_path / "config").write_text(setup.get("config", ""))
    assert S3Lite.from_environment("thaw", 5.0) is None


@pytest.mark.s3
def test_lean_reads_and_writes_map_errors_as_boto3s_do(s3_env, monkeypatch):
    store = S3Store("thaw", "lite")
    assert store._lite is not None
    store.put("refs/a/b", b"x" * 1000)
    assert store.get("refs/a/b") == b"x" * 1000 and store.size("refs/a/b") == 1000
    with pytest.raises(NotFound):
        store.get("refs/a/none")
    with pytest.raises(StoreConfigError, match="the bucket does not exist"):
        S3Store("no-such-bucket-here").get("refs/a/b")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(StoreConfigError, match="secret key is wrong"):
        S3Store("thaw", "lite").get("refs/a/b")
    assert store._boto is None  # none of it needed boto3


@pytest.mark.s3
def test_a_mounts_store_calls_never_import_boto3(s3_env):
    code = ("import sys; from blobstore.store.url import open_store; "
            "s = open_store('s3://thaw/l2'); "
            "s.put('refs/a/b', b'x'); assert s.get('refs/a/b') == b'x'; s.has('refs/a/b'); "
            "s.delete('refs/a/b'); assert not s.has('refs/a/b'); s.delete('refs/a/b'); "
            "assert 'boto3' not in sys.modules, 'boto3 imported'")  # delete: a lease's release
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.s3
def test_prepare_makes_the_listing_client_before_the_first_listing(s3_env):
    store = S3Store("thaw", "prep")
    assert store._boto is None
    store.prepare()
    client = store._boto
    assert client is not None
    assert list(store.list("refs/")) == [] and store._boto is client  # the same one, reused


def test_the_daemon_prepares_its_store_before_it_is_ready():
    """``prepare_store`` is a start-up task: ``started`` (and so the daemon's readiness)
    comes after the store's set-up, and a set-up that fails is left to the listing."""
    import trio

    from blobstore.store.memory import MemoryStore
    from fusefs.service import prepare_store

    calls = []

    class Failing(MemoryStore):
        def prepare(self) -> None:
            calls.append("prepare")
            raise StoreConfigError("no region")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(prepare_store, Failing())
            calls.append("started")

    trio.run(main)
    assert calls == ["prepare", "started"]
