#!/usr/bin/env bash
# The soak (issue #9): allocator workers under injected faults, invariants checked throughout.
#   npm run soak -- --ops 20000     full run (>= 52 faults of every kind)
#   bash scripts/soak.sh --ci        CI mode: ~1,000 operations, >= 6 faults of every kind, < 3 min
# It starts its OWN PostgreSQL cluster and PowerDNS (SERVICES_PROFILE=soak: ports 25433, 25354/28082)
# and its own stage-1 nginx (30443, status 30099), because it restarts and stops them on purpose.
# Options: see soak/run.ts (--workers, --lanes, --pool, --orgs, --faults-per-kind, --lease-ms, --seed).
# Exit status: 0 with zero violations, 1 with violations, 2 if the soak itself failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The soak restarts PowerDNS and PostgreSQL ~100 times each. Their ports (like every fixed
# port of the test set-up) lie below Linux's default ephemeral range (32768-60999), so an
# outgoing connection can never hold one as its source port; when they were at 55354 that
# happened (PowerDNS could not bind for ~50 s). On a machine whose ephemeral range is wider,
# reserving the soak's ports (only these; existing reservations are kept) has the same effect.
reserve_ports() {
  local f=/proc/sys/net/ipv4/ip_local_reserved_ports cur add=() parts=() p part lo hi found
  cur=$(cat "$f" 2>/dev/null) || return 0
  for p in 25354 25433 28082 30099 30443; do
    found=0
    IFS=, read -ra parts <<< "$cur"
    for part in "${parts[@]}"; do
      [ -n "$part" ] || continue
      lo=${part%-*}; hi=${part#*-}
      if [ "$p" -ge "$lo" ] && [ "$p" -le "$hi" ]; then found=1; break; fi
    done
    [ "$found" = 1 ] || add+=("$p")
  done
  [ ${#add[@]} -eq 0 ] && return 0
  local joined; joined=$(IFS=,; echo "${add[*]}")
  echo "${cur:+$cur,}$joined" > "$f" 2>/dev/null ||
    echo "[soak] warning: could not reserve ports ${joined} (a PowerDNS restart may then fail to bind)" >&2
}
reserve_ports

SERVICES_PROFILE=soak bash scripts/test-services.sh up
exec npx ts-node --transpile-only soak/run.ts "$@"
