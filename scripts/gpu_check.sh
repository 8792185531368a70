#!/usr/bin/env bash
# One-call GPU check (a machine with one NVIDIA GPU and PyTorch; TensorRT optional; no network).
# Runs from a checkout without installing: the package comes from src/. Writes gpu_check.json (--out).
#   bash scripts/gpu_check.sh            # run every step that this machine can run
#   bash scripts/gpu_check.sh --dry-run  # print the plan and exit 0
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m yolov9_qat.gpu_check "$@"
