#!/usr/bin/env bash
# Runs the web app (gunicorn on $PORT) and one worker in the foreground; Ctrl-C stops both.
set -euo pipefail
VENV="${VENV:-.venv}"
PORT="${PORT:-8000}"
if [ "${MODELS:-hub}" = "tiny" ]; then
  dir="${TINY_MODELS_DIR:-.cache/tiny-models}"
  [ -f "$dir/speech/config.json" ] || HF_HUB_OFFLINE=1 "$VENV/bin/python" -m worker.tiny_models --out "$dir"
  export CAPTION_MODEL="$PWD/$dir/caption" STORY_MODEL="$PWD/$dir/story" SPEECH_MODEL="$PWD/$dir/speech"
  export HF_HUB_OFFLINE=1
fi
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
# One worker process per GPU: CUDA does not survive fork, so the solo pool runs jobs in the main process.
"$VENV/bin/celery" -A worker.app worker --pool solo --loglevel INFO &
pids+=($!)
"$VENV/bin/gunicorn" --bind "0.0.0.0:$PORT" --workers 2 --threads 4 --access-logfile - "web.app:create_app()" &
pids+=($!)
echo "web: http://127.0.0.1:$PORT  (Ctrl-C stops web and worker)"
wait -n "${pids[@]}"
