#!/usr/bin/env bash
# The one GPU measurement (issue #14), for a machine with CUDA where nothing can be downloaded:
# it uses that machine's python3 (with its CUDA torch, transformers, onnx, onnxruntime) and
# installs edgeclip itself without dependencies. Budget: under 8 minutes.
#   bash benchmarks/gpu_run.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || export PYTHONPATH="$PWD"
name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' A-Z' '-a-z' || true)
OUT=${1:-benchmarks/results/${name:-gpu}}
timeout 470 "$PY" -m benchmarks.gpu_run --out "$OUT"
echo "wrote $OUT"
