#!/usr/bin/env bash
# Installs the system packages the project needs, only where they are missing (Debian/Ubuntu).
#   run  (make up):   python3-venv, ffmpeg (MP3 encoding), redis-server (a local queue)
#   test (make test): those, plus chromium (the browser tests), docker-compose (compose check) and
#                     iproute2 (`ip netns`, the multi-host test)
set -euo pipefail
mode="${1:-run}"
need=()
python3 -c "import ensurepip, venv" 2>/dev/null || need+=(python3-venv)
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v redis-server >/dev/null || need+=(redis-server)
if [ "$mode" = test ]; then
  command -v chromium >/dev/null || need+=(chromium)
  command -v docker-compose >/dev/null || need+=(docker-compose)
  # `ip netns` for tests/test_scale.py (workers on separate hosts); slim images lack iproute2
  command -v ip >/dev/null || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || need+=(iproute2)
fi
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing system packages: ${need[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
install() { $sudo apt-get install -y -q --no-install-recommends "$@" >/dev/null; }
install "${need[@]}" 2>/dev/null || { $sudo apt-get update -q >/dev/null; install "${need[@]}"; } || {
  # One missing package (Ubuntu ships chromium as a snap) must not stop the others.
  for pkg in "${need[@]}"; do install "$pkg" || echo "warning: could not install $pkg" >&2; done
}
