"""The command line as people use it: outputs, and one clear line for every mistake."""

from __future__ import annotations

import json

import pytest

from blobstore.store.blobs import blob_key
from blobstore.store.codec import encode_blob
from blobstore.store.local import LocalStore

from .support import safetensors_bytes


def last_line(proc) -> str:
    return proc.stderr.decode().strip().splitlines()[-1]


def assert_user_error(proc, code: int, *fragments: str) -> None:
    err = proc.stderr.decode()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert err.startswith("thaw: error: ") and err.count("\n") == 1, err
    for f in fragments:
        assert f in err


def test_push_ls_inspect_cat_verify_export(thaw, rich_tree, tmp_path):
    out = json.loads(thaw("push", str(rich_tree), "demo/rich:1", "--json").stdout)
    assert set(out) == {"manifest", "files", "bytes", "chunks", "new_chunks", "uploaded_bytes",
                        "seconds"}
    again = json.loads(thaw("push", str(rich_tree), "demo/rich:1", "--json").stdout)
    assert again["uploaded_bytes"] == 0 and again["manifest"] == out["manifest"]
    listed = json.loads(thaw("ls", "--json").stdout)
    assert listed == [{"ref": "demo/rich:1", "manifest": out["manifest"]}]
    info = json.loads(thaw("inspect", "demo/rich:1", "--json").stdout)
    assert info["files"] == out["files"] and info["bytes"] == out["bytes"]
    text = thaw("inspect", out["manifest"]).stdout.decode()
    assert "directories:" in text
    assert thaw("cat", "demo/rich:1", "/etc/hostname").stdout == b"thaw\n"
    assert json.loads(thaw("verify", "demo/rich:1", "--json").stdout)["missing"] == []
    thaw("export", "demo/rich:1", str(tmp_path / "out"))
    assert (tmp_path / "out" / "bin" / "ping").read_bytes() == (
        rich_tree / "bin" / "ping").read_bytes()


def test_verify_reports_damage(thaw, rich_tree, store_url):
    out = json.loads(thaw("push", str(rich_tree), "x:1", "--json").stdout)
    objects = LocalStore(store_url[len("file://"):])
    info = json.loads(thaw("inspect", "x:1", "--json", "--files").stdout)
    assert info["files_list"][0]["path"] == "/"
    from blobstore.image.images import open_image

    _, m = open_image(objects, out["manifest"])
    objects.delete(blob_key(m.chunks[0].id))
    objects.put(blob_key(m.chunks[-1].id), encode_blob(b"garbage"))
    proc = thaw("verify", "x:1", "--json", check=False)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["missing"] == [m.chunks[0].id] and doc["corrupt"] == [m.chunks[-1].id]


@pytest.mark.parametrize("args, code, fragments", [
    (["push", "{src}", "Bad Name:1"], 2, ["invalid image name"]),
    (["push", "{src}", "ok:bad tag!"], 2, ["invalid tag"]),
    (["push", "{tmp}/missing", "a:1"], 2, ["no such file"]),
    (["push", "{src}", "a:1", "--chunker", "rabin"], 2, ["unknown chunker"]),
    (["push", "{src}", "a:1", "--chunker", "fixed:7"], 2, ["out of range"]),
    (["cat", "nothing:here", "/x"], 2, ["no image nothing:here", "thaw ls"]),
    (["export", "nothing:here", "{tmp}/o"], 2, ["no image nothing:here"]),
    (["inspect", "0" * 64], 1, ["manifest 0000", "not found"]),
    (["ls", "--store", "ftp://nowhere/x"], 2, ["unknown store URL"]),
])
def test_user_errors_are_one_line(thaw, rich_tree, tmp_path, args, code, fragments):
    args = [a.format(src=rich_tree, tmp=tmp_path) for a in args]
    store = args[args.index("--store") + 1] if "--store" in args else None
    if store:
        args = [a for a in args if a not in ("--store", store)]
    assert_user_error(thaw(*args, check=False, store=store), code, *fragments)


def test_garbage_and_hostile_input(thaw, tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 100)
    assert_user_error(thaw("push", str(bad), "a:1", check=False), 2, "bad.tar.gz", "gzip")
    assert json.loads(thaw("ls", "--json").stdout) == []


def test_corrupt_manifest_in_store(thaw, rich_tree, store_url):
    out = json.loads(thaw("push", str(rich_tree), "x:1", "--json").stdout)
    objects = LocalStore(store_url[len("file://"):])
    objects.put(blob_key(out["manifest"]), encode_blob(b"\x93\x01\x02\x03"))
    assert_user_error(thaw("inspect", "x:1", check=False), 1, "does not hash")
    from blobstore.store.blobs import BlobStore

    mid, _ = BlobStore(objects).put(b"\x93\x01\x02\x03")
    assert_user_error(thaw("inspect", mid, check=False), 1, "invalid manifest")


def test_ls_lists_a_broken_tag_as_broken_and_exits_1(thaw, store_url, rich_tree):
    thaw("push", str(rich_tree), "good:1")
    LocalStore(store_url[len("file://"):]).put("refs/x/1", b"not an id")
    proc = thaw("ls", "--json", check=False)
    assert proc.returncode == 1
    rows = {row["ref"]: row for row in json.loads(proc.stdout)}
    assert rows["x:1"] == {"ref": "x:1", "manifest": None, "broken": True}
    assert "broken" not in rows["good:1"]
    proc = thaw("ls", check=False)
    assert proc.returncode == 1 and b"BROKEN" in proc.stdout and b"x:1" in proc.stderr
    assert_user_error(thaw("inspect", "x:1", check=False), 1, "holds no manifest id")


@pytest.mark.s3
@pytest.mark.parametrize("args", [
    ["push", "{src}", "a:1"], ["ls"], ["inspect", "a:1"], ["export", "a:1", "{tmp}/out"],
    ["mount", "a:1", "{tmp}/mnt"], ["place", "--workloads", "{tmp}/w.json"],
    ["snapshot", "{tmp}/w.safetensors", "a:1"], ["restore", "a:1"],
    ["tag", "a:1", "b:1"], ["rm", "a:1"], ["gc"], ["gc", "--cache-dir", "{tmp}"], ["check"],
])
def test_dead_store_is_one_line(thaw, rich_tree, tmp_path, args):
    from .seaweed import free_ports

    (tmp_path / "mnt").mkdir()
    (tmp_path / "w.json").write_text('[{"image": "a:1", "gpus": 1}]')
    (tmp_path / "w.safetensors").write_bytes(safetensors_bytes())
    thaw.env.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_ports(1)[0]}",
                    AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y")
    args = [a.format(src=rich_tree, tmp=tmp_path) for a in args]
    proc = thaw(*args, check=False, store="s3://thaw/p")
    assert_user_error(proc, 3, "s3://thaw/p (http://127.0.0.1:", "cannot")


def test_full_disk_is_one_line(thaw, rich_tree, tmp_path):
    import subprocess

    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        proc = thaw("push", str(rich_tree), "a:1", check=False, store=f"file://{mnt}/store")
        assert_user_error(proc, 3, "no space left")
        assert not (mnt / "store" / "refs").exists()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_snapshot_to_a_full_disk_is_one_line(thaw, tmp_path):
    import subprocess

    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.rand(2 << 20)}, str(tmp_path / "w.safetensors"))  # 8 MB, random
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        proc = thaw("snapshot", str(tmp_path / "w.safetensors"), "w:1", check=False,
                    store=f"file://{mnt}/store")
        assert_user_error(proc, 3, "no space left")
        assert not (mnt / "store" / "refs").exists()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.mount
@pytest.mark.parametrize("what", ["file", "directory"])
def test_a_source_file_that_fails_with_eio_is_one_line(thaw, rich_tree, store_url, tmp_path,
                                                       what):
    """A real EIO: the source is a thaw mount whose chunks were deleted from its store."""
    from .conftest import Mounted

    other = f"file://{tmp_path / 'other'}"
    thaw("push", str(rich_tree), "rich:1", store=other)
    for blob in (tmp_path / "other" / "blobs").rglob("*"):
        if blob.is_file() and blob.stat().st_size > 100_000:  # the 3 MiB bin/ping's chunks
            blob.unlink()
    mnt = tmp_path / "mnt"
    with Mounted(thaw, mnt, "mount", "rich:1", str(mnt), "--cache-dir",
                 str(tmp_path / "cache"), "--no-hints", store=other):
        source = mnt / "bin" / "ping" if what == "file" else mnt
        proc = thaw("push", str(source), "x:1", check=False)
    assert_user_error(proc, 2, "cannot read", "ping")
    assert json.loads(thaw("ls", "--json").stdout) == []


def test_push_seconds_cover_opening_the_source():
    import time

    from blobstore.store.memory import MemoryStore
    from indexer.push import push_tree
    from indexer.tree import Node, SourceTree

    tree = SourceTree({"": Node("d", 0o755)}, "dir", 0)
    result = push_tree(tree, MemoryStore(), started=time.monotonic() - 100)
    assert result.seconds >= 100


def test_a_5kb_path_in_an_error_is_cut_to_one_readable_line(thaw, tmp_path):
    long = "/" + "/".join(["d" * 200] * 25)
    proc = thaw("push", long, "x:1", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.count("\n") == 1 and len(err) < 600, err
    assert "..." in err and "no such file or directory" in err


@pytest.mark.mount
def test_export_killed_with_sigterm_leaves_no_partial_directory(thaw, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from .conftest import REPO

    src = tmp_path / "src"
    src.mkdir()
    for i in range(16):
        (src / f"f{i}").write_bytes(os.urandom(16 << 20))
    thaw("push", str(src), "big:1")
    proc = subprocess.Popen([sys.executable, "-m", "thaw", "--store", thaw.store, "export",
                             "big:1", str(tmp_path / "out")], cwd=REPO,
                            stderr=subprocess.PIPE)
    for _ in range(2000):
        if any(p.name.startswith(".out.thaw-partial") for p in tmp_path.iterdir()):
            break
        threading_wait(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert b"terminated" in err and b"Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "store"]


def threading_wait(seconds: float) -> None:
    import threading

    threading.Event().wait(seconds)


def test_a_store_timeout_that_is_not_a_positive_number_is_one_line(thaw):
    for bad in ("0", "soon", "nan", "inf", "-1", ""):
        assert_user_error(thaw("--store-timeout", bad, "ls", check=False), 2,
                          "--store-timeout")


@pytest.mark.parametrize("args", [
    ["gc", "--force", "--grace", "{bad}"], ["mount", "a:1", "{tmp}/m", "--hints-window", "{bad}"],
    ["daemon", "--mountpoint", "{tmp}/m", "--report-interval", "{bad}"],
    ["extender", "--listen", "127.0.0.1:1", "--ttl", "{bad}"],
    ["place", "--workloads", "{tmp}/w", "--ttl", "{bad}"],
    ["serve", "--listen", "127.0.0.1:1", "--cache-dir", "{tmp}/c", "--token-file", "{tmp}/t",
     "--header-timeout", "{bad}"],
])
@pytest.mark.parametrize("bad", ["nan", "inf", "", "-1", "1e9", "366d", "5x", "2 h"])
def test_a_duration_is_a_finite_number_of_seconds_or_with_a_unit_up_to_a_year(
        thaw, tmp_path, args, bad):
    proc = thaw(*[a.format(bad=bad, tmp=tmp_path) for a in args], check=False)
    assert_user_error(proc, 2, repr(bad))


def test_durations_take_seconds_or_a_unit():
    from blobstore.units import parse_duration

    assert [parse_duration(t, "--grace") for t in ("0", "90", "1.5h", "90m", "2d", "365d")] \
        == [0, 90, 5400, 5400, 172800, 365 * 86400]


def test_a_grace_of_nan_no_longer_condemns_fresh_objects(thaw, rich_tree, store_url):
    """`--grace nan` passed `grace < MIN_GRACE` (every comparison with nan is false) and
    condemned objects seconds old without --force."""
    thaw("push", str(rich_tree), "a:1")
    thaw("rm", "a:1")
    assert_user_error(thaw("gc", "--grace", "nan", check=False), 2, "--grace 'nan'")
    assert json.loads(thaw("gc", "--dry-run", "--json").stdout)["marked"] == 0  # all young


def test_a_tag_named_like_a_manifest_id_is_refused(thaw, rich_tree):
    mid = json.loads(thaw("push", str(rich_tree), "a:1", "--json").stdout)["manifest"]
    for args in (["tag", "a:1", "f" * 64], ["tag", "a:1", "f" * 64 + ":v1"],
                 ["push", str(rich_tree), "e" * 64]):
        assert_user_error(thaw(*args, check=False), 2, "reads as a manifest id")
    assert [r["ref"] for r in json.loads(thaw("ls", "--json").stdout)] == ["a:1"]
    assert thaw("inspect", mid, "--json").returncode == 0


def test_each_command_line_builds_only_its_commands_parser():
    """``CLI_MODULES`` names what each module registers; a command line names its command
    through any common option before it; help and a mistyped command see every command."""
    import argparse
    import importlib

    from thaw.main import CLI_MODULES, build_parser, named_command

    for module, names in CLI_MODULES.items():
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(sub, argparse.ArgumentParser(add_help=False))
        assert tuple(sub.choices) == names
    assert named_command(["--store", "mount", "-v", "--store-timeout", "3", "mount", "a"]) \
        == "mount"
    assert named_command(["--json", "--help"]) is None
    every = [n for names in CLI_MODULES.values() for n in names]
    sub = next(a for a in build_parser("moun")._actions
               if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == every
    sub = next(a for a in build_parser("mount")._actions
               if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(CLI_MODULES["fusefs.cli"])
    args = build_parser("mount").parse_args(["--store", "file:///s", "mount", "a:1", "/m"])
    assert (args.command, args.store, args.ref) == ("mount", "file:///s", "a:1")


def test_a_mistyped_command_is_one_line_naming_every_command(thaw):
    proc = thaw("moun", "a:1", "/m", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr.decode()
    assert "'push'" in last_line(proc) and "'extender'" in last_line(proc)
