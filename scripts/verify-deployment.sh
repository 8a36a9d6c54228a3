#!/usr/bin/env bash
# Runs the user-level checks of the stack e2e suite (test/e2e/stack.test.ts) against an environment
# that a real `pulumi up` deployed on this Docker host: DNS, TLS with the dev CA, allocation through
# the runtime allocator in the dev container, stage 1 -> gateway -> app, release, POOL_EXHAUSTED.
# Nothing is realised or destroyed; every organization the checks allocate is released again.
#   usage: scripts/verify-deployment.sh [stack]            (default: dev; needs the Pulumi CLI)
#          E2E_STACK_OUTPUTS=outputs.json scripts/verify-deployment.sh   (outputs saved elsewhere with
#          `pulumi stack output --json --show-secrets`)
# The gateways need a build: if the builds volume has none, a stand-in app is packed (replace it with
# `demiurge-gateway pack` + `reload`); E2E_PACK_STAND_IN=1 replaces an existing build too.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${E2E_STACK_OUTPUTS:-}" ]; then
  export E2E_PULUMI_STACK="${1:-dev}"
  command -v pulumi >/dev/null || { echo "pulumi CLI not found; save the outputs elsewhere and set E2E_STACK_OUTPUTS" >&2; exit 2; }
fi
exec npx mocha --config .mocharc.e2e.json --grep 'stack e2e'
