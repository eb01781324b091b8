#!/usr/bin/env bash
# Installs the system packages the project needs, only where they are missing (Debian/Ubuntu).
set -euo pipefail
need=()
command -v ffmpeg >/dev/null || need+=(ffmpeg)            # MP3 encoding (pydub)
command -v redis-server >/dev/null || need+=(redis-server) # local queue when none runs
command -v chromium >/dev/null || need+=(chromium)         # the browser test
command -v docker-compose >/dev/null || need+=(docker-compose) # validates docker-compose.yml
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing system packages: ${need[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null \
  || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }
