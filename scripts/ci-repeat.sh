#!/usr/bin/env bash
# Repeats `.ci/run` on fresh clones of the current HEAD, the way CI runs it, and records each
# run's result and time: the check behind "the suite never flakes".
#
# Usage: scripts/ci-repeat.sh [--runs N] [--no-cache-first] [--load-run K] [--keep]
#   --runs N          number of consecutive runs (default 5); stops at the first failure
#   --no-cache-first  before run 1, remove every Docker image the suites build or fabricate
#                     (demiurge-* images, debian:bookworm-slim, node:20-bookworm-slim, docker:cli),
#                     so that run starts like a machine with no cached images
#   --load-run K      during run K, keep one core busy with a CPU-bound process (default: none)
#   --keep            keep the clones (default: each is removed after a passing run)
# Results: one line per run on stdout and in .ci-repeat/<timestamp>.log (logs of each run beside it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs=5 no_cache_first=0 load_run=0 keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --no-cache-first) no_cache_first=1; shift ;;
    --load-run) load_run=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "--runs needs a positive number" >&2; exit 2; }

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out="$ROOT/.ci-repeat/$stamp"
mkdir -p "$out"
summary="$out/summary.log"
commit=$(git -C "$ROOT" rev-parse --short HEAD)
say() { printf '%s\n' "$*" | tee -a "$summary"; }
say "ci-repeat $stamp: $runs run(s) of .ci/run on fresh clones of $commit"

hog_pid=""
stop_hog() { [ -z "$hog_pid" ] || { kill "$hog_pid" 2>/dev/null || true; wait "$hog_pid" 2>/dev/null || true; hog_pid=""; }; }
trap stop_hog EXIT

for i in $(seq 1 "$runs"); do
  clone=$(mktemp -d "/tmp/ci-repeat-$stamp-$i-XXXX")
  git clone -q "$ROOT" "$clone"
  git -C "$clone" checkout -q "$commit"
  notes=""
  if [ "$i" = 1 ] && [ "$no_cache_first" = 1 ] && command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    mapfile -t imgs < <(docker images --format '{{.Repository}}:{{.Tag}}' | grep -E '^(demiurge-[^:]+|debian:bookworm-slim|node:20-bookworm-slim|docker:cli)' || true)
    [ ${#imgs[@]} -eq 0 ] || docker rmi -f "${imgs[@]}" >/dev/null
    docker builder prune -af >/dev/null 2>&1 || true
    notes="$notes no cached images (removed ${#imgs[@]});"
  fi
  if [ "$i" = "$load_run" ]; then
    # One CPU-bound process (one core of two), for the whole run.
    node -e 'for (;;) { Math.sqrt(Math.random()); }' &
    hog_pid=$!
    notes="$notes one core kept busy (pid $hog_pid);"
  fi
  t0=$(date +%s)
  set +e
  (cd "$clone" && CI=true bash .ci/run </dev/null) >"$out/run-$i.log" 2>&1
  rc=$?
  set -e
  stop_hog
  secs=$(( $(date +%s) - t0 ))
  counts=$(grep -E '^\s+[0-9]+ (passing|failing|pending)' "$out/run-$i.log" | tr -s ' ' | tr '\n' ',' | sed 's/,$//')
  say "run $i: rc=$rc $((secs / 60)) min $((secs % 60)) s;$notes mocha:$counts (log $out/run-$i.log)"
  if [ "$rc" != 0 ]; then
    say "run $i FAILED; clone kept at $clone"
    exit 1
  fi
  [ "$keep" = 1 ] || rm -rf "$clone"
done
say "all $runs run(s) passed"
