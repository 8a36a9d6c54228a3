#!/usr/bin/env bash
# `npm run bench [-- --quick] [-- --no-readme]` (issues #8, #16): starts or reuses the
# real PostgreSQL and PowerDNS of the test set-up (scripts/test-services.sh,
# idempotent; installs what is missing as root on Debian 12), then runs the
# benchmark, which starts its own nginx instances (stage 1 on 29443/29099, its
# static-proxy comparison on 29444, the stand-in gateways on 29180, the seed
# baseline on a unix socket; wrk for row 5), its own PostgreSQL schema and
# PowerDNS zone, and drops them at the end.
# Results: bench/results/<date>.{json,md,svg} and latest.*; --quick writes to
# bench/results/quick/ (git-ignored) and never touches docs/bench.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$(date +%s)
bash scripts/test-services.sh up
npx ts-node --transpile-only bench/run.ts "$@"
echo "[bench] total $(( $(date +%s) - start )) s (services included)"
