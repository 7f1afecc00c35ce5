"""The scheduler extender: the protocol's JSON both ways, scores from node reports, and
hostile bodies."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys

import pytest

from blobstore.images import open_image
from blobstore.local import LocalStore
from blobstore.nodereport import build_report, write_report
from placement.extender import filter_nodes, pod_gpus, scores
from placement.model import Node

from .conftest import REPO
from .seaweed import free_ports


def pod(image: str | None = None, gpus: int = 0) -> dict:
    meta = {"name": "p", "annotations": {"thaw.dev/image": image} if image else {}}
    res = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    return {"metadata": meta, "spec": {"containers": [{"name": "c", "resources": res}]}}


def test_scores_are_the_share_of_the_image_cached():
    nodes = {"a": Node("a", "H200", 8, 1, {"m": 100}), "b": Node("b", "H200", 8, 1, {"m": 50}),
             "c": Node("c", "H200", 8, 1, {})}
    assert scores(["a", "b", "c", "d"], "m", 100, nodes) == [
        {"Host": "a", "Score": 10}, {"Host": "b", "Score": 5}, {"Host": "c", "Score": 0},
        {"Host": "d", "Score": 0}]


def test_nodes_short_of_gpus_fail_and_unknown_nodes_pass():
    nodes = {"a": Node("a", "H200", 1, 1), "b": Node("b", "H200", 4, 1)}
    assert filter_nodes(["a", "b", "x"], 2, nodes) == {
        "a": "thaw: 1 free GPUs reported, the pod needs 2"}
    assert pod_gpus(pod(gpus=2)) == 2 and pod_gpus(pod()) == 0


def post(port: int, path: str, body: bytes) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


@pytest.mark.mount
def test_the_extender_answers_the_scheduler_from_node_reports(thaw, rich_tree, store_url):
    thaw("push", str(rich_tree), "app:1")
    objects = LocalStore(store_url[len("file://"):])
    mid, manifest = open_image(objects, "app:1")
    size = sum({c.id: c.size for c in manifest.chunks}.values())
    gpus = [{"model": "H200", "memory_total": 100, "memory_free": 100}] * 2
    for node, cached in (("node-a", size), ("node-b", size // 2), ("node-c", 0)):
        write_report(objects, build_report(node, gpus, 0, 1, {mid: cached}))
    port = free_ports(1)[0]
    proc = subprocess.Popen([sys.executable, "-m", "thaw", "--store", store_url, "extender",
                             "--listen", f"127.0.0.1:{port}"], cwd=REPO, env=dict(os.environ),
                            stderr=subprocess.PIPE, text=True)
    try:
        assert "scheduler extender" in proc.stderr.readline()
        names = ["node-a", "node-b", "node-c", "node-d"]
        status, result = post(port, "/filter", json.dumps(
            {"Pod": pod("app:1", gpus=3), "NodeNames": names}).encode())
        assert status == 200 and result["NodeNames"] == ["node-d"]  # no report: passes
        assert set(result["FailedNodes"]) == {"node-a", "node-b", "node-c"}
        node_list = {"items": [{"metadata": {"name": n}} for n in names]}
        status, result = post(port, "/filter", json.dumps(
            {"Pod": pod("app:1", gpus=1), "Nodes": node_list}).encode())
        assert [n["metadata"]["name"] for n in result["Nodes"]["items"]] == names
        status, result = post(port, "/prioritize", json.dumps(
            {"Pod": pod("app:1"), "Nodes": node_list}).encode())
        assert result == [{"Host": "node-a", "Score": 10}, {"Host": "node-b", "Score": 5},
                          {"Host": "node-c", "Score": 0}, {"Host": "node-d", "Score": 0}]
        _, result = post(port, "/prioritize", json.dumps(
            {"Pod": pod(mid), "NodeNames": ["node-b"]}).encode())  # by manifest id too
        assert result == [{"Host": "node-b", "Score": 5}]
        _, result = post(port, "/prioritize", json.dumps(
            {"Pod": pod("nope:1"), "NodeNames": ["node-a"]}).encode())
        assert result == [{"Host": "node-a", "Score": 0}]  # an unknown image favours none
        for body in (b"{not json", b"[1, 2]"):
            status, result = post(port, "/filter", body)
            assert status == 400 and "Error" in result
        status, result = post(port, "/filter", json.dumps(
            {"Pod": {"spec": {"containers": [{"resources": {"limits": {
                "nvidia.com/gpu": "many"}}}]}}, "NodeNames": ["a"]}).encode())
        assert status == 200 and "not a number" in result["Error"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
