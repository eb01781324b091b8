#!/usr/bin/env bash
# The GPU figures in one go, for a GPU machine with no model hub (issue 8):
#   scripts/gpu-bench.sh [BATCHES] [RUNS]      e.g. scripts/gpu-bench.sh 1,8,32,64,128,256 3
# builds full-size random-weight models (BLIP base, Qwen2.5-1.5B-Instruct, MMS-TTS-eng) on local disk,
# then benches them on cuda. Wheels the machine lacks can be carried in $WHEELS (installed offline
# first); weights are never carried. The story model's compile runs once per batch size while the
# bench loads (about a minute each on an H100): bench fewer sizes per call when time is short.
set -euo pipefail
BATCHES=${1:-1,8,32,64,128,256}
RUNS=${2:-3}
MODELS=${MODELS:-/tmp/narrator-full-size}
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [[ -n "${WHEELS:-}" ]]; then
  "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" "$WHEELS"/*.whl
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if [[ ! -f "$MODELS/story/config.json" ]]; then
  time "$PYTHON" -m worker.tiny_models --full-size --out "$MODELS" --device cuda
fi
time "$PYTHON" -m worker.bench --models "$MODELS" --device cuda --batches "$BATCHES" --runs "$RUNS" --styles none
