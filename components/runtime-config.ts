import * as pulumi from '@pulumi/pulumi';
import * as random from '@pulumi/random';
import * as command from '@pulumi/command';
import type { GatewaySpec } from '../runtime/inventory';
import { GANYMEDE_PORT, PORTS, ganymedeInternalUrl, ganymedePublicUrl } from '../runtime/naming';
import type { GanymedeMode, TlsMode } from '../stack/config';
import { TYPE_PREFIX } from './common';
import { DATABASES, RUNTIME_CONFIG_PATH, RUNTIME_SECRETS_PATH } from './dev-container';
import type { TlsRuntimeSettings } from './tls';
import { DEFAULT_HOST_HEALTH } from '../runtime/config/types';

/** How often the API server reconciles pool state with DNS and nginx, and how often the reaper runs. */
export const RECONCILE_INTERVAL_SECONDS = 60;
export const REAPER_INTERVAL_SECONDS = 30;
/** A gateway silent (no heartbeat) for this long is reaped: twice the seed's 5-minute idle rule. */
export const REAPER_SILENCE_SECONDS = 600;
/** Pool tables' schema in the `ganymede` database. */
export const POOL_SCHEMA = 'gateway_pool';
/** How long `pulumi up` waits for the built-in API server to answer /healthz after writing its configuration. */
export const API_WAIT_SECONDS = 180;

/**
 * Writes the runtime configuration into the dev container and (embedded mode)
 * restarts the API server so it reads it, then waits until it answers
 * /healthz. Values come only from the command's environment: the secrets file
 * travels on `docker exec -i`'s stdin, never on a command line, and is written
 * 0600 (owner root) through a temporary file, atomically.
 */
export const RUNTIME_CONFIG_SCRIPT = String.raw`set -euo pipefail
: "${'$'}{CONTAINER:?}" "${'$'}{CONFIG_JSON:?}" "${'$'}{SECRETS_JSON:?}" "${'$'}{CONFIG_PATH:?}" "${'$'}{SECRETS_PATH:?}" "${'$'}{GANYMEDE_MODE:?}"
if [ -n "${'$'}{DEMIURGE_DOCKER_HOST:-}" ]; then export DOCKER_HOST="$DEMIURGE_DOCKER_HOST"; fi
# install PATH MODE: stdin -> PATH in the container (temporary file, chmod, rename)
install_file() {
  docker exec -i -e TARGET="$1" -e MODE="$2" "$CONTAINER" sh -c \
    'set -e; umask 077; mkdir -p "$(dirname "$TARGET")"; chmod 755 "$(dirname "$TARGET")"; cat > "$TARGET.tmp"; chmod "$MODE" "$TARGET.tmp"; mv -f "$TARGET.tmp" "$TARGET"'
}
printf '%s' "$SECRETS_JSON" | install_file "$SECRETS_PATH" 600
printf '%s' "$CONFIG_JSON" | install_file "$CONFIG_PATH" 644
echo "wrote $CONFIG_PATH and $SECRETS_PATH in $CONTAINER"
if [ "$GANYMEDE_MODE" != embedded ]; then
  echo "ganymede: $GANYMEDE_MODE (the workspace's own Ganymede reads them)"
  exit 0
fi
# The entrypoint's supervisor restarts the API server at once (no back-off) when asked to.
docker exec "$CONTAINER" /usr/local/bin/dev-api-server restart
for ((i = 0; i < ${'$'}{API_WAIT_SECONDS:-180}; i++)); do
  if docker exec "$CONTAINER" curl -fsS -o /dev/null --max-time 3 "$API_HEALTH_URL" 2>/dev/null; then
    echo "API server answers $API_HEALTH_URL"
    exit 0
  fi
  sleep 1
done
echo "the API server in $CONTAINER did not answer $API_HEALTH_URL within ${'$'}{API_WAIT_SECONDS:-180} s; its last log lines:" >&2
docker logs --tail 40 "$CONTAINER" 2>&1 | grep -F '[api-server]' | tail -n 20 >&2 || true
exit 1
`;

export interface RuntimeConfigArgs {
  envName: string;
  domain: string;
  publicIp: string;
  ganymede: GanymedeMode;
  tlsMode: TlsMode;
  tlsRuntime: TlsRuntimeSettings;
  inventory: readonly GatewaySpec[];
  nginxConfDir: string;
  tlsCertPath: string;
  tlsKeyPath: string;
  userContainerNaming: string;
  /** How often the API server probes gateways on remote hosts (api.hostHealth.intervalSeconds). */
  hostHealthIntervalSeconds: number;
  powerDnsApiUrl: string;
  /** The dev container: its name, and the resource whose replacement re-writes the files. */
  devContainer: { name: pulumi.Input<string>; id: pulumi.Input<string> };
  /** Secrets. */
  databasePassword: pulumi.Input<string>;
  powerDnsApiKey: pulumi.Input<string>;
  /** Password of role `pdns` (PowerDNS's gpgsql database, in the dev container's PostgreSQL): the runtime writes organization records to its tables. */
  powerDnsDbPassword: pulumi.Input<string>;
  orgCertificateKey: pulumi.Input<string> | undefined;
  gatewayRegistrationTokens: pulumi.Input<Record<string, string>>;
  /** Docker host for the command (undefined: local default). */
  dockerHost?: string;
  /** What must exist before the API server (re)starts on the files, e.g. the zone and its records (its first reconcile). */
  after?: pulumi.Resource[];
}

/** config.json (docs: ENVRUN contract, version 1): everything non-secret a runtime process needs. */
export function runtimeConfigDocument(args: Omit<RuntimeConfigArgs, 'devContainer' | 'databasePassword' | 'powerDnsApiKey' | 'powerDnsDbPassword' | 'orgCertificateKey' | 'gatewayRegistrationTokens' | 'dockerHost' | 'ganymede' | 'after'>): Record<string, unknown> {
  return {
    version: 1,
    envName: args.envName,
    domain: args.domain,
    publicIp: args.publicIp,
    schema: POOL_SCHEMA,
    database: { host: '127.0.0.1', port: PORTS.postgres, database: DATABASES.ganymede.name, user: DATABASES.ganymede.user },
    // Records go straight to PowerDNS's tables (one statement per batch; docs/runtime.md "DNS records"); the API creates the zone and purges caches.
    powerdns: { apiUrl: args.powerDnsApiUrl, zone: args.domain, database: { host: '127.0.0.1', port: PORTS.postgres, database: DATABASES.pdns.name, user: DATABASES.pdns.user } },
    nginx: { confDir: args.nginxConfDir, tls: { certPath: args.tlsCertPath, keyPath: args.tlsKeyPath } },
    userContainerNaming: args.userContainerNaming,
    inventory: args.inventory.map((g) => ({ name: g.name, host: g.host, httpPort: g.httpPort, vpnPort: g.vpnPort })),
    tls: { mode: args.tlsMode, ...args.tlsRuntime },
    api: {
      listen: `0.0.0.0:${GANYMEDE_PORT}`,
      publicUrl: ganymedePublicUrl(args.domain),
      gatewayUrl: ganymedeInternalUrl(args.envName),
      reconcileIntervalSeconds: RECONCILE_INTERVAL_SECONDS,
      reaper: { intervalSeconds: REAPER_INTERVAL_SECONDS, silenceSeconds: REAPER_SILENCE_SECONDS },
      // A probe never outlasts its round.
      hostHealth: { ...DEFAULT_HOST_HEALTH, intervalSeconds: args.hostHealthIntervalSeconds, timeoutMs: Math.min(DEFAULT_HOST_HEALTH.timeoutMs, args.hostHealthIntervalSeconds * 1000) },
    },
    secretsFile: RUNTIME_SECRETS_PATH,
  };
}

/**
 * The runtime configuration of the environment (config.json + secrets.json in
 * the dev container, from the same values as the stack outputs) and the
 * operator token of the API server's /operator endpoints.
 */
export class RuntimeConfig extends pulumi.ComponentResource {
  /** Secret: bearer token of the API server's /operator/* endpoints. */
  readonly operatorToken: pulumi.Output<string>;
  readonly configJson: string;
  readonly command: command.local.Command;

  constructor(name: string, args: RuntimeConfigArgs, opts?: pulumi.ComponentResourceOptions) {
    super(`${TYPE_PREFIX}:RuntimeConfig`, name, {}, opts);
    this.operatorToken = pulumi.secret(
      new random.RandomPassword(`${name}-operator-token`, { length: 48, special: false }, { parent: this }).result,
    );
    this.configJson = `${JSON.stringify(runtimeConfigDocument(args), null, 2)}\n`;
    const secretsJson = pulumi.secret(
      pulumi
        .all([args.databasePassword, args.powerDnsApiKey, args.powerDnsDbPassword, this.operatorToken, args.orgCertificateKey ?? null, args.gatewayRegistrationTokens])
        .apply(([databasePassword, powerdnsApiKey, powerdnsDatabasePassword, operatorToken, orgCertificateKey, gatewayRegistrationTokens]) =>
          `${JSON.stringify({ databasePassword, powerdnsApiKey, powerdnsDatabasePassword, operatorToken, orgCertificateKey, gatewayRegistrationTokens }, null, 2)}\n`,
        ),
    );
    this.command = new command.local.Command(
      `${name}-install`,
      {
        create: RUNTIME_CONFIG_SCRIPT,
        interpreter: ['/bin/bash', '-c'],
        environment: {
          CONTAINER: args.devContainer.name,
          CONFIG_JSON: this.configJson,
          SECRETS_JSON: secretsJson,
          CONFIG_PATH: RUNTIME_CONFIG_PATH,
          SECRETS_PATH: RUNTIME_SECRETS_PATH,
          GANYMEDE_MODE: args.ganymede,
          API_HEALTH_URL: `http://127.0.0.1:${GANYMEDE_PORT}/healthz`,
          API_WAIT_SECONDS: String(API_WAIT_SECONDS),
          DEMIURGE_DOCKER_HOST: args.dockerHost ?? '',
        },
        // A new dev container (new image or runtime code) starts without the files: write them again.
        // Changed values (environment) re-run the same script as an update.
        triggers: [args.devContainer.id],
      },
      { parent: this, dependsOn: args.after ?? [] },
    );
    this.registerOutputs({ operatorToken: this.operatorToken });
  }
}
