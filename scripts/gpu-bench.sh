#!/usr/bin/env bash
# The GPU figures for issue 8, on a GPU machine with no model hub:
#   scripts/gpu-bench.sh [BATCHES] [RUNS]      e.g. scripts/gpu-bench.sh 1,64,256 3
# Builds full-size random-weight models (BLIP base, Qwen2.5-1.5B-Instruct, MMS-TTS-eng) into $MODELS
# once (about 4.1 GB on local disk, 73 s on 16 cores, kept while the machine is), then benches them on
# cuda. Wheels the machine lacks can be carried in $WHEELS (installed offline, without their
# dependencies, ahead of the machine's own packages); weights are never carried. The story model's
# decoding step compiles once per batch size while the bench loads (40-44 s each on an H200): with a
# 10-minute limit per command, bench two or three sizes per call. Run on 2026-12-04 on an H200 with
# torch 2.11 and WHEELS holding transformers 5.24.0, peft, pydantic(-core, -settings), pydub, uroman,
# imageio-ffmpeg 0.4.9 and their small dependencies (docs/benchmarks.md#gpu-throughput).
set -euo pipefail
BATCHES=${1:-1,8,32,64,128,256}
RUNS=${2:-3}
MODELS=${MODELS:-/tmp/narrator-full-size}
PYTHON=${PYTHON:-python3}
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [[ -n "${WHEELS:-}" ]]; then
  site=$(mktemp -d)
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$WHEELS"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! command -v ffmpeg >/dev/null; then  # pydub runs `ffmpeg`; imageio-ffmpeg's wheel carries one
  bin=$(mktemp -d)
  ln -s "$("$PYTHON" -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')" "$bin/ffmpeg"
  export PATH="$bin:$PATH"
fi
# Fail now, not after the build, on what the bench needs.
"$PYTHON" -c 'import torch, transformers, peft, pydub, pydantic_settings; assert torch.cuda.is_available()
print("torch", torch.__version__, "transformers", transformers.__version__, torch.cuda.get_device_name())'
if [[ ! -f "$MODELS/story/config.json" ]]; then
  time "$PYTHON" -m worker.tiny_models --full-size --out "$MODELS" --no-report
fi
time "$PYTHON" -m worker.bench --models "$MODELS" --device cuda --batches "$BATCHES" --runs "$RUNS" --styles none
