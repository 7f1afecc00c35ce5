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
    subprocess.run([*COMPOSE, "down", "-v"], cwd=REPO, capture_output=True)
    try:
        subprocess.run([*COMPOSE, "up", "-d"], cwd=REPO, check=True, capture_output=True)
        out = subprocess.run(["docker/cluster-demo.sh"], cwd=REPO, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "json from /mnt/thaw/refs/demo/1/json/__init__.py" in out.stdout
        peer = next(line for line in out.stdout.splitlines() if line.strip().startswith("peer"))
        assert int(peer.split()[1]) > 0  # chunks came from the other nodes
    finally:
        subprocess.run([*COMPOSE, "down", "-v"], cwd=REPO, capture_output=True)
