#!/usr/bin/env bash
# Runs the web app (gunicorn on $PORT) and one worker in the foreground; Ctrl-C stops both.
set -euo pipefail
VENV="${VENV:-.venv}"
PORT="${PORT:-8000}"
# The address the web app listens on: this machine only unless BIND says otherwise (0.0.0.0).
BIND="${BIND:-127.0.0.1}"
export BIND PORT
if [ "${MODELS:-hub}" = "tiny" ]; then
  dir="${TINY_MODELS_DIR:-.cache/tiny-models}"
  [ -f "$dir/speech/config.json" ] || HF_HUB_OFFLINE=1 "$VENV/bin/python" -m worker.tiny_models --out "$dir"
  export CAPTION_MODEL="$PWD/$dir/caption" STORY_MODEL="$PWD/$dir/story" SPEECH_MODEL="$PWD/$dir/speech"
  export HF_HUB_OFFLINE=1
fi
# The web app signs its browser-session cookies with SECRET_KEY and will not start without one:
# make one the first time, in .env (which the settings read), unless the environment has one.
if [ -z "${SECRET_KEY:-}" ] && ! grep -qs '^SECRET_KEY=.' .env; then
  [ -s .env ] && [ -n "$(tail -c1 .env)" ] && echo >> .env  # end the last line first
  [ -e .env ] || (umask 077 && : > .env)
  echo "SECRET_KEY=$("$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(32))')" >> .env
  echo "up: wrote a new SECRET_KEY to .env"
fi
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
# One worker process per GPU: CUDA does not survive fork, so the solo pool runs jobs in the main process.
"$VENV/bin/celery" -A worker.app worker --pool solo --loglevel INFO &
pids+=($!)
# Every gunicorn setting lives in web/gunicorn_conf.py (it reads BIND, PORT, WEB_CONCURRENCY).
"$VENV/bin/gunicorn" -c web/gunicorn_conf.py "web.app:create_app()" &
pids+=($!)
case "$BIND" in 0.0.0.0|::|"[::]") host=127.0.0.1 ;; *) host="$BIND" ;; esac
case "$host" in *:*) host="[${host#[}" host="${host%]}]" ;; esac
echo "web: http://$host:$PORT  (Ctrl-C stops web and worker)"
wait -n "${pids[@]}"
