#!/bin/bash
# Gateway infrastructure set-up run once per container start by the image's entrypoint
# (in the background: HTTP never waits for it). Today: the OpenVPN server for user containers.
# Missing openvpn, /dev/net/tun or NET_ADMIN only disables the VPN, with a log line.
set -uo pipefail
log() { echo "$(date -u +%FT%TZ) [reset-gateway] $*"; }

if [ "${VPN_ENABLED}" = no ]; then log "VPN disabled (VPN_ENABLED=no)"; exit 0; fi
command -v openvpn >/dev/null || { log "VPN skipped: openvpn is not installed"; exit 0; }
[ -c /dev/net/tun ] || { log "VPN skipped: /dev/net/tun missing (run with --device /dev/net/tun --cap-add NET_ADMIN)"; exit 0; }
[ -n "${GATEWAY_VPN_PORT:-}" ] || { log "VPN skipped: GATEWAY_VPN_PORT is not set"; exit 0; }

if [ -f "$VPN_PIDFILE" ] && kill -0 "$(cat "$VPN_PIDFILE")" 2>/dev/null; then
  log "OpenVPN already running (pid $(cat "$VPN_PIDFILE"))"; exit 0
fi

# A per-gateway CA + server certificate (EC keys: no slow DH parameter generation).
mkdir -p "$VPN_STATE_DIR"; chmod 700 "$VPN_STATE_DIR"; cd "$VPN_STATE_DIR"
if [ ! -f server.crt ]; then
  log "creating VPN CA and server certificate"
  openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
  openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=gateway-vpn-ca-${GATEWAY_ID:-$HOSTNAME}" -out ca.crt 2>/dev/null
  openssl ecparam -name prime256v1 -genkey -noout -out server.key 2>/dev/null
  openssl req -new -key server.key -subj "/CN=gateway-vpn-${GATEWAY_ID:-$HOSTNAME}" -out server.csr 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyAgreement\nextendedKeyUsage=serverAuth\n' > server.ext
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -sha256 -extfile server.ext -out server.crt 2>/dev/null
  rm -f server.csr server.ext
  chmod 600 ./*.key
fi
cat > server.conf <<CONF
port ${GATEWAY_VPN_PORT}
proto ${VPN_PROTO}
dev tun
topology subnet
server ${VPN_NETWORK} ${VPN_NETMASK}
ca ${VPN_STATE_DIR}/ca.crt
cert ${VPN_STATE_DIR}/server.crt
key ${VPN_STATE_DIR}/server.key
dh none
keepalive 10 60
persist-key
persist-tun
verb 3
CONF
if openvpn --config server.conf --daemon openvpn-gateway --writepid "$VPN_PIDFILE" --log "$VPN_LOG"; then
  sleep 1
  if [ -f "$VPN_PIDFILE" ] && kill -0 "$(cat "$VPN_PIDFILE")" 2>/dev/null; then
    log "OpenVPN listening on ${VPN_PROTO} ${GATEWAY_VPN_PORT} (log $VPN_LOG)"
    exit 0
  fi
fi
log "VPN skipped: OpenVPN failed to start (no NET_ADMIN?): $(tail -n 2 "$VPN_LOG" 2>/dev/null | tr '\n' ' ')"
exit 0
