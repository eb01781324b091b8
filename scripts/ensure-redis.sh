#!/usr/bin/env bash
# Starts a local redis-server when nothing answers at the given URL (default localhost:6379).
set -euo pipefail
url="${1:-redis://127.0.0.1:6379/0}"
hostport="${url#*://}"; hostport="${hostport##*@}"; hostport="${hostport%%/*}"
host="${hostport%%:*}"; port="${hostport##*:}"
[ "$port" = "$hostport" ] && port=6379
ping() {
  timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port && printf 'PING\r\n' >&3 && head -c5 <&3 | grep -q PONG" 2>/dev/null
}
ping && exit 0
case "$host" in 127.0.0.1|localhost|::1) ;; *) echo "no Redis answers at $host:$port" >&2; exit 1;; esac
mkdir -p .run
echo "starting redis-server on port $port"
redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
  --dir "$PWD/.run" --logfile "$PWD/.run/redis.log" --pidfile "$PWD/.run/redis.pid"
for _ in $(seq 50); do ping && exit 0; sleep 0.1; done
echo "redis-server did not start; see .run/redis.log" >&2; exit 1
