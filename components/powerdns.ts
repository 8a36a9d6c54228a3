import * as pulumi from '@pulumi/pulumi';
import * as docker from '@pulumi/docker';
import * as random from '@pulumi/random';
import * as command from '@pulumi/command';
import {
  DNS_TIMING,
  PORTS,
  absolute,
  devContainerName,
  ganymedeFqdn,
  powerDnsApiUrl,
  powerDnsContainerName,
  zoneSoaContent,
} from '../runtime/naming';
import { ZONE_WRITE_SETTINGS } from '../runtime/powerdns-client';
import {
  type EnvContainerBaseArgs,
  STOP_GRACE_SECONDS,
  TYPE_PREFIX,
  envContainerArgs,
  envNetworkAttachment,
  envVar,
  roleLabels,
  secretEnvVar,
  tcpHealthcheck,
} from './common';
import { DATABASES } from './dev-container';

/** The zone's name server (NS and SOA MNAME), `ns1.<domain>`. */
export function nameServerFqdn(domain: string): string {
  return `ns1.${domain}`;
}

/** The zone's SOA (negative TTL DNS_TIMING.negativeTtlSeconds: see runtime/naming.ts). */
export function soaContent(domain: string): string {
  return zoneSoaContent(domain);
}

/**
 * Shared bash prelude of the PowerDNS API commands. Values come only from the
 * command's environment (never interpolated into the script), and the API key
 * is handed to curl through a 0600 header file, so it appears neither in the
 * Pulumi log nor in the process list.
 */
const API_PRELUDE = String.raw`set -euo pipefail
set -f
: "${'$'}{PDNS_API_URL:?}" "${'$'}{PDNS_API_KEY:?}" "${'$'}{ZONE:?}"
umask 077
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
printf 'X-API-Key: %s\n' "$PDNS_API_KEY" > "$workdir/auth"
# pdns METHOD PATH [JSON]: prints the HTTP status (000 if unreachable); body in $workdir/body
pdns() {
  local args=(-sS -o "$workdir/body" -w '%{http_code}' -X "$1" -H @"$workdir/auth" -H 'Accept: application/json')
  if [ $# -ge 3 ]; then args+=(-H 'Content-Type: application/json' --data-binary "$3"); fi
  curl "${'$'}{args[@]}" "${'$'}{PDNS_API_URL%/}/api/v1/servers/localhost$2" 2>/dev/null || true
}
fail() { echo "PowerDNS API $1 answered $2: $(cat "$workdir/body" 2>/dev/null || true)" >&2; exit 1; }
# wait_api SECONDS: prints the status of GET zone (200 or 404) once the API answers
wait_api() {
  local i code=000
  for ((i = 0; i < $1; i++)); do
    code=$(pdns GET "/zones/$ZONE?rrsets=false")
    case "$code" in 200|404|401|403) echo "$code"; return 0;; esac
    if ((i + 1 < $1)); then sleep 1; fi
  done
  echo "$code"
  return 1
}
`;

/** Creates the zone if it is missing (idempotent). */
export const ZONE_CREATE_SCRIPT = `${API_PRELUDE}
code=$(wait_api "\${PDNS_WAIT_SECONDS:-180}") || fail "at $PDNS_API_URL (unreachable)" "$code"
case "$code" in 401|403) fail "GET /zones/$ZONE (check the API key)" "$code";; esac
# ZONE_SETTINGS (a JSON object, runtime/powerdns-client.ts ZONE_WRITE_SETTINGS): set at creation and
# again on an existing zone, so a zone created before them gets them too (idempotent).
: "\${ZONE_SETTINGS:?}"
if [ "$code" = 404 ]; then
  code=$(pdns POST /zones "$(printf '{"name":"%s","kind":"Native","nameservers":["%s"],%s' "$ZONE" "$NAMESERVER" "\${ZONE_SETTINGS#\\{}")")
  case "$code" in 201|409) ;; *) fail "POST /zones" "$code";; esac
  echo "created zone $ZONE"
else
  code=$(pdns PUT "/zones/$ZONE" "$ZONE_SETTINGS")
  [ "$code" = 204 ] || fail "PUT /zones/$ZONE" "$code"
  echo "zone $ZONE exists (settings $ZONE_SETTINGS)"
fi
`;

/** Deletes the zone on destroy; best effort when PowerDNS is already gone. */
export const ZONE_DELETE_SCRIPT = `${API_PRELUDE}
code=$(wait_api "\${PDNS_WAIT_SECONDS:-20}") || { echo "warning: PowerDNS API unreachable at $PDNS_API_URL; zone $ZONE not deleted" >&2; exit 0; }
case "$code" in 401|403) fail "GET /zones/$ZONE (check the API key)" "$code";; 404) exit 0;; esac
code=$(pdns DELETE "/zones/$ZONE")
case "$code" in 204|404) echo "deleted zone $ZONE";; *) fail "DELETE /zones/$ZONE" "$code";; esac
`;

const RR_FUNCTIONS = String.raw`rr() { printf '{"name":"%s","type":"A","ttl":%s,"changetype":"REPLACE","records":[{"content":"%s","disabled":false}]}' "$1" "${'$'}{TTL:-60}" "$PUBLIC_IP"; }
del() { printf '{"name":"%s","type":"A","changetype":"DELETE"}' "$1"; }
`;

/**
 * REPLACEs the core A records (idempotent); removes the wildcard when disabled.
 * Also REPLACEs the SOA, so a zone created before the short negative TTL (or by
 * a PowerDNS whose default-soa-content differs) gets it too: SOA TTL and
 * minimum bound how long resolvers cache an NXDOMAIN (runtime/naming.ts DNS_TIMING).
 */
export const RECORDS_CREATE_SCRIPT = `${API_PRELUDE}${RR_FUNCTIONS}
code=$(wait_api "\${PDNS_WAIT_SECONDS:-180}") || fail "at $PDNS_API_URL (unreachable)" "$code"
[ "$code" = 200 ] || fail "GET /zones/$ZONE" "$code"
: "\${SOA_CONTENT:?}" "\${SOA_TTL:?}"
rrsets="$(printf '{"name":"%s","type":"SOA","ttl":%s,"changetype":"REPLACE","records":[{"content":"%s","disabled":false}]}' "$ZONE" "$SOA_TTL" "$SOA_CONTENT")"
for name in $A_RECORDS; do rrsets="$rrsets,$(rr "$name")"; done
if [ "$WILDCARD" = true ]; then rrsets="$rrsets,$(rr "$WILDCARD_NAME")"; else rrsets="$rrsets,$(del "$WILDCARD_NAME")"; fi
code=$(pdns PATCH "/zones/$ZONE" "{\\"rrsets\\":[$rrsets]}")
[ "$code" = 204 ] || fail "PATCH /zones/$ZONE" "$code"
echo "records of $ZONE point at $PUBLIC_IP"
`;

/** Removes the records this program owns; best effort when PowerDNS is already gone. */
export const RECORDS_DELETE_SCRIPT = `${API_PRELUDE}${RR_FUNCTIONS}
code=$(wait_api "\${PDNS_WAIT_SECONDS:-20}") || { echo "warning: PowerDNS API unreachable at $PDNS_API_URL; records of $ZONE not deleted" >&2; exit 0; }
case "$code" in 401|403) fail "GET /zones/$ZONE (check the API key)" "$code";; 404) exit 0;; esac
rrsets=""
for name in $A_RECORDS; do rrsets="$rrsets\${rrsets:+,}$(del "$name")"; done
if [ "$WILDCARD" = true ]; then rrsets="$rrsets,$(del "$WILDCARD_NAME")"; fi
code=$(pdns PATCH "/zones/$ZONE" "{\\"rrsets\\":[$rrsets]}")
case "$code" in 204|404) echo "removed records of $ZONE";; *) fail "PATCH /zones/$ZONE" "$code";; esac
`;

export interface PowerDnsArgs extends EnvContainerBaseArgs {
  /** The dev container, whose PostgreSQL (database `pdns`) is the gpgsql backend. */
  database: pulumi.Resource;
  /** Secret password of role `pdns`. */
  dbPassword: pulumi.Input<string>;
  /** Host port DNS is published on (tcp and udp). */
  dnsPort: number;
  /** Host address DNS is published on. */
  dnsBindIp: string;
  /** The API is published on 127.0.0.1:<apiHostPort> of the Docker host only; 0 = not published. */
  apiHostPort: number;
  /** URL at which this program's commands reach the API (default http://127.0.0.1:<apiHostPort>). */
  adminUrl: string;
  /** Also publish `*.<domain>` → publicIp. */
  wildcard: boolean;
}

/**
 * PowerDNS (gpgsql backend in the dev container's PostgreSQL) serving the
 * environment's zone, plus the zone and its core records, declared
 * idempotently through the HTTP API.
 */
export class PowerDns extends pulumi.ComponentResource {
  readonly container: docker.Container;
  /** Secret API key. */
  readonly apiKey: pulumi.Output<string>;
  /** API URL on the environment network (what the allocator uses). */
  readonly apiUrl: string;
  /** API URL this program's commands use. */
  readonly adminUrl: string;
  /** Absolute zone name, e.g. `demiurge.test.`. */
  readonly zone: string;
  readonly zoneCommand: command.local.Command;
  readonly recordsCommand: command.local.Command;

  constructor(name: string, args: PowerDnsArgs, opts?: pulumi.ComponentResourceOptions) {
    super(`${TYPE_PREFIX}:PowerDns`, name, {}, opts);
    const containerName = powerDnsContainerName(args.envName);
    this.zone = absolute(args.domain);
    this.apiUrl = powerDnsApiUrl(args.envName);
    this.adminUrl = args.adminUrl;
    this.apiKey = pulumi.secret(
      new random.RandomPassword(`${name}-api-key`, { length: 40, special: false }, { parent: this }).result,
    );

    this.container = new docker.Container(
      name,
      envContainerArgs(containerName, args.image, {
        labels: roleLabels(args.envName, 'pdns'),
        envs: [
          secretEnvVar('PDNS_API_KEY', this.apiKey),
          envVar('PDNS_DB_HOST', devContainerName(args.envName)),
          envVar('PDNS_DB_PORT', PORTS.postgres),
          envVar('PDNS_DB_NAME', DATABASES.pdns.name),
          envVar('PDNS_DB_USER', DATABASES.pdns.user),
          secretEnvVar('PDNS_DB_PASSWORD', args.dbPassword),
          envVar('PDNS_SOA_CONTENT', soaContent(args.domain)),
        ],
        ports: [
          { internal: PORTS.dns, external: args.dnsPort, ip: args.dnsBindIp, protocol: 'tcp' },
          { internal: PORTS.dns, external: args.dnsPort, ip: args.dnsBindIp, protocol: 'udp' },
          ...(args.apiHostPort === 0
            ? []
            : [{ internal: PORTS.powerDnsApi, external: args.apiHostPort, ip: '127.0.0.1', protocol: 'tcp' }]),
        ],
        networksAdvanced: envNetworkAttachment(args.networkName, containerName),
        healthcheck: tcpHealthcheck([PORTS.dns, PORTS.powerDnsApi]),
        wait: true,
        waitTimeout: 180,
        destroyGraceSeconds: STOP_GRACE_SECONDS,
      }),
      { parent: this, provider: args.provider, deleteBeforeReplace: true, dependsOn: [args.database] },
    );

    const environment = zoneScriptEnvironment(args, this.zone, this.apiKey);

    // A new zone name replaces (create the new, delete the old); other changes re-run create.
    const script = (suffix: string, create: string, del: string, after: pulumi.Resource): command.local.Command =>
      new command.local.Command(
        `${name}-${suffix}`,
        { create, delete: del, interpreter: ['/bin/bash', '-c'], environment, triggers: [this.zone] },
        { parent: this, dependsOn: [after] },
      );
    this.zoneCommand = script('zone', ZONE_CREATE_SCRIPT, ZONE_DELETE_SCRIPT, this.container);
    this.recordsCommand = script('records', RECORDS_CREATE_SCRIPT, RECORDS_DELETE_SCRIPT, this.zoneCommand);

    this.registerOutputs({ apiUrl: this.apiUrl, apiKey: this.apiKey, zone: this.zone });
  }
}

/** What the zone and record scripts read; only PDNS_API_KEY is secret (a secret Output), the rest stays readable in diffs. */
function zoneScriptEnvironment(args: PowerDnsArgs, zone: string, apiKey: pulumi.Output<string>): Record<string, pulumi.Input<string>> {
  return {
    PDNS_API_URL: args.adminUrl,
    PDNS_API_KEY: apiKey,
    ZONE: zone,
    NAMESERVER: absolute(nameServerFqdn(args.domain)),
    PUBLIC_IP: args.publicIp,
    A_RECORDS: [zone, absolute(ganymedeFqdn(args.domain)), absolute(nameServerFqdn(args.domain))].join(' '),
    WILDCARD_NAME: absolute(`*.${args.domain}`),
    WILDCARD: String(args.wildcard),
    SOA_CONTENT: soaContent(args.domain),
    SOA_TTL: String(DNS_TIMING.soaTtlSeconds),
    ZONE_SETTINGS: JSON.stringify(ZONE_WRITE_SETTINGS),
  };
}
