#!/usr/bin/env bash
# The seed's allocation path (../shared/seeds/000_*: `gateway-pool.sh allocate|deallocate` and what
# Ganymede does around it), re-implemented for the bench's baseline. Kept as the seed works, on purpose:
#   allocate <org>:   walk the state files in `ls` order and take the first whose state is `ready`
#                     (no lock: the seed has none), `sed -i` it to allocated|<org>, one PowerDNS PATCH
#                     (org-<uuid> and *.org-<uuid>), one TLS `server` block per organization
#                     (conf.d/org-<uuid>.conf with its upstream), one `nginx -s reload`, then answer.
#   deallocate <org>: find the org's state file (grep), `sed -i` it back to ready, one PATCH deleting
#                     both names, remove the server block, one `nginx -s reload`.
# Differences, none of which slow it down: the state line's third field is the gateway's host:port (the
# bench's stand-in gateways differ by address, not port), the server listens on a unix socket (no port),
# and the API key goes to curl in a header file instead of the command line.
# Environment: POOL_DIR DOMAIN HOST_IP PDNS_API_URL PDNS_KEY_HEADER (file holding `X-API-Key: ...`)
#              CONF_DIR LISTEN CERT KEY NGINX_PREFIX NGINX_CONF
set -euo pipefail
CMD=${1:?usage: gateway-pool.sh allocate|deallocate <org-uuid>}
ORG_UUID=${2:?org uuid}
ORG_FQDN="org-${ORG_UUID}.${DOMAIN}"
ZONE_URL="${PDNS_API_URL}/api/v1/servers/localhost/zones/${DOMAIN}."

case "$CMD" in
  allocate)
    AVAILABLE_GW=$(ls ${POOL_DIR}/*.state 2>/dev/null | while read statefile; do
      STATE=$(cat "$statefile" | cut -d'|' -f2)
      if [ "$STATE" = "ready" ]; then
        basename "$statefile" .state
        break
      fi
    done | head -1)
    if [ -z "$AVAILABLE_GW" ]; then echo "No available gateways in pool" >&2; exit 1; fi
    GATEWAY_INFO=$(cat "${POOL_DIR}/${AVAILABLE_GW}.state")
    GW_HTTP=$(echo "$GATEWAY_INFO" | cut -d'|' -f3)
    GW_VPN_PORT=$(echo "$GATEWAY_INFO" | cut -d'|' -f4)
    sed -i "s/|ready|/|allocated|/" "${POOL_DIR}/${AVAILABLE_GW}.state"
    sed -i "s/|$/|${ORG_UUID}/" "${POOL_DIR}/${AVAILABLE_GW}.state"
    curl -sS -f -o /dev/null -X PATCH "$ZONE_URL" -H @"$PDNS_KEY_HEADER" -H "Content-Type: application/json" -d "{
      \"rrsets\": [
        {\"name\": \"${ORG_FQDN}.\", \"type\": \"A\", \"changetype\": \"REPLACE\", \"ttl\": 60,
         \"records\": [{\"content\": \"${HOST_IP}\", \"disabled\": false}]},
        {\"name\": \"*.${ORG_FQDN}.\", \"type\": \"A\", \"changetype\": \"REPLACE\", \"ttl\": 60,
         \"records\": [{\"content\": \"${HOST_IP}\", \"disabled\": false}]}
      ]}"
    cat > "${CONF_DIR}/org-${ORG_UUID}.conf" <<CONF
upstream org-${ORG_UUID}-gw {
    server ${GW_HTTP};
}
server {
    listen ${LISTEN} ssl;
    server_name ${ORG_FQDN} *.${ORG_FQDN};
    ssl_certificate ${CERT};
    ssl_certificate_key ${KEY};
    location / {
        proxy_pass http://org-${ORG_UUID}-gw;
        proxy_http_version 1.1;
        proxy_set_header Upgrade \$http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_set_header Host \$host;
        proxy_set_header X-Real-IP \$remote_addr;
        proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto https;
    }
}
CONF
    nginx -s reload -p "$NGINX_PREFIX" -c "$NGINX_CONF" 2>/dev/null
    echo "${AVAILABLE_GW}|${GW_HTTP}|${GW_VPN_PORT}"
    ;;
  deallocate)
    ALLOCATED_GW=$(grep -l "|${ORG_UUID}$" ${POOL_DIR}/*.state 2>/dev/null | xargs -r basename -s .state)
    if [ -z "$ALLOCATED_GW" ]; then echo "No gateway found for organization ${ORG_UUID}" >&2; exit 1; fi
    sed -i "s/|allocated|/|ready|/" "${POOL_DIR}/${ALLOCATED_GW}.state"
    sed -i "s/|${ORG_UUID}$/|/" "${POOL_DIR}/${ALLOCATED_GW}.state"
    curl -sS -f -o /dev/null -X PATCH "$ZONE_URL" -H @"$PDNS_KEY_HEADER" -H "Content-Type: application/json" -d "{
      \"rrsets\": [
        {\"name\": \"${ORG_FQDN}.\", \"type\": \"A\", \"changetype\": \"DELETE\"},
        {\"name\": \"*.${ORG_FQDN}.\", \"type\": \"A\", \"changetype\": \"DELETE\"}
      ]}"
    rm -f "${CONF_DIR}/org-${ORG_UUID}.conf"
    nginx -s reload -p "$NGINX_PREFIX" -c "$NGINX_CONF" 2>/dev/null
    echo "${ALLOCATED_GW}"
    ;;
  *) echo "unknown command $CMD" >&2; exit 2 ;;
esac
