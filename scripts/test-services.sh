#!/usr/bin/env bash
# Installs (if missing) and starts the real services the integration tests,
# the benchmark and the soak run against: PostgreSQL 15, PowerDNS 4.7 (gpgsql
# backend, HTTP API) and the tools they use (nginx, mkcert, dig, curl, unbound, chromium, wrk).
#
# Idempotent, root on Debian 12, no systemd. Everything runs on non-default
# ports so it never collides with services a user already runs:
#   PostgreSQL 25432 (own cluster "demiurge_test"), PowerDNS DNS 25353 (udp+tcp),
#   PowerDNS API 28081 (loopback only).
# nginx is started per suite by the tests themselves (their configs differ).
#
# Usage: scripts/test-services.sh [up|down|status|pdns-start|pdns-stop|pdns-restart|pg-restart]
# Writes connection facts to .test-services/env (sourced by tests via test/helpers/services.ts).
#
# SERVICES_PROFILE=soak selects a second, fully separate set for the soak
# (scripts/soak.sh), which restarts and stops its services on purpose and must
# not disturb suites running against the default set at the same time:
#   PostgreSQL 25433 (cluster "demiurge_soak"), PowerDNS DNS 25354, API 28082,
#   state in .test-services/soak/ (facts in .test-services/soak/env).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_VERSION=15
# Test-only credentials: these services listen on loopback and hold only test data.
PG_PASSWORD=demiurge-test-password
PDNS_API_KEY=demiurge-test-api-key
PROFILE="${SERVICES_PROFILE:-test}"
case "$PROFILE" in
  test)
    STATE="$ROOT/.test-services"
    PG_CLUSTER=demiurge_test
    PG_PORT="${TEST_PG_PORT:-25432}"
    PDNS_DNS_PORT="${TEST_PDNS_DNS_PORT:-25353}"
    PDNS_API_PORT="${TEST_PDNS_API_PORT:-28081}"
    PG_USER=demiurge_test
    PG_DB=demiurge_test
    PDNS_DB=pdns_test
    ;;
  soak)
    STATE="$ROOT/.test-services/soak"
    PG_CLUSTER=demiurge_soak
    PG_PORT="${SOAK_PG_PORT:-25433}"
    PDNS_DNS_PORT="${SOAK_PDNS_DNS_PORT:-25354}"
    PDNS_API_PORT="${SOAK_PDNS_API_PORT:-28082}"
    PG_USER=demiurge_soak
    PG_DB=demiurge_soak
    PDNS_DB=pdns_soak
    ;;
  *) echo "SERVICES_PROFILE must be test or soak, got $PROFILE" >&2; exit 2 ;;
esac

log() { printf '[services %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "scripts/test-services.sh must run as root (it installs Debian packages and starts daemons)" >&2
    exit 1
  fi
}

install_packages() {
  local missing=()
  command -v pg_ctlcluster >/dev/null && [ -x /usr/lib/postgresql/$PG_VERSION/bin/postgres ] || missing+=(postgresql)
  command -v pdns_server >/dev/null || missing+=(pdns-server)
  [ -f /usr/share/pdns-backend-pgsql/schema/schema.pgsql.sql ] || missing+=(pdns-backend-pgsql)
  command -v nginx >/dev/null || missing+=(nginx-light)
  # Stage 1: the route table is a lua_shared_dict (lua-nginx-module, with NDK, lua-resty-core and LuaJIT
  # as dependencies; no reload per allocation); njs chooses certificates and renders stage 1's pages.
  [ -f /usr/lib/nginx/modules/ngx_http_js_module.so ] || missing+=(libnginx-mod-http-js)
  [ -f /usr/lib/nginx/modules/ngx_http_lua_module.so ] || missing+=(libnginx-mod-http-lua)
  command -v mkcert >/dev/null || missing+=(mkcert)
  command -v dig >/dev/null || missing+=(dnsutils)
  command -v curl >/dev/null || missing+=(curl)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v psql >/dev/null || missing+=(postgresql-client)
  # A real caching resolver for the negative-caching suite (test/integration/dns-negative-cache.test.ts);
  # the suite starts its own instance on a free loopback port (policy-rc.d keeps Debian's off :53).
  command -v unbound >/dev/null || missing+=(unbound)
  # A real browser for the stage-1 page checks (test/helpers/browser.ts, driven by npm playwright-core).
  command -v chromium >/dev/null || missing+=(chromium)
  # certutil: a browser profile that trusts a suite's CA (an NSS database), instead of ignoring certificate errors.
  command -v certutil >/dev/null || missing+=(libnss3-tools)
  # The bench's HTTP load generator (stage-1 routing overhead, docs/bench.md).
  command -v wrk >/dev/null || missing+=(wrk)
  if [ ${#missing[@]} -eq 0 ]; then return; fi
  log "installing: ${missing[*]}"
  # Without a policy-rc.d, Debian would start its own pdns on :53 and nginx on :80.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
  fi
  if [ ! -f "$STATE/.apt-updated" ]; then
    apt-get update -qq
    mkdir -p "$STATE" && touch "$STATE/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pg_running() { pg_lsclusters -h 2>/dev/null | awk -v c="$PG_CLUSTER" '$2==c && $4=="online"' | grep -q .; }

psql_admin() { su postgres -c "psql -v ON_ERROR_STOP=1 -qAt -p $PG_PORT $*"; }

start_postgres() {
  if ! pg_lsclusters -h | awk '{print $2}' | grep -qx "$PG_CLUSTER"; then
    log "creating PostgreSQL cluster $PG_CLUSTER on port $PG_PORT"
    pg_createcluster -p "$PG_PORT" "$PG_VERSION" "$PG_CLUSTER" -- --auth-local=peer --auth-host=scram-sha-256 >/dev/null
    # The soak opens many connections from several workers.
    cat > "/etc/postgresql/$PG_VERSION/$PG_CLUSTER/conf.d/demiurge.conf" <<EOF
listen_addresses = '127.0.0.1'
max_connections = 300
fsync = on
EOF
  fi
  # A cluster created by an older checkout may listen elsewhere (the ports moved below the
  # ephemeral range): set this checkout's port, restarting the cluster if it runs.
  local have_port
  have_port=$(pg_lsclusters -h | awk -v c="$PG_CLUSTER" '$2 == c {print $3}')
  if [ "$have_port" != "$PG_PORT" ]; then
    log "moving PostgreSQL cluster $PG_CLUSTER from port $have_port to $PG_PORT"
    pg_conftool "$PG_VERSION" "$PG_CLUSTER" set port "$PG_PORT"
    if pg_running; then pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" restart -m fast; fi
  fi
  if ! pg_running; then
    log "starting PostgreSQL cluster $PG_CLUSTER"
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start
  fi
  for _ in $(seq 1 50); do
    su postgres -c "pg_isready -q -p $PG_PORT" && break
    sleep 0.2
  done
  psql_admin -d postgres <<SQL >/dev/null
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN PASSWORD '$PG_PASSWORD';
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PDNS_DB') THEN
    CREATE ROLE $PDNS_DB LOGIN PASSWORD '$PG_PASSWORD';
  END IF;
END \$\$;
SQL
  # CREATE DATABASE cannot run inside DO; owners so PostgreSQL 15's locked-down public schema is writable.
  [ "$(psql_admin -d postgres -c "\"SELECT 1 FROM pg_database WHERE datname='$PG_DB'\"")" = 1 ] ||
    psql_admin -d postgres -c "\"CREATE DATABASE $PG_DB OWNER $PG_USER\""
  if [ "$(psql_admin -d postgres -c "\"SELECT 1 FROM pg_database WHERE datname='$PDNS_DB'\"")" != 1 ]; then
    psql_admin -d postgres -c "\"CREATE DATABASE $PDNS_DB OWNER $PDNS_DB\""
  fi
  if [ "$(PGPASSWORD=$PG_PASSWORD psql -qAt -h 127.0.0.1 -p "$PG_PORT" -U "$PDNS_DB" -d "$PDNS_DB" -c "SELECT to_regclass('public.domains') IS NOT NULL")" != t ]; then
    log "loading the PowerDNS schema into $PDNS_DB"
    PGPASSWORD=$PG_PASSWORD psql -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$PDNS_DB" -d "$PDNS_DB" \
      -f /usr/share/pdns-backend-pgsql/schema/schema.pgsql.sql >/dev/null
  fi
}

pdns_pid() { [ -f "$STATE/pdns/pdns.pid" ] && cat "$STATE/pdns/pdns.pid" || true; }
pdns_running() { local p; p=$(pdns_pid); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

write_pdns_config() {
  mkdir -p "$STATE/pdns/socket"
  cat > "$STATE/pdns/pdns.conf" <<EOF
launch=gpgsql
gpgsql-host=127.0.0.1
gpgsql-port=$PG_PORT
gpgsql-dbname=$PDNS_DB
gpgsql-user=$PDNS_DB
gpgsql-password=$PG_PASSWORD
local-address=127.0.0.1
local-port=$PDNS_DNS_PORT
api=yes
api-key=$PDNS_API_KEY
webserver=yes
webserver-address=127.0.0.1
webserver-port=$PDNS_API_PORT
webserver-allow-from=127.0.0.0/8
socket-dir=$STATE/pdns/socket
# The environment's negative TTL (runtime/naming.ts DNS_TIMING); test zones get it too.
default-soa-content=ns1.@ hostmaster.@ 0 10800 3600 604800 2
# Tests read answers right after API changes; the API purges changed names,
# these make negative answers (NXDOMAIN after release) immediate too.
cache-ttl=0
negquery-cache-ttl=0
query-cache-ttl=0
zone-cache-refresh-interval=0
loglevel=4
EOF
}

pdns_answering() {
  curl -fsS -m 2 -H "X-API-Key: $PDNS_API_KEY" "http://127.0.0.1:$PDNS_API_PORT/api/v1/servers/localhost" >/dev/null 2>&1
}

start_pdns() {
  write_pdns_config
  if pdns_running; then return; fi
  if pdns_answering; then
    # Another checkout on this machine may already run it (same ports, same test key): the
    # shared test profile reuses it. The soak stops and restarts its PowerDNS on purpose, so
    # it must own the process: a foreign one on its ports is replaced, never reused.
    if [ "$PROFILE" = test ]; then return; fi
    local foreign
    foreign=$(ss -ltnpH "sport = :$PDNS_API_PORT" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true)
    if [ -z "$foreign" ]; then
      echo "a PowerDNS this checkout did not start answers on 127.0.0.1:$PDNS_API_PORT and its pid cannot be found (ss); stop it first" >&2
      exit 1
    fi
    log "replacing PowerDNS pid $foreign (started by another checkout) on 127.0.0.1:$PDNS_API_PORT"
    kill "$foreign"
    for _ in $(seq 1 50); do kill -0 "$foreign" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$foreign" 2>/dev/null || true
  fi
  log "starting PowerDNS (dns 127.0.0.1:$PDNS_DNS_PORT, api 127.0.0.1:$PDNS_API_PORT)"
  setsid nohup pdns_server --config-dir="$STATE/pdns" --daemon=no --guardian=no --disable-syslog \
    >"$STATE/pdns/pdns.log" 2>&1 < /dev/null &
  echo $! > "$STATE/pdns/pdns.pid"
  for _ in $(seq 1 100); do
    if curl -fsS -H "X-API-Key: $PDNS_API_KEY" "http://127.0.0.1:$PDNS_API_PORT/api/v1/servers/localhost" >/dev/null 2>&1; then
      return
    fi
    pdns_running || { echo "PowerDNS exited; last log lines:" >&2; tail -20 "$STATE/pdns/pdns.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "PowerDNS API did not answer on 127.0.0.1:$PDNS_API_PORT; see $STATE/pdns/pdns.log" >&2
  exit 1
}

stop_pdns() {
  local p; p=$(pdns_pid)
  if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
    kill "$p"
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  fi
  rm -f "$STATE/pdns/pdns.pid"
}

write_env() {
  cat > "$STATE/env" <<EOF
TEST_PG_URL=postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB
TEST_PG_ADMIN_DB=postgres
TEST_PG_PORT=$PG_PORT
TEST_PDNS_API_URL=http://127.0.0.1:$PDNS_API_PORT
TEST_PDNS_API_KEY=$PDNS_API_KEY
TEST_PDNS_DNS_PORT=$PDNS_DNS_PORT
TEST_PDNS_DB_URL=postgres://$PDNS_DB:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PDNS_DB
TEST_SERVICES_SCRIPT=$ROOT/scripts/test-services.sh
EOF
  if [ "$PROFILE" != test ]; then echo "SERVICES_PROFILE=$PROFILE" >> "$STATE/env"; fi
}

cmd="${1:-up}"
case "$cmd" in
  up)
    need_root
    mkdir -p "$STATE"
    t0=$(date +%s%N)
    install_packages
    start_postgres
    start_pdns
    write_env
    log "ready in $(( ($(date +%s%N) - t0) / 1000000 )) ms (facts in ${STATE#"$ROOT/"}/env)"
    ;;
  down)
    stop_pdns
    pg_running && pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" stop || true
    log "stopped"
    ;;
  status)
    pg_running && echo "postgres: up ($PG_PORT)" || echo "postgres: down"
    pdns_running && echo "pdns: up (dns $PDNS_DNS_PORT, api $PDNS_API_PORT)" || echo "pdns: down"
    ;;
  pdns-start) start_pdns ;;
  pdns-stop) stop_pdns ;;
  pdns-restart) stop_pdns; start_pdns ;;
  pg-restart) pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" restart -m fast ;;
  *) echo "usage: $0 [up|down|status|pdns-start|pdns-stop|pdns-restart|pg-restart]" >&2; exit 2 ;;
esac
