"""End to end: the Debian root file system in SeaweedFS, mounted lazily with empty caches.

Heavy: marked ``e2e``. Needs root, /dev/fuse, podman and runc (``make install``).
"""

from __future__ import annotations

import errno
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .conftest import Mounted, rsync_diff
from .test_e2e_debian import gnu_extract

pytestmark = [pytest.mark.e2e, pytest.mark.s3, pytest.mark.mount]
PODMAN = ["podman", "--runtime", "runc", "run", "--rm", "--network=none",
          "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


@pytest.fixture(scope="module")
def gnu_tree(debian_tar, tmp_path_factory) -> Path:
    return gnu_extract(debian_tar, tmp_path_factory.mktemp("gnu") / "root")


@pytest.fixture
def debian_in_s3(thaw, debian_tar, s3_url) -> str:
    thaw("push", str(debian_tar), "debian:12", store=s3_url)
    return s3_url


def mount(thaw, s3_url: str, tmp_path: Path, name: str = "mnt") -> Mounted:
    mnt = tmp_path / name
    return Mounted(thaw, mnt, "mount", "debian:12", str(mnt), "--cache-dir",
                   str(tmp_path / f"cache-{name}"), store=s3_url)


def stats(thaw, mnt: Path) -> dict:
    return json.loads(thaw("stats", str(mnt), "--json").stdout)


def test_lazy_mount_runs_python_and_a_container(thaw, debian_in_s3, tmp_path):
    with mount(thaw, debian_in_s3, tmp_path) as mnt:
        out = subprocess.run(["chroot", str(mnt), "/usr/bin/python3", "-c",
                              "import json; print(json.dumps({'ok': True}))"],
                             capture_output=True, check=True).stdout
        assert out.strip() == b'{"ok": true}'
        run = subprocess.run([*PODMAN, "--rootfs", f"{mnt}:O", "/usr/bin/python3", "-c",
                              "import json, os; print(os.getpid() > 0)"],
                             capture_output=True, timeout=300)
        assert run.returncode == 0, run.stderr.decode()
        assert run.stdout.strip() == b"True"
        s = stats(thaw, mnt)
        share = s["fetched_bytes"] / s["image_bytes"]
        print(f"\nchroot python3 + podman python3: fetched {s['fetched_bytes']} of "
              f"{s['image_bytes']} bytes ({share:.1%}), {s['tiers']['store']['chunks']} chunks")
        assert share < 0.25


def test_lazy_mount_is_identical_to_gnu_tar(thaw, debian_in_s3, gnu_tree, tmp_path):
    with mount(thaw, debian_in_s3, tmp_path) as mnt:
        assert rsync_diff(gnu_tree, mnt) == ""


@pytest.mark.allow_log_warnings
def test_s3_stopped_mid_read_and_started_again(thaw, debian_in_s3, gnu_tree, seaweed,
                                               tmp_path):
    rel = next(p for p in ("usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0",
                           "usr/bin/python3.11") if (gnu_tree / p).is_file())
    expected = (gnu_tree / rel).read_bytes()
    with mount(thaw, debian_in_s3, tmp_path) as mnt:
        assert (mnt / "etc" / "debian_version").read_text().startswith("12")
        got, failure, done = bytearray(), [], threading.Event()
        stopped = threading.Event()

        def reader() -> None:
            try:
                with open(mnt / rel, "rb", buffering=0) as f:
                    while piece := f.read(65536):
                        got.extend(piece)
                        if len(got) >= 4 * 65536:
                            stopped.wait(60)  # the store goes away under us
            except OSError as exc:
                failure.append(exc.errno)
            finally:
                done.set()

        thread = threading.Thread(target=reader)
        thread.start()
        while len(got) < 4 * 65536 and not done.is_set():
            threading.Event().wait(0.01)
        seaweed.stop()
        stopped.set()
        seaweed.start()
        thread.join(120)
        assert failure in ([], [5])  # served, or EIO after the retries: never wrong bytes
        assert bytes(got) == expected[:len(got)]
        # The mount is up and serves again once the store does: SeaweedFS answers some
        # time after start() returns, and a chunk that just failed gets one short attempt.
        deadline = time.monotonic() + 60
        while True:
            try:
                assert (mnt / rel).read_bytes() == expected
                break
            except OSError as exc:
                assert exc.errno == 5 and time.monotonic() < deadline, exc
        if failure:
            print("\nthe read gave EIO while S3 was down, and succeeded again after")


@pytest.mark.allow_log_warnings
def test_s3_down_gives_eio_then_recovers(thaw, debian_in_s3, gnu_tree, seaweed, tmp_path):
    with mount(thaw, debian_in_s3, tmp_path) as mnt:
        seaweed.stop()
        try:
            with pytest.raises(OSError) as e:
                (mnt / "usr" / "bin" / "bash").read_bytes()
            assert e.value.errno == 5
        finally:
            seaweed.start()
        assert read_once_the_store_answers(mnt / "usr" / "bin" / "bash") == (
            gnu_tree / "usr" / "bin" / "bash").read_bytes()
        assert stats(thaw, mnt)["retries"] > 0


def read_once_the_store_answers(path: Path) -> bytes:
    """The file's bytes, reading again while the read fails with EIO: SeaweedFS answers
    its S3 port before its volumes are back (500s for a moment), and a chunk that failed
    just now gets one short attempt. The harness's bound, not an assertion on time."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return path.read_bytes()
        except OSError as exc:
            assert exc.errno == errno.EIO and time.monotonic() < deadline, exc


@pytest.mark.allow_log_warnings
def test_corrupt_object_in_s3_is_eio(thaw, debian_in_s3, gnu_tree, tmp_path):
    import boto3

    from blobstore.image.images import open_image
    from blobstore.store.blobs import blob_key
    from blobstore.store.codec import encode_blob
    from blobstore.store.url import open_store

    _, manifest = open_image(open_store(debian_in_s3), "debian:12")
    victim = manifest.chunks[manifest.entry("usr/bin/bash").spans[0].chunk].id
    bucket, prefix = debian_in_s3[len("s3://"):].split("/", 1)
    boto3.client("s3").put_object(Bucket=bucket, Key=f"{prefix}/{blob_key(victim)}",
                                  Body=encode_blob(b"forged bytes"))
    with mount(thaw, debian_in_s3, tmp_path) as mnt:
        with pytest.raises(OSError) as e:
            (mnt / "usr" / "bin" / "bash").read_bytes()
        assert e.value.errno == 5
        assert (mnt / "etc" / "debian_version").read_text().startswith("12")


def test_a_chroot_and_a_container_read_files_through_passthrough(thaw, debian_in_s3,
                                                                 gnu_tree, tmp_path):
    """python3 and its libraries, once their bytes are on the node, are opened with FUSE
    passthrough; a chroot and `podman --rootfs DIR:O` (an overlay stacked on the mount)
    run from them, and the bytes they read are the image's."""
    python = "usr/bin/python3.11"
    with mount(thaw, debian_in_s3, tmp_path) as mnt:
        assert (mnt / python).read_bytes() == (gnu_tree / python).read_bytes()
        deadline = time.monotonic() + 60
        while stats(thaw, mnt)["passthrough_opens"] == 0:  # the file made, then opened
            assert (mnt / python).read_bytes() == (gnu_tree / python).read_bytes()
            assert time.monotonic() < deadline
        before = stats(thaw, mnt)["passthrough_opens"]
        digest = subprocess.run(["sha256sum", str(gnu_tree / python)], capture_output=True,
                                text=True, check=True).stdout.split()[0]
        script = ("import hashlib, sys; "
                  "print(hashlib.sha256(open(sys.executable, 'rb').read()).hexdigest())")
        out = subprocess.run(["chroot", str(mnt), f"/{python}", "-c", script],
                             capture_output=True, text=True, check=True).stdout
        assert out.strip() == digest
        run = subprocess.run([*PODMAN, "--rootfs", f"{mnt}:O", f"/{python}", "-c", script],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == digest
        assert stats(thaw, mnt)["passthrough_opens"] >= before + 2  # exec, then the read
