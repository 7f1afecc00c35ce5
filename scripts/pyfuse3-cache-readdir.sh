#!/usr/bin/env bash
# Rebuild the installed pyfuse3 with one addition: an opendir handler may return its file
# handle with bit 63 set, and the directory's reply then carries FOPEN_CACHE_DIR and
# FOPEN_KEEP_CACHE, so the kernel answers repeated listings of it from its own cache.
# pyfuse3 3.5 exposes no fuse_file_info for opendir (thaw's images never change, and a
# listing of 100k entries costs ~4,000 round trips to the daemon without it).
#
# Optional and safe to fail: without it, thaw strips the bit itself and every listing goes
# to the daemon as before. Usage: scripts/pyfuse3-cache-readdir.sh PYTHON
set -euo pipefail
py=${1:?usage: $0 PYTHON}
version=$("$py" -c 'import importlib.metadata as m; print(m.version("pyfuse3"))')
if "$py" -c 'import pyfuse3, sys; sys.exit(0 if getattr(pyfuse3, "THAW_CACHE_READDIR", False) else 1)'; then
    exit 0  # already patched
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" -m pip download -q --disable-pip-version-check --no-binary :all: --no-deps \
    "pyfuse3==$version" -d "$work" 2>&1 | grep -v "^WARNING: Location" || true
tar -xzf "$work"/pyfuse3-"$version".tar.gz -C "$work"
src="$work/pyfuse3-$version"
"$py" - "$src" <<'PY'
import sys
from pathlib import Path

src = Path(sys.argv[1])
pxd = src / "Include" / "fuse_common.pxd"
text = pxd.read_text()
old = "        unsigned int nonseekable\n"
assert text.count(old) == 1, "fuse_common.pxd changed"
pxd.write_text(text.replace(old, old + "        unsigned int cache_readdir\n"))
handlers = src / "src" / "pyfuse3" / "handlers.pxi"
text = handlers.read_text()
old = "        c.fi.fh = await operations.opendir(c.ino, ctx)\n"
assert text.count(old) == 1, "handlers.pxi changed"
handlers.write_text(text.replace(old, old + (
    "        if c.fi.fh >> 63:  # thaw: the kernel may cache this directory's listing\n"
    "            c.fi.fh = c.fi.fh & 0x7fffffffffffffff\n"
    "            c.fi.cache_readdir = 1\n"
    "            c.fi.keep_cache = 1\n")))
init = src / "src" / "pyfuse3" / "__init__.pyx"
init.write_text(init.read_text() + "\nTHAW_CACHE_READDIR = True\n")
PY
"$py" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall "$src" 2>&1 \
    | grep -v "^WARNING: Location" || true
"$py" -c 'import pyfuse3, sys; sys.exit(0 if pyfuse3.THAW_CACHE_READDIR else 1)'
echo "pyfuse3 $version rebuilt with cached readdir"
