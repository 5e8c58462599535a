#!/usr/bin/env bash
# Install torch before the project so its "torch>=2.4" requirement is already met:
# a CUDA build on a machine with an NVIDIA GPU, the small CPU build everywhere else.
set -euo pipefail
PY="$1"
if "$PY" -c "import torch" 2>/dev/null; then
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "NVIDIA GPU found: installing the CUDA build of torch"
  "$PY" -m pip install -q "torch>=2.4"
else
  echo "No NVIDIA GPU: installing the CPU build of torch"
  # A local wheel (pip find-links) first; otherwise PyTorch's CPU index.
  "$PY" -m pip install -q "torch==2.13.0+cpu" 2>/dev/null \
    || "$PY" -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
         --extra-index-url https://pypi.org/simple
fi
