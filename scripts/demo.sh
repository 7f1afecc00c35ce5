#!/usr/bin/env bash
# The demo: build a real Debian 12 root file system, push it into the default store (a local
# directory, no server), push it again (nothing uploaded), then look at it.
set -euo pipefail

cache="${XDG_CACHE_HOME:-$HOME/.cache}/thaw-demo"
rootfs="$cache/debian-12-python3.tar"
mkdir -p "$cache"
if [ ! -s "$rootfs" ]; then
    echo "== building a Debian 12 root file system with python3 (mmdebstrap, ~1 minute)"
    mmdebstrap --variant=minbase --include=python3 --format=tar --quiet \
        bookworm "$rootfs.tmp" http://deb.debian.org/debian
    mv "$rootfs.tmp" "$rootfs"
fi

echo "== thaw push $rootfs demo/debian:12"
thaw push "$rootfs" demo/debian:12 --json
echo "== the same push again uploads nothing"
thaw push "$rootfs" demo/debian:12 --json | grep -E '"(new_chunks|uploaded_bytes)"'
echo "== thaw ls"
thaw ls
echo "== thaw inspect demo/debian:12"
thaw inspect demo/debian:12
echo "== thaw cat demo/debian:12 /etc/debian_version"
thaw cat demo/debian:12 /etc/debian_version
echo "== thaw verify demo/debian:12"
thaw verify demo/debian:12
