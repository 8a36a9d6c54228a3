#!/usr/bin/env bash
# The project's single test command (`npm test`), also what CI runs.
# Layers (design.md "Testing layers"): type check, unit (Pulumi mocks, pure logic),
# integration (real PostgreSQL, PowerDNS, nginx), the soak's CI mode, the bench's smoke mode,
# docker (real Docker engine: images, and the dev stack realised end to end).
# Set-up is idempotent: installs and starts what is missing (root, Debian 12).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n=== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }
t0=$(date +%s)

step "type check (tsc --noEmit, strict)"
npx tsc --noEmit -p tsconfig.json

step "unit tests"
npx mocha --config .mocharc.unit.json

step "services: PostgreSQL, PowerDNS, nginx"
bash scripts/test-services.sh up

step "integration tests (real PostgreSQL, PowerDNS, nginx)"
npx mocha --config .mocharc.integration.json

step "chaos soak, CI mode (own PostgreSQL and PowerDNS, faults injected)"
bash scripts/soak.sh --ci

step "benchmark smoke (npm run bench -- --quick; figures are not judged here)"
bash scripts/bench.sh --quick

step "docker engine and offline base images"
bash scripts/docker-setup.sh

step "docker tests (real Docker engine)"
npx mocha --config .mocharc.e2e.json

printf '\nall test layers passed in %ss\n' "$(( $(date +%s) - t0 ))"
