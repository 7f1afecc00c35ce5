#!/usr/bin/env bash
# The demo: build a real Debian 12 root file system, push it into the default store (a local
# directory, no server), push it again (nothing uploaded), look at it, then mount it lazily
# and run python3 from it, showing how few of its bytes that fetched.
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

mnt="$cache/mnt"
mkdir -p "$mnt"
if grep -q " $mnt " /proc/self/mountinfo; then thaw umount "$mnt"; fi
trap 'thaw umount "$mnt" 2>/dev/null || true' EXIT
echo "== thaw mount demo/debian:12 $mnt (lazy: nothing is fetched yet)"
thaw mount demo/debian:12 "$mnt" --background --cache-dir "$cache/chunks"
echo "== chroot $mnt /usr/bin/python3 -c ..."
chroot "$mnt" /usr/bin/python3 -c 'import json, platform; print("hello from a lazy mount:", platform.python_version())'
echo "== thaw stats $mnt"
thaw stats "$mnt"
