import * as pulumi from '@pulumi/pulumi';
import * as docker from '@pulumi/docker';
import * as random from '@pulumi/random';
import { PORTS, devContainerName } from '../runtime/naming';
import type { GanymedeMode } from '../stack/config';
import type { BundledFile } from './runtime-bundle';
import {
  type EnvContainerBaseArgs,
  NET_ADMIN,
  STOP_GRACE_SECONDS,
  TUN_DEVICE,
  TYPE_PREFIX,
  envContainerArgs,
  envNetworkAttachment,
  envVar,
  roleLabels,
  secretEnvVar,
  tcpHealthcheck,
} from './common';

/** Mount points inside the dev container (docs/CONTRACTS.md "Mount points"). */
export const DEV_MOUNTS = {
  workspace: '/root/workspace',
  pgdata: '/var/lib/postgresql',
  dockerSocket: '/var/run/docker.sock',
  certs: '/etc/demiurge/tls',
  /** The tls volume: mkcert CAROOT in ca/ (the allocator mints dev org certificates from it), ACME account in acme/. */
  tlsState: '/var/lib/demiurge/tls',
  /** Where the dev container packs gateway builds for the build server. */
  builds: '/srv/builds',
} as const;

/** Stage-1 base certificate inside the dev container (the certs volume). */
/** Where the runtime bundles (api-server.js, gateway-pool.js, migrations/) are uploaded in the dev container. */
export const DEV_RUNTIME_DIR = '/opt/demiurge/runtime';
/** The runtime configuration every runtime process in the dev container reads (runtime/config). */
export const RUNTIME_CONFIG_DIR = '/etc/demiurge/runtime';
export const RUNTIME_CONFIG_PATH = `${RUNTIME_CONFIG_DIR}/config.json`;
export const RUNTIME_SECRETS_PATH = `${RUNTIME_CONFIG_DIR}/secrets.json`;

export const DEV_TLS_CERT_PATH = `${DEV_MOUNTS.certs}/fullchain.pem`;
export const DEV_TLS_KEY_PATH = `${DEV_MOUNTS.certs}/privkey.pem`;

/** Databases in the dev container's PostgreSQL (CONTRACTS: roles own their databases). */
export const DATABASES = {
  pdns: { name: 'pdns', user: 'pdns' },
  ganymede: { name: 'ganymede', user: 'ganymede' },
} as const;

export interface DevContainerArgs extends EnvContainerBaseArgs {
  volumes: {
    workspace: pulumi.Input<string>;
    pgdata: pulumi.Input<string>;
    certs: pulumi.Input<string>;
    tls: pulumi.Input<string>;
    builds: pulumi.Input<string>;
  };
  /** Host ports the stage-1 nginx (80/443 inside the container) is published on. */
  httpPort: number;
  httpsPort: number;
  /** Host path of the Docker socket on the Docker host. */
  dockerSocketPath: string;
  /** In-container paths of the stage-1 base certificate (written by the Tls component). */
  tlsCertPath: string;
  tlsKeyPath: string;
  /** Files uploaded into DEV_RUNTIME_DIR (a change replaces the container: the new code runs at once). */
  runtimeFiles: readonly BundledFile[];
  /** embedded: the entrypoint runs and supervises the API server; workspace: it does not. */
  ganymede: GanymedeMode;
}

/**
 * The main container: stage-1 nginx (all TLS), the API server (Ganymede) and
 * PostgreSQL (databases `ganymede` and `pdns`). The runtime bundles are
 * uploaded into it; its configuration (config.json, secrets.json) is written
 * by the RuntimeConfig component once the rest of the environment exists.
 */
export class DevContainer extends pulumi.ComponentResource {
  readonly container: docker.Container;
  readonly containerName: pulumi.Output<string>;
  /** Secret. */
  readonly postgresPassword: pulumi.Output<string>;
  /** Secret: password of role `pdns` (database `pdns`). */
  readonly pdnsDbPassword: pulumi.Output<string>;
  /** Secret: password of role `ganymede` (database `ganymede`). */
  readonly ganymedeDbPassword: pulumi.Output<string>;
  /** Secret: the allocator's database URL, by container name on the environment network. */
  readonly databaseUrl: pulumi.Output<string>;

  constructor(name: string, args: DevContainerArgs, opts?: pulumi.ComponentResourceOptions) {
    super(`${TYPE_PREFIX}:DevContainer`, name, {}, opts);
    const containerName = devContainerName(args.envName);
    const password = (purpose: string): pulumi.Output<string> =>
      pulumi.secret(
        new random.RandomPassword(`${name}-${purpose}-password`, { length: 32, special: false }, { parent: this }).result,
      );
    this.postgresPassword = password('postgres');
    this.pdnsDbPassword = password('pdns-db');
    this.ganymedeDbPassword = password('ganymede-db');

    this.container = new docker.Container(
      name,
      envContainerArgs(containerName, args.image, {
        labels: roleLabels(args.envName, 'dev'),
        envs: [
          envVar('ENV_NAME', args.envName),
          envVar('DOMAIN', args.domain),
          envVar('PUBLIC_IP', args.publicIp),
          secretEnvVar('POSTGRES_PASSWORD', this.postgresPassword),
          secretEnvVar('PDNS_DB_PASSWORD', this.pdnsDbPassword),
          secretEnvVar('GANYMEDE_DB_PASSWORD', this.ganymedeDbPassword),
          envVar('TLS_CERT_PATH', args.tlsCertPath),
          envVar('TLS_KEY_PATH', args.tlsKeyPath),
          envVar('GANYMEDE_MODE', args.ganymede),
          envVar('DEMIURGE_RUNTIME_DIR', DEV_RUNTIME_DIR),
          envVar('DEMIURGE_RUNTIME_CONFIG', RUNTIME_CONFIG_PATH),
        ],
        uploads: args.runtimeFiles.map((f) => ({ file: `${DEV_RUNTIME_DIR}/${f.path}`, content: f.content })),
        ports: [
          { internal: PORTS.stage1Http, external: args.httpPort, protocol: 'tcp' },
          { internal: PORTS.stage1Https, external: args.httpsPort, protocol: 'tcp' },
        ],
        networksAdvanced: envNetworkAttachment(args.networkName, containerName),
        volumes: devMounts(args),
        capabilities: NET_ADMIN,
        devices: [TUN_DEVICE],
        healthcheck: tcpHealthcheck([PORTS.stage1Https, PORTS.postgres], { startPeriod: '120s' }),
        wait: true,
        waitTimeout: 300,
        destroyGraceSeconds: STOP_GRACE_SECONDS,
      }),
      // Fixed name and ports: the old container must go before its replacement starts.
      { parent: this, provider: args.provider, deleteBeforeReplace: true },
    );
    this.containerName = this.container.name;
    const db = DATABASES.ganymede;
    this.databaseUrl = pulumi.secret(
      pulumi.interpolate`postgres://${db.user}:${this.ganymedeDbPassword}@${this.container.name}:${PORTS.postgres}/${db.name}`,
    );
    this.registerOutputs({ containerName: this.containerName, databaseUrl: this.databaseUrl });
  }
}

/** The dev container's volumes and the Docker socket, at the paths its image expects. */
function devMounts(args: DevContainerArgs): docker.types.input.ContainerVolume[] {
  return [
    { volumeName: args.volumes.workspace, containerPath: DEV_MOUNTS.workspace },
    { volumeName: args.volumes.pgdata, containerPath: DEV_MOUNTS.pgdata },
    { volumeName: args.volumes.certs, containerPath: DEV_MOUNTS.certs },
    { volumeName: args.volumes.tls, containerPath: DEV_MOUNTS.tlsState },
    { volumeName: args.volumes.builds, containerPath: DEV_MOUNTS.builds },
    { hostPath: args.dockerSocketPath, containerPath: DEV_MOUNTS.dockerSocket },
  ];
}
