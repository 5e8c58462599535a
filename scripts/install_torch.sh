#!/usr/bin/env bash
# Install torch before the project so its "torch>=2.4" requirement is already met:
# a CUDA build on a machine with an NVIDIA GPU, the small CPU build everywhere else.
# Packages come from pip's configured index (pip config list); the only index added is PyTorch's CPU
# wheels, as an *extra* index, because the default index has no CPU-only build. Set TORCH_CPU_INDEX
# to use a mirror of it instead.
set -euo pipefail
PY="$1"
TORCH_VERSION="2.13.0"
TORCH_CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
if "$PY" -c "import torch" 2>/dev/null; then
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "NVIDIA GPU found: installing the CUDA build of torch"
  "$PY" -m pip install -q "torch>=2.4"
else
  echo "No NVIDIA GPU: installing the CPU build of torch"
  # The configured index (or a local find-links folder) may hold the CPU build already.
  "$PY" -m pip install -q "torch==${TORCH_VERSION}+cpu" 2>/dev/null \
    || "$PY" -m pip install -q "torch==${TORCH_VERSION}+cpu" --extra-index-url "$TORCH_CPU_INDEX"
fi
