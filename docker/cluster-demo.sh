#!/usr/bin/env bash
# After `podman-compose up`: wait for the three nodes, push an image from node1, run a
# command from the lazily mounted image on node2, and show where its chunks came from.
set -euo pipefail
exec_in() { podman exec "docker_$1_1" "${@:2}"; }
for node in node1 node2 node3; do
    for _ in $(seq 60); do
        exec_in "$node" thaw stats /mnt/thaw >/dev/null 2>&1 && break
        sleep 1
    done
    exec_in "$node" thaw stats /mnt/thaw >/dev/null || {
        echo "$node did not come up; its last log lines:" >&2
        podman logs --tail 30 "docker_${node}_1" >&2 || true
        exit 1
    }
done
# A node answers before the store may (SeaweedFS starting, its name not yet in the
# network's DNS: a push once failed with "Name or service not known"), so wait for it.
for _ in $(seq 60); do
    exec_in node1 thaw ls >/dev/null 2>&1 && break
    sleep 1
done
exec_in node1 thaw ls >/dev/null || {
    echo "the store did not answer node1; its last log lines:" >&2
    podman logs --tail 30 docker_s3_1 >&2 || true
    exit 1
}
echo "== node1: thaw push /usr/lib/python3.11 demo:1"
exec_in node1 thaw push /usr/lib/python3.11 demo:1
echo "== node2: python3 from the lazily mounted image"
exec_in node2 sh -c 'PYTHONPATH=/mnt/thaw/refs/demo/1 python3 -S -c "import json, textwrap; print(\"json from\", json.__file__)"'
echo "== node2: thaw stats (tiers: where the chunks came from)"
exec_in node2 thaw stats /mnt/thaw
