#!/usr/bin/env bash
# Rebuild the installed pyfuse3 with what thaw needs from the kernel and libfuse that
# pyfuse3 3.5 does not expose, against the libfuse that scripts/libfuse.sh chose:
#
# - cached directory listings: an opendir handler may return its file handle with bit 63
#   set, and the reply then carries FOPEN_CACHE_DIR and FOPEN_KEEP_CACHE, so the kernel
#   answers repeated listings itself (a listing of 100k entries was ~4,000 round trips);
# - FUSE passthrough (libfuse >= 3.16, kernel >= 6.9): ``FileInfo.backing_id``, which the
#   open reply carries with FOPEN_PASSTHROUGH; FUSE_CAP_PASSTHROUGH asked for at init when
#   the operations set ``enable_passthrough``, with backing files on a plain file system
#   (libfuse tells the kernel the mount's own depth, one more than the backing depth: 1, so
#   overlayfs can still stack on the mount, which `podman --rootfs DIR:O` does); and
#   ``thaw_session_fd()``, the /dev/fuse descriptor a backing file is registered on;
# - a read's reply copied to the kernel without the GIL.
#
# A failure is an error: `make install` stops (no pyfuse3 that lacks these is left behind,
# and tests/test_mount.py fails where one is found). With --wheel, a wheel is written to
# DIR instead, linked to find libfuse in RPATH (the node image: docker/build.sh).
# Usage: scripts/pyfuse3.sh PYTHON [PKGCONFIG_DIR] [--wheel DIR RPATH]
set -euo pipefail
py=${1:?usage: $0 PYTHON [PKGCONFIG_DIR] [--wheel DIR RPATH]}
pcdir=${2:-}
wheels=""
if [ "${3:-}" = "--wheel" ]; then
    wheels=$(realpath -m "${4:?--wheel DIR RPATH}")
    rpath=${5:?--wheel DIR RPATH}
fi
version=$("$py" -c 'import importlib.metadata as m; print(m.version("pyfuse3"))')
revision=2  # of the patch below: a change to it rebuilds an installed pyfuse3
want="$(PKG_CONFIG_PATH="$pcdir" pkg-config --modversion fuse3)+thaw$revision"
if [ -z "$wheels" ] && "$py" - "$want" <<'PY'
import sys, pyfuse3
sys.exit(0 if getattr(pyfuse3, "THAW_PASSTHROUGH", None) == sys.argv[1] else 1)
PY
then
    exit 0  # already patched, against this libfuse
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" -m pip download -q --disable-pip-version-check --no-binary :all: --no-deps \
    "pyfuse3==$version" -d "$work" 2>&1 | grep -v "^WARNING: Location" || true
tar -xzf "$work"/pyfuse3-"$version".tar.gz -C "$work"
src="$work/pyfuse3-$version"
"$py" - "$src" "$want" <<'PY'
import sys
from pathlib import Path

src, libfuse = Path(sys.argv[1]), sys.argv[2]


def patch(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path.name} changed: {old!r} not found once"
    path.write_text(text.replace(old, new))


common = src / "Include" / "fuse_common.pxd"
patch(common, "from libc.stdint cimport uint64_t\n",
      "from libc.stdint cimport uint64_t, int32_t\n")
patch(common, "        unsigned int nonseekable\n",
      "        unsigned int nonseekable\n        unsigned int cache_readdir\n"
      "        int32_t backing_id\n")
patch(common, "        unsigned time_gran\n",
      "        unsigned time_gran\n        unsigned max_backing_stack_depth\n")
patch(common, "      FUSE_CAP_HANDLE_KILLPRIV\n",
      "      FUSE_CAP_HANDLE_KILLPRIV\n      FUSE_CAP_PASSTHROUGH\n")

handlers = src / "src" / "pyfuse3" / "handlers.pxi"
patch(handlers, "        c.fi.fh = await operations.opendir(c.ino, ctx)\n",
      "        c.fi.fh = await operations.opendir(c.ino, ctx)\n"
      "        if c.fi.fh >> 63:  # thaw: the kernel may cache this directory's listing\n"
      "            c.fi.fh = c.fi.fh & 0x7fffffffffffffff\n"
      "            c.fi.cache_readdir = 1\n"
      "            c.fi.keep_cache = 1\n")
patch(handlers, "    # Blocking rather than async, in case we decide to let the\n",
      "    if (getattr(operations, 'enable_passthrough', False) and\n"
      "        conn.capable & FUSE_CAP_PASSTHROUGH):  # thaw\n"
      "        conn.want |= FUSE_CAP_PASSTHROUGH\n"
      "        conn.max_backing_stack_depth = 0  # the mount itself: 1 deep\n\n"
      "    # Blocking rather than async, in case we decide to let the\n")
patch(handlers, """        PyObject_GetBuffer(buf, &pybuf, PyBUF_CONTIG_RO)
        ret = fuse_reply_buf(c.req, <const_char*> pybuf.buf, <size_t> pybuf.len)
        PyBuffer_Release(&pybuf)
""", """        PyObject_GetBuffer(buf, &pybuf, PyBUF_CONTIG_RO)
        req = c.req
        with nogil:  # thaw: the kernel copies the reply without holding the GIL
            ret = fuse_reply_buf(req, <const_char*> pybuf.buf, <size_t> pybuf.len)
        PyBuffer_Release(&pybuf)
""")
patch(handlers, """async def fuse_read_async (_Container c):
    cdef int ret
    cdef Py_buffer pybuf
""", """async def fuse_read_async (_Container c):
    cdef int ret
    cdef Py_buffer pybuf
    cdef fuse_req_t req
""")

init = src / "src" / "pyfuse3" / "__init__.pyx"
patch(init, "    cdef public bint nonseekable\n",
      "    cdef public bint nonseekable\n    cdef public int32_t backing_id\n")
patch(init, "    def __cinit__(self, fh=0, direct_io=0, keep_cache=1, nonseekable=0):\n",
      "    def __cinit__(self, fh=0, direct_io=0, keep_cache=1, nonseekable=0, backing_id=0):\n"
      "        self.backing_id = backing_id\n")
patch(init, "        if self.nonseekable:\n            out.nonseekable = 1\n"
      "        else:\n            out.nonseekable = 0\n",
      "        if self.nonseekable:\n            out.nonseekable = 1\n"
      "        else:\n            out.nonseekable = 0\n\n"
      "        out.backing_id = self.backing_id  # thaw: > 0 answers with FOPEN_PASSTHROUGH\n")
text = init.read_text()
if "int32_t" not in text.split("cdef class FileInfo")[0]:
    patch(init, "from libc.stdint cimport ", "from libc.stdint cimport int32_t, ")
init.write_text(init.read_text() + f'''

def thaw_session_fd():
    """The /dev/fuse descriptor of the mounted session (thaw registers backing files on it)."""
    return session_fd


THAW_CACHE_READDIR = True
THAW_PASSTHROUGH = {libfuse!r}  # the libfuse built against, and the patch's revision
''')
PY
libdir=$(PKG_CONFIG_PATH="$pcdir" pkg-config --variable=libdir fuse3)
if [ -n "$wheels" ]; then
    PKG_CONFIG_PATH="$pcdir" LDFLAGS="-Wl,-rpath,$rpath" \
        "$py" -m pip wheel -q --disable-pip-version-check --no-deps -w "$wheels" "$src" 2>&1 \
        | grep -v "^WARNING: Location" || true
    ls "$wheels"/pyfuse3-"$version"-*.whl >/dev/null
    echo "pyfuse3 $version wheel against libfuse $want, for libfuse in $rpath"
    exit 0
fi
PKG_CONFIG_PATH="$pcdir" LDFLAGS="-Wl,-rpath,$libdir" \
    "$py" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall \
    --no-binary pyfuse3 "$src" 2>&1 | grep -v "^WARNING: Location" || true
"$py" - "$want" <<'PY'
import sys, pyfuse3
assert pyfuse3.THAW_PASSTHROUGH == sys.argv[1], "pyfuse3 was not rebuilt"
assert pyfuse3.FileInfo(backing_id=7).backing_id == 7
PY
echo "pyfuse3 $version rebuilt against libfuse $want: cached readdir, passthrough, reply without the GIL"
