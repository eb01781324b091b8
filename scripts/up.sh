#!/usr/bin/env bash
# Runs the web app (gunicorn on $PORT), one worker and the webhooks worker in the foreground; Ctrl-C
# stops them all.
set -euo pipefail
VENV="${VENV:-.venv}"
PORT="${PORT:-8000}"
ENV_FILE="${ENV_FILE:-.env}"  # where this script keeps what it chose (the settings read .env)
# The address the web app listens on: this machine only unless BIND says otherwise (0.0.0.0).
BIND="${BIND:-127.0.0.1}"
export BIND PORT
if [ "${MODELS:-hub}" = "tiny" ]; then
  dir="${TINY_MODELS_DIR:-.cache/tiny-models}"
  [ -f "$dir/speech/config.json" ] || HF_HUB_OFFLINE=1 "$VENV/bin/python" -m worker.tiny_models --out "$dir"
  case "$dir" in /*) ;; *) dir="$PWD/$dir" ;; esac
  export CAPTION_MODEL="$dir/caption" STORY_MODEL="$dir/story" SPEECH_MODEL="$dir/speech"
  export HF_HUB_OFFLINE=1
fi
# The web app signs its browser-session cookies with SECRET_KEY and will not start without one:
# make one the first time, in .env (which the settings read), unless the environment has one.
if [ -z "${SECRET_KEY:-}" ] && ! grep -qs '^SECRET_KEY=.' "$ENV_FILE"; then
  [ -s "$ENV_FILE" ] && [ -n "$(tail -c1 "$ENV_FILE")" ] && echo >> "$ENV_FILE"  # end the last line first
  [ -e "$ENV_FILE" ] || (umask 077 && : > "$ENV_FILE")
  echo "SECRET_KEY=$("$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(32))')" >> "$ENV_FILE"
  echo "up: wrote a new SECRET_KEY to $ENV_FILE"
fi
# What this run uses goes to .env too, so that what reads .env later (`flask --app web.app keys
# create`, the next `make up`) talks to this Redis and this port.
save_setting() {  # NAME VALUE: replace the line, or add it
  local tmp
  [ -e "$ENV_FILE" ] || (umask 077 && : > "$ENV_FILE")
  grep -qsx "$1=$2" "$ENV_FILE" && return 0
  tmp="$(mktemp)"
  grep -v "^$1=" "$ENV_FILE" > "$tmp" || true
  echo "$1=$2" >> "$tmp"
  cat "$tmp" > "$ENV_FILE" && rm -f "$tmp"
  echo "up: saved $1=$2 to $ENV_FILE"
}
save_setting REDIS_URL "${REDIS_URL:-redis://127.0.0.1:6379/0}"
save_setting PORT "$PORT"
# Every `make up` using this Redis database shares its queue: say so when workers are already there.
"$VENV/bin/python" - <<'PY' || true
from shared.redis_conn import redis_client
from shared.settings import get_settings
from shared.jobs.workers import live_workers
settings = get_settings()
try:
    others = live_workers(redis_client(settings, socket_timeout=2))
except Exception:  # Redis not answering: the worker and web app say so themselves
    others = []
if others:
    print(f"up: warning: {len(others)} worker(s) already use {settings.redis_url}, another `make up` perhaps; "
          "they will share its queue and jobs. For a separate one: REDIS_URL=redis://127.0.0.1:6379/1 make up")
PY
# Each child gets its own process group (job control), so Ctrl-C reaches only this script, which
# stops them in order: no signal twice, no tracebacks from gunicorn's gevent processes.
set -m
pids=()
stop() {
  # A second Ctrl-C must not leave the workers printing over the prompt: this waits for them anyway.
  trap 'echo "up: still stopping (the worker hands a running job back first)"' INT TERM HUP
  echo "up: stopping"
  # The worker's TERM is a warm shutdown (a running job is handed back to the queue); QUIT is
  # gunicorn's quick shutdown, fine for a local server.
  [ -z "${worker:-}" ] || kill -TERM "$worker" 2>/dev/null || true
  [ -z "${hooks:-}" ] || kill -TERM "$hooks" 2>/dev/null || true
  [ -z "${web:-}" ] || kill -QUIT "$web" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "${pids[@]}" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  stop_redis
  exit 0
}
# The redis-server `make redis` started for this checkout (scripts/ensure-redis.sh: .run/redis.pid)
# stops with the rest, unless KEEP_REDIS=1; a Redis that was already running is never touched.
stop_redis() {
  local pid
  [ "${KEEP_REDIS:-0}" = "1" ] && return 0
  pid="$(cat .run/redis.pid 2>/dev/null)" || return 0
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null && echo "up: stopped the redis-server make up started (KEEP_REDIS=1 keeps it)"
  fi
  rm -f .run/redis.pid
}
trap stop INT TERM HUP
# One worker process per GPU: CUDA does not survive fork, so the solo pool runs jobs in the main process.
"$VENV/bin/celery" -A worker.app worker --pool solo --loglevel INFO &
worker=$!
pids+=("$worker")
# The webhooks worker (shared/webhooks/worker.py): light, no torch; threads, as deliveries mostly
# wait on the network. Its own node name, beside the worker's celery@host.
"$VENV/bin/celery" -A shared.webhooks.worker worker -Q webhooks --pool threads --concurrency 4 \
  --hostname "webhooks@%h" --loglevel INFO &
hooks=$!
pids+=("$hooks")
# Every gunicorn setting lives in web/gunicorn_conf.py (it reads BIND, PORT, WEB_CONCURRENCY).
"$VENV/bin/gunicorn" -c web/gunicorn_conf.py "web.app:create_app()" &
web=$!
pids+=("$web")
case "$BIND" in 0.0.0.0|::|"[::]") host=127.0.0.1 ;; *) host="$BIND" ;; esac
case "$host" in *:*) host="[${host#[}" host="${host%]}]" ;; esac
echo "web: http://$host:$PORT  (Redis: ${REDIS_URL:-redis://127.0.0.1:6379/0}; Ctrl-C stops web and workers)"
# Any one ending on its own ends them all (its error is above); the exit status is that one's.
status=0
wait -n "${pids[@]}" || status=$?
trap - INT TERM HUP
kill -TERM "${pids[@]}" 2>/dev/null || true
wait 2>/dev/null || true
stop_redis
exit "$status"
