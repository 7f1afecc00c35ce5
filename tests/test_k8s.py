"""The Kubernetes manifests in docker/k8s: rendered as kustomize would (and compared with
`kubectl kustomize` where kubectl exists), every object validated offline against the
Kubernetes API schema, and the settings the node depends on checked. Nothing here was
applied to a real cluster (there is none on these machines)."""

from __future__ import annotations

import base64
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from .conftest import REPO

K8S = REPO / "docker" / "k8s"
VERSION = kubernetes_validate.utils.latest_version()
CLUSTER_SCOPED = {"Namespace"}


def render() -> list[dict]:
    """What `kubectl kustomize docker/k8s` gives, for the features the kustomization uses:
    resources, namespace, labels, and literal ConfigMap and Secret generators."""
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects = []
    for name in k["resources"]:
        objects += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    for gen, kind in ((k.get("configMapGenerator", []), "ConfigMap"),
                      (k.get("secretGenerator", []), "Secret")):
        for g in gen:
            pairs = dict(lit.split("=", 1) for lit in g["literals"])
            obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": g["name"]}}
            if kind == "Secret":
                obj["type"] = "Opaque"
                obj["data"] = {k_: base64.b64encode(v.encode()).decode()
                               for k_, v in pairs.items()}
            else:
                obj["data"] = pairs
            objects.append(obj)
    labels = {k_: v for entry in k.get("labels", []) for k_, v in entry["pairs"].items()}
    for obj in objects:
        meta = obj.setdefault("metadata", {})
        meta.setdefault("labels", {}).update(labels)
        if obj["kind"] not in CLUSTER_SCOPED:
            meta["namespace"] = k["namespace"]
    return objects


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    return render()


def test_every_object_is_valid_against_the_kubernetes_schema(objects):
    example = yaml.safe_load((K8S / "example-pod.yaml").read_text())
    for obj in [*objects, example]:
        kubernetes_validate.validate(obj, VERSION, strict=True)
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert ("DaemonSet", "thaw-node") in kinds and ("Deployment", "thaw-extender") in kinds


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_the_rendering_matches_kubectl_kustomize(objects):
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True,
                         check=True).stdout
    theirs = [d for d in yaml.safe_load_all(out) if d]
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted(theirs, key=key) == sorted(objects, key=key)


def test_the_node_daemonset_has_what_a_thaw_node_needs(objects):
    ds = next(o for o in objects if o["kind"] == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    daemon = next(c for c in spec["containers"] if c["name"] == "daemon")
    serve = next(c for c in spec["containers"] if c["name"] == "serve")
    assert daemon["securityContext"]["privileged"]
    mnt = next(m for m in daemon["volumeMounts"] if m["name"] == "mnt")
    assert mnt["mountPropagation"] == "Bidirectional"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in daemon["env"]}
    assert env == {"NODE_NAME": "spec.nodeName", "POD_IP": "status.podIP"}
    args = daemon["command"]
    assert args[:2] == ["thaw", "daemon"] and "$(NODE_NAME)" in args
    assert "http://$(POD_IP):8740" in args and args[args.index("--peers") + 1] == "store"
    assert serve["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert all("requests" in c["resources"] for c in spec["containers"])
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["token"]["secret"]["secretName"] == "thaw-peer-token"
    assert volumes["fuse"]["hostPath"]["type"] == "CharDevice"


def test_the_scheduler_config_points_at_the_extender(objects):
    cm = next(o for o in objects if o["metadata"]["name"] == "thaw-scheduler-config")
    config = yaml.safe_load(cm["data"]["scheduler-config.yaml"])
    assert config["kind"] == "KubeSchedulerConfiguration"
    ext = config["extenders"][0]
    svc = next(o for o in objects if o["kind"] == "Service" and
               o["metadata"]["name"] == "thaw-extender")
    assert ext["urlPrefix"] == (f"http://thaw-extender.{svc['metadata']['namespace']}.svc:"
                                f"{svc['spec']['ports'][0]['port']}")
    assert (ext["filterVerb"], ext["prioritizeVerb"], ext["ignorable"]) == (
        "filter", "prioritize", True)
