"""The node image and the local cluster, built and run with podman as `make cluster` does:
the image builds from this machine (mmdebstrap base, wheels from the host), keeps its
HEALTHCHECK, and three nodes with peers serve an image pushed from one of them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.mount]
COMPOSE = [str(Path(sys.executable).parent / "podman-compose"), "--podman-args=--runtime runc",
           "-f", "docker/compose.yaml"]


@pytest.fixture(scope="module")
def images():
    if not shutil.which("podman") or not shutil.which("mmdebstrap"):
        pytest.fail("podman and mmdebstrap are needed: run `make install`")
    subprocess.run(["docker/build.sh", sys.executable], cwd=REPO, check=True)


def test_the_node_image_builds_and_keeps_its_healthcheck(images):
    info = json.loads(subprocess.run(["podman", "image", "inspect", "thaw-node:latest"],
                                     capture_output=True, check=True, text=True).stdout)[0]
    assert "/healthz" in " ".join(info["Healthcheck"]["Test"])  # kept by --format docker
    out = subprocess.run(["podman", "--runtime", "runc", "run", "--rm", "--no-healthcheck",
                          "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                          "thaw-node:latest", "thaw", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "serve" in out and "daemon" in out and "extender" in out


def test_a_local_cluster_serves_a_pushed_image_through_its_peers(images):
    token = REPO / "docker" / "cluster-token"
    if not token.exists():
        token.write_text("test-cluster-token\n")
        token.chmod(0o600)
    subprocess.run([*COMPOSE, "down", "-v"], cwd=REPO, capture_output=True)
    try:
        subprocess.run([*COMPOSE, "up", "-d"], cwd=REPO, check=True, capture_output=True)
        out = subprocess.run(["docker/cluster-demo.sh"], cwd=REPO, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "json from /mnt/thaw/refs/demo/1/json/__init__.py" in out.stdout
        peer = next(line for line in out.stdout.splitlines() if line.strip().startswith("peer"))
        assert int(peer.split()[1]) > 0  # chunks came from the other nodes
        s3_gets_per_chunk_with_three_nodes_reading_at_once()
    finally:
        subprocess.run([*COMPOSE, "down", "-v"], cwd=REPO, capture_output=True)


def in_node(node: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", "exec", f"docker_{node}_1", *cmd], capture_output=True,
                          text=True, check=True, **kw)


def s3_gets() -> int:
    """Successful S3 GETs SeaweedFS has answered (its Prometheus counter)."""
    text = in_node("node1", "python3", "-c", "import urllib.request; print(urllib.request."
                   "urlopen('http://s3:9327/metrics', timeout=10).read().decode())").stdout
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("SeaweedFS_s3_request_total{")
               and 'bucket="thaw"' in line and 'code="200"' in line and 'type="GET"' in line)


def s3_gets_per_chunk_with_three_nodes_reading_at_once() -> None:
    """Every file of an image read on all three nodes at once: S3 sends each chunk into the
    cluster about once (the tags, manifests and hints each node reads count too)."""
    in_node("node1", "thaw", "push", "/opt/thaw", "venv:1", timeout=600)
    chunks = json.loads(in_node("node1", "thaw", "inspect", "venv:1", "--json").stdout)
    before = s3_gets()
    readers = [subprocess.Popen(["podman", "exec", f"docker_{n}_1", "sh", "-c",
                                 "find /mnt/thaw/refs/venv/1/ -type f -exec cat {} + "
                                 ">/dev/null"]) for n in ("node1", "node2", "node3")]
    assert all(r.wait(600) == 0 for r in readers)
    gets = s3_gets() - before
    assert chunks["unique_chunks"] > 50  # enough that a few other GETs do not decide it
    assert gets <= 1.1 * chunks["unique_chunks"], (gets, chunks["unique_chunks"])
