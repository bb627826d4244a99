#!/usr/bin/env bash
# Create .venv and install vditscope with its test tools.
# CPU machines: torch 2.13.0 (a CPU build where one is available locally).
# GPU machines: install the CUDA build of torch that fits your driver into .venv first, then run
# this script with VDITSCOPE_KEEP_TORCH=1 so it keeps that build.
# VDITSCOPE_EXTRAS picks the extras (default dev); VDITSCOPE_EXTRAS=dev,ray adds Ray for --executor ray.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if [ "${VDITSCOPE_KEEP_TORCH:-0}" != "1" ]; then
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi
.venv/bin/python -m pip install --quiet -e ".[${VDITSCOPE_EXTRAS:-dev}]"
.venv/bin/python -c "import torch, diffusers, vditscope; print('vditscope', vditscope.__version__, '| torch', torch.__version__, '| diffusers', diffusers.__version__, '| cuda', torch.cuda.is_available())"
