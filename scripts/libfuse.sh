#!/usr/bin/env bash
# libfuse >= 3.16 for FUSE passthrough (the daemon answers an open with a backing file and
# the kernel serves read and mmap from it). Debian 13 ships 3.17 (libfuse3-dev): its
# pkg-config is used as it is. Debian 12 ships 3.14, so 3.17 is built from Debian's own
# source package (trixie's) into PREFIX (the venv), without touching the machine's apt
# configuration: apt-get reads a private source list and keeps its lists and downloads in a
# scratch directory (its -o Dir::... options); dpkg-source (dpkg-dev) unpacks it; meson and
# ninja come from PyPI into the build's own scratch venv. Its soname, libfuse3.so.4, does not
# clash with Debian 12's libfuse3.so.3, which fusermount3 and everything else keep using.
#
# Prints the pkg-config directory to build against (empty: the system's). Idempotent: a
# PREFIX that has it already is used as it is. Usage: scripts/libfuse.sh PREFIX PYTHON
set -euo pipefail
prefix=$(realpath -m "${1:?usage: $0 PREFIX PYTHON}")
py=${2:?usage: $0 PREFIX PYTHON}
pcdir="$prefix/lib/pkgconfig"
if pkg-config --atleast-version=3.16 fuse3 2>/dev/null; then
    echo ""  # the system's libfuse has passthrough
    exit 0
fi
if PKG_CONFIG_PATH="$pcdir" pkg-config --atleast-version=3.16 fuse3 2>/dev/null \
        && [ -e "$(PKG_CONFIG_PATH="$pcdir" pkg-config --variable=libdir fuse3)/libfuse3.so.4" ]; then
    echo "$pcdir"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
echo "deb-src http://deb.debian.org/debian trixie main" > "$work/sources.list"
apt=(apt-get -q -o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
     -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "Debug::NoLocking=1")
"${apt[@]}" update >&2
(cd "$work" && "${apt[@]}" source --download-only fuse3/trixie >&2)
dsc=$(ls "$work"/fuse3_*.dsc)
(cd "$work" && dpkg-source --no-check -x "$dsc" src >&2)
"$py" -m venv "$work/tools"
"$work/tools/bin/pip" install -q --disable-pip-version-check meson ninja >&2 2>&1 \
    | grep -v "^WARNING: Location" >&2 || true
export PATH="$work/tools/bin:$PATH"
(cd "$work/src" && meson setup build --prefix="$prefix" --libdir=lib --buildtype=release \
    -Dexamples=false -Dutils=false -Dtests=false >&2 && ninja -C build install >&2)
echo "$pcdir"
