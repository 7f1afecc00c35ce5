"""Decompression bombs: a push's memory and temporary space stay bounded whatever the ratio.

Each bomb is a tar holding one file of zeros, compressed about a thousandfold or more. The
push runs in a subprocess under a data-segment limit (``RLIMIT_DATA``: heap and private
mappings) that a streaming implementation fits in comfortably and one that holds the
decompressed bytes in memory does not.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import resource
import subprocess
import sys
import tarfile

import pytest
import zstandard

from .conftest import REPO
from .support import docker_archive, oci_layout, tmpfs

BOMB_BYTES = 512 << 20
LIMIT = 256 << 20  # well under the bomb, well over what a streaming push needs
_STEP = 8 << 20


def _tar_stream(write, size: int) -> None:
    info = tarfile.TarInfo("zeros")
    info.size, info.mtime = size, 1_700_000_000
    write(info.tobuf(tarfile.PAX_FORMAT))
    zeros = bytes(_STEP)
    for _ in range(size // _STEP):
        write(zeros)
    write(bytes(size % _STEP + (-size % tarfile.BLOCKSIZE) + 2 * tarfile.BLOCKSIZE))


def bomb(path, kind: str, size: int = BOMB_BYTES):
    with open(path, "wb") as raw:
        if kind == "zstd":
            with zstandard.ZstdCompressor(level=1).stream_writer(raw, closefd=False) as z:
                _tar_stream(z.write, size)
        elif kind == "gzip":
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as z:
                _tar_stream(z.write, size)
        else:
            with lzma.LZMAFile(raw, "wb", preset=0) as z:
                _tar_stream(z.write, size)
    return path


def limited_push(source, store, *, limit: int = LIMIT, env=None):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    return subprocess.run([sys.executable, "-m", "thaw", "--store", f"file://{store}", "push",
                           str(source), "bomb:v1", "--json"], capture_output=True, cwd=REPO,
                          preexec_fn=set_limit, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("kind", ["gzip", "zstd", "xz"])
def test_compressed_tar_bomb_pushes_in_bounded_memory(tmp_path, kind):
    source = bomb(tmp_path / f"bomb.tar.{kind}", kind)
    assert source.stat().st_size < BOMB_BYTES // 200
    proc = limited_push(source, tmp_path / "store")
    assert proc.returncode == 0, proc.stderr.decode()
    assert f"\"bytes\": {BOMB_BYTES}".encode() in proc.stdout


def test_bomb_layers_in_oci_and_docker_archives_push_in_bounded_memory(tmp_path):
    layer = bomb(tmp_path / "layer.tar.zst", "zstd").read_bytes()
    layout = oci_layout(tmp_path / "layout", [layer],
                        layer_type="application/vnd.oci.image.layer.v1.tar+zstd")
    proc = limited_push(layout, tmp_path / "store")
    assert proc.returncode == 0, proc.stderr.decode()
    gz = bomb(tmp_path / "layer.tar.gz", "gzip")
    archive = docker_archive(tmp_path / "image.docker.tar", [gz])
    proc = limited_push(archive, tmp_path / "store")
    assert proc.returncode == 0, proc.stderr.decode()


def test_the_limit_stops_a_push_that_holds_the_bomb_in_memory(tmp_path):
    """The limit is meaningful: a program that reads the bomb whole cannot run under it."""
    source = bomb(tmp_path / "bomb.tar.zst", "zstd", size=LIMIT)

    def set_limit():
        resource.setrlimit(resource.RLIMIT_DATA, (LIMIT, LIMIT))

    code = ("import sys, zstandard; d = zstandard.ZstdDecompressor(); "
            "d.decompressobj().decompress(open(sys.argv[1], 'rb').read())")
    proc = subprocess.run([sys.executable, "-c", code, str(source)], capture_output=True,
                          preexec_fn=set_limit)
    assert proc.returncode != 0 and b"MemoryError" in proc.stderr


@pytest.mark.mount
def test_no_room_to_unpack_is_one_line(tmp_path):
    """Temporary space that runs out is named, with what to do, and exits 3."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tf:
        info = tarfile.TarInfo("noise")
        payload = os.urandom(4 << 20)
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    source = tmp_path / "noise.tar.zst"
    source.write_bytes(zstandard.ZstdCompressor().compress(data.getvalue()))
    with tmpfs(tmp_path / "small", "1m") as small:
        proc = limited_push(source, tmp_path / "store", env={"TMPDIR": str(small)})
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert err.count("\n") == 1 and "no space left in" in err and "TMPDIR" in err
    assert not list((tmp_path / "store").glob("refs/**/v1"))
