"""The scheduler extender: the protocol's JSON both ways, scores from node reports, and
hostile bodies."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager

import pytest

from blobstore.image.images import open_image
from blobstore.ops.nodereport import build_report, write_report
from blobstore.schema import GpuReport
from blobstore.store.local import LocalStore
from placement.extender import filter_nodes, scores
from placement.extenderargs import parse, pod_gpus
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
    assert pod_gpus(parse({"Pod": pod(gpus=2)})) == 2 and pod_gpus(parse({"Pod": pod()})) == 0


@contextmanager
def extender(store: str, *options: str, env: dict | None = None):
    """A real `thaw extender` on a free port; yields the port."""
    port = free_ports(1)[0]
    proc = subprocess.Popen([sys.executable, "-m", "thaw", "--store", store, *options,
                             "extender", "--listen", f"127.0.0.1:{port}"], cwd=REPO,
                            env=env or dict(os.environ), stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(20):  # a dead store is warned about first
            line = proc.stderr.readline()
            if "scheduler extender" in line or not line:
                break
        assert "scheduler extender" in line, line
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


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
    gpus = [GpuReport("H200", 100, 100)] * 2
    for node, cached in (("node-a", size), ("node-b", size // 2), ("node-c", 0)):
        write_report(objects, build_report(node, gpus, 0, 1, {mid: cached}))
    with extender(store_url) as port:
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
        assert status == 200 and "not a whole number" in result["Error"]


def v1_pod(image: str | None, gpus: int, gpu_memory: str | None = None) -> dict:
    """A Pod as the API server sends it to an extender, fields thaw ignores and all."""
    annotations = {"kubectl.kubernetes.io/last-applied-configuration": "{}"}
    if image:
        annotations["thaw.dev/image"] = image
    if gpu_memory:
        annotations["thaw.dev/gpu-memory"] = gpu_memory
    return {"kind": "Pod", "apiVersion": "v1", "metadata": {
        "name": "infer-0", "namespace": "default", "uid": "3f0c", "resourceVersion": "812",
        "creationTimestamp": "2026-12-02T00:00:00Z", "labels": {"app": "infer"},
        "annotations": annotations},
        "spec": {"schedulerName": "default-scheduler", "restartPolicy": "Always",
                 "containers": [{"name": "server", "image": "busybox:1.36",
                                 "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                                 "resources": {"limits": {"nvidia.com/gpu": str(gpus),
                                                          "memory": "8Gi"},
                                               "requests": {"cpu": "2"}}}],
                 "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]},
        "status": {"phase": "Pending", "qosClass": "Burstable"}}


def v1_nodes(names: list[str]) -> dict:
    return {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": "9"},
            "items": [{"metadata": {"name": n, "uid": n, "labels": {
                "kubernetes.io/hostname": n}}, "spec": {"podCIDR": "10.0.0.0/24"},
                "status": {"capacity": {"nvidia.com/gpu": "2"}, "images": [
                    {"names": ["busybox:1.36"], "sizeBytes": 4000000}],
                    "conditions": [{"type": "Ready", "status": "True"}]}} for n in names]}


@pytest.mark.mount
@pytest.mark.parametrize("node_cache_capable", [True, False])
def test_filter_then_prioritize_as_kube_scheduler_calls_them(thaw, rich_tree, store_url,
                                                             node_cache_capable):
    thaw("push", str(rich_tree), "app:1")
    objects = LocalStore(store_url[len("file://"):])
    mid, manifest = open_image(objects, "app:1")
    size = sum({c.id: c.size for c in manifest.chunks}.values())
    big = [GpuReport("H200", 141 << 30, 141 << 30)] * 2
    small = [GpuReport("L4", 24 << 30, 24 << 30)] * 2
    for node, gpus, cached in (("hot", big, size), ("warm", big, size // 4),
                               ("tiny", small, size), ("cold", big, 0)):
        write_report(objects, build_report(node, gpus, 0, 1, {mid: cached}))
    with extender(store_url) as port:
        names = ["hot", "warm", "tiny", "cold", "unreported"]
        pod = v1_pod("app:1", 2, "40G")
        args = ({"Pod": pod, "NodeNames": names} if node_cache_capable else
                {"Pod": pod, "Nodes": v1_nodes(names)})
        status, result = post(port, "/filter", json.dumps(args).encode())
        assert status == 200 and result["Error"] == ""
        assert set(result["FailedNodes"]) == {"tiny"}  # 24G GPUs for a 40G pod
        kept = result["NodeNames"] if node_cache_capable else [
            n["metadata"]["name"] for n in result["Nodes"]["items"]]
        assert kept == ["hot", "warm", "cold", "unreported"]
        if not node_cache_capable:
            assert result["Nodes"]["items"][0]["status"]["images"]  # passed on whole
        args = ({"Pod": pod, "NodeNames": kept} if node_cache_capable else
                {"Pod": pod, "Nodes": v1_nodes(kept)})
        status, result = post(port, "/prioritize", json.dumps(args).encode())
        scores_ = {h["Host"]: h["Score"] for h in result}
        assert max(scores_, key=scores_.get) == "hot" and scores_["hot"] == 10
        assert scores_["warm"] in (2, 3) and scores_["cold"] == scores_["unreported"] == 0
        status, result = post(port, "/prioritize", json.dumps(
            {"Pod": v1_pod(None, 1), "NodeNames": kept}).encode())
        assert status == 200 and {h["Score"] for h in result} == {0}  # no annotation


@pytest.mark.s3
@pytest.mark.allow_log_warnings
def test_a_dead_store_gives_well_formed_answers_and_the_pod_schedules(tmp_path):
    dead = free_ports(1)[0]
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{dead}",
           "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    with extender("s3://thaw/x", "--store-timeout", "2", env=env) as port:
        args = {"Pod": v1_pod("app:1", 1), "NodeNames": ["a", "b"]}
        status, result = post(port, "/filter", json.dumps(args).encode())
        assert status == 200 and result["NodeNames"] == ["a", "b"] and not result["Error"]
        status, result = post(port, "/prioritize", json.dumps(args).encode())
        assert status == 200 and result == [{"Host": "a", "Score": 0}, {"Host": "b",
                                                                        "Score": 0}]


def test_pods_pending_together_are_placed_jointly_and_a_stale_plan_falls_back():
    from placement.extender import Extender

    class Clock:
        now = 1000.0

        def __call__(self):
            return self.now

    clock = Clock()
    gib = 1 << 30
    # a holds both images and has one GPU free; b holds only x's. One at a time, the x pod
    # could take a (a tie at 10) and leave the y pod to fetch its image on b.
    nodes = {"a": Node("a", "H200", 1, 80 * gib, {"x": 10 * gib, "y": 10 * gib}),
             "b": Node("b", "H200", 1, 80 * gib, {"x": 10 * gib})}
    ext = Extender(lambda: nodes, lambda ref: (ref.split(":")[0], 10 * gib), clock=clock)

    def a_pod(image: str, uid: str) -> dict:
        p = pod(f"{image}:1", gpus=1)
        p["metadata"]["uid"] = uid
        return p

    px, py = a_pod("x", "uid-x"), a_pod("y", "uid-y")
    names = {"NodeNames": ["a", "b"]}
    for p in (px, py):  # the scheduler asks about both; each fits both nodes
        assert ext.filter(parse({"Pod": p, **names}))["NodeNames"] == ["a", "b"]
    assert ext.prioritize(parse({"Pod": px, **names})) == [{"Host": "a", "Score": 10},
                                                    {"Host": "b", "Score": 10}]
    plan = ext.replan()
    assert plan.node_of == {"uid-x": "b", "uid-y": "a"}
    out = ext.filter(parse({"Pod": px, **names}))
    assert out["NodeNames"] == ["b"] and "planned on b" in out["FailedNodes"]["a"]
    assert ext.prioritize(parse({"Pod": px, **names})) == [{"Host": "a", "Score": 9},
                                                    {"Host": "b", "Score": 10}]
    assert ext.filter(parse({"Pod": py, **names}))["NodeNames"] == ["a"]  # b's GPU is x's
    assert ext.prioritize(parse({"Pod": py, **names})) == [{"Host": "a", "Score": 10},
                                                    {"Host": "b", "Score": 0}]
    clock.now += ext.stale + 1  # no plan since: each pod on its own again
    assert ext.filter(parse({"Pod": px, **names}))["NodeNames"] == ["a", "b"]
    assert ext.prioritize(parse({"Pod": px, **names}))[0] == {"Host": "a", "Score": 10}
    clock.now += ext.pending.forget + 1  # neither asked about since: forgotten
    assert ext.replan().node_of == {}
    other = a_pod("x", "uid-z")  # a pod that is not in the plan is scored on its own
    ext.filter(parse({"Pod": px, **names}))
    ext.replan()
    assert ext.prioritize(parse({"Pod": other, **names}))[0]["Score"] == 10
    off = Extender(lambda: nodes, lambda ref: (ref.split(":")[0], 10 * gib), clock=clock,
                   replan=0)  # --replan 0: each pod on its own, none remembered
    for p in (px, py):
        assert off.filter(parse({"Pod": p, **names}))["NodeNames"] == ["a", "b"]
    assert not off.pending.pods and off.replan().node_of == {}
    assert off.prioritize(parse({"Pod": px, **names}))[1] == {"Host": "b", "Score": 10}


def _gpus(value) -> dict:
    return {"Pod": {"spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": value}}}]}},
            "NodeNames": ["a", "b"]}


def _memory(text: str) -> dict:
    return {"Pod": {"metadata": {"annotations": {"thaw.dev/gpu-memory": text}}, "spec": {
        "containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}]}},
        "NodeNames": ["a", "b"]}


WRONG_SHAPES = [
    b'{"Pod":[1]}', b'{"Nodes":[1,2]}', b'{"Pod":NaN}', b'{"Pod":Infinity}',
    b'{"NodeNames":"abc"}', b"[" * 100_000 + b"]" * 100_000, b'{"NodeNames":[1]}',
    b'{"Nodes":{"items":"abc"}}', b'{"Nodes":{"items":[{"metadata":{"name":1}}]}}',
    b'{"Nodes":{"items":[{"metadata":null}]}}', b'{"Pod":{"metadata":"x"}}',
    b'{"Pod":{"metadata":{"annotations":{"thaw.dev/image":5}}}}',
    b'{"Pod":{"spec":{"containers":{"a":1}}}}', b'{"Pod":{"spec":{"containers":[7]}}}',
    b'{"Pod":{"metadata":{"uid":["x"]}}}', b"\xff\xfe{}",
    json.dumps(_gpus([1])).encode(), json.dumps(_gpus(True)).encode(),
]
UNUSABLE_VALUES = [
    json.dumps(_gpus("X")).replace('"X"', "1e999").encode(), json.dumps(_gpus("-1")).encode(),
    json.dumps(_gpus(1.5)).encode(), json.dumps(_gpus("9" * 5000)).encode(),
    json.dumps(_memory("9" * 5000)).encode(), json.dumps(_memory("9" * 5000 + "G")).encode(),
    json.dumps(_memory("lots")).encode(), json.dumps(_memory("nan")).encode(),
]


def test_a_body_of_the_wrong_shape_is_a_400_and_a_value_thaw_cannot_use_passes_every_node(
        store_url):
    """Never a dropped connection or a traceback: the issue's ~15 hostile bodies."""
    port = free_ports(1)[0]
    proc = subprocess.Popen([sys.executable, "-m", "thaw", "--store", store_url, "extender",
                             "--listen", f"127.0.0.1:{port}"], cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert "scheduler extender" in proc.stderr.readline()
        for body in WRONG_SHAPES:
            for path in ("/filter", "/prioritize"):
                status, result = post(port, path, body)
                assert status == 400 and result["Error"], (body[:60], result)
                assert "\n" not in result["Error"] and len(result["Error"]) < 300
        for body in UNUSABLE_VALUES:
            status, result = post(port, "/filter", body)
            assert status == 200 and result["NodeNames"] == ["a", "b"], (body[:60], result)
            assert result["FailedNodes"] == {} and result["Error"], result
            status, result = post(port, "/prioritize", body)
            assert status == 200 and result == [{"Host": "a", "Score": 0},
                                                {"Host": "b", "Score": 0}]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert "Traceback" not in proc.stderr.read()
