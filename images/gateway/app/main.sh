#!/bin/bash
# Script runner shipped in every gateway build (app/main.sh):
#   app/main.sh -r bin/<script>.sh [args...]   run a script of this build with config.conf loaded
#   app/main.sh -l                             list the runnable scripts
set -euo pipefail
APP_DIR=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
export APP_DIR
# shellcheck source=config.conf
set -a; . "$APP_DIR/config.conf"; set +a   # exported: the scripts run in their own process

case "${1:-}" in
  -l) cd "$APP_DIR" && ls bin/*.sh lib/*.sh 2>/dev/null; exit 0 ;;
  -r) shift ;;
  *) echo "usage: $0 -r bin/<script>.sh [args...] | -l" >&2; exit 2 ;;
esac
script=${1:-}
[[ "$script" =~ ^(bin|lib)/[A-Za-z0-9._-]+\.sh$ ]] || { echo "refusing to run '$script' (bin/*.sh or lib/*.sh only)" >&2; exit 2; }
shift
exec bash "$APP_DIR/$script" "$@"
