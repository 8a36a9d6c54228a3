import * as pulumi from '@pulumi/pulumi';
import * as docker from '@pulumi/docker';
import * as random from '@pulumi/random';
import { ganymedeFqdn } from '../runtime/naming';
import type { BundledFile } from './runtime-bundle';
import {
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

/** One gateway of the pool (see stack/gateways.ts `planGateways`). */
export interface GatewayPoolMember {
  index: number;
  /** `gw-pool-<env>-<n>`: the container name and the resource name. */
  name: string;
  httpPort: number;
  vpnPort: number;
  /** Key into `GatewayPoolArgs.hosts`. */
  hostName: string;
}

/** The build server the gateways of one host fetch their build from. */
export interface GatewayPoolBuildServer {
  /** Its container: the gateways of the host are created after it. */
  resource: pulumi.Resource;
  /** BUILD_SERVER_URL: its name on the host's environment network (never a published port). */
  url: string;
}

/** A Docker host carrying part of the pool. */
export interface GatewayPoolHost {
  provider: docker.Provider;
  /** Gateway image id/digest on that host. */
  image: pulumi.Input<string>;
  /** Network the gateways join on that host (`demiurge-<env>`). */
  networkName: pulumi.Input<string>;
  /**
   * The build server on that host: the main host's for the main host, the host's own build
   * mirror (components/build-mirror.ts) for a remote host.
   */
  buildServer: GatewayPoolBuildServer;
  /**
   * GANYMEDE_URL of the gateways on that host: the API server by container name on the main
   * host's environment network, or through stage 1 (`https://ganymede.<domain>[:port]`) from a
   * remote host.
   */
  ganymedeUrl: string;
  /**
   * `/etc/hosts` entries of the gateways on that host, e.g. `ganymede.<domain>` → the main
   * host's public IP, so a remote gateway reaches stage 1 without depending on the host's
   * resolver (empty on the main host).
   */
  extraHosts?: readonly { host: string; ip: string }[];
  /**
   * Address the gateways' HTTP port is published on (the host's address stage 1 reaches it
   * at); undefined: every address of the host (the main host, where stage 1 uses the
   * environment network anyway). Stage 2 is plain HTTP: only stage 1 should reach it.
   */
  httpBindIp?: string;
}

export interface GatewayPoolArgs {
  envName: string;
  domain: string;
  members: readonly GatewayPoolMember[];
  hosts: Readonly<Record<string, GatewayPoolHost>>;
  /** The default app (runtime/gateway-app, bundled), run when no build is packed. */
  defaultApp: BundledFile;
  idleTimeoutSeconds: number;
  pushIntervalSeconds: number;
  /** PEM: extra CAs the gateways' Node.js trusts (NODE_EXTRA_CA_CERTS), e.g. a private ACME CA's root for GANYMEDE_URL through stage 1. */
  extraCaCertificates?: string;
}

/** Where the default app is uploaded in every gateway (gateway-supervise runs it when no build is packed). */
export const GATEWAY_DEFAULT_APP = '/usr/local/share/demiurge-gateway/default-app/main.js';
/** Where `extraCaCertificates` is uploaded in every gateway (NODE_EXTRA_CA_CERTS names it). */
export const GATEWAY_EXTRA_CA_FILE = '/usr/local/share/demiurge-gateway/extra-ca.pem';

/**
 * The gateway pool. Every resource is keyed by the gateway index, so growing
 * 3 → 5 adds two gateways and replaces none, and shrinking removes the highest
 * indices only.
 */
export class GatewayPool extends pulumi.ComponentResource {
  readonly containers: readonly docker.Container[];
  readonly containerNames: pulumi.Output<string[]>;
  /** Secret: each gateway's GATEWAY_TOKEN, by name; `gateway-pool sync` stores their hashes for /gateway/ready. */
  readonly registrationTokens: pulumi.Output<Record<string, string>>;

  constructor(name: string, args: GatewayPoolArgs, opts?: pulumi.ComponentResourceOptions) {
    super(`${TYPE_PREFIX}:GatewayPool`, name, {}, opts);
    const containers: docker.Container[] = [];
    const tokens: Record<string, pulumi.Output<string>> = {};
    for (const gw of [...args.members].sort((a, b) => a.index - b.index)) {
      const host = args.hosts[gw.hostName];
      if (host === undefined) throw new Error(`gateway ${gw.name}: unknown host ${gw.hostName}`);
      const token = pulumi.secret(
        new random.RandomPassword(`${gw.name}-token`, { length: 48, special: false }, { parent: this }).result,
      );
      tokens[gw.name] = token;
      containers.push(
        new docker.Container(
          gw.name,
          envContainerArgs(gw.name, host.image, {
            labels: roleLabels(args.envName, 'gateway'),
            envs: gatewayEnv(args, gw, host, token),
            uploads: [
              { file: GATEWAY_DEFAULT_APP, content: args.defaultApp.content },
              ...(args.extraCaCertificates === undefined ? [] : [{ file: GATEWAY_EXTRA_CA_FILE, content: args.extraCaCertificates }]),
            ],
            // The gateway listens on its published ports inside the container too, so the
            // stage-1 nginx reaches it at <container name>:httpPort on the environment
            // network and at <host IP>:httpPort from another host. One entry per port.
            ports: [
              { internal: gw.httpPort, external: gw.httpPort, ...(host.httpBindIp === undefined ? {} : { ip: host.httpBindIp }), protocol: 'tcp' },
              { internal: gw.vpnPort, external: gw.vpnPort, protocol: 'udp' },
            ],
            networksAdvanced: envNetworkAttachment(host.networkName, gw.name),
            ...(host.extraHosts === undefined || host.extraHosts.length === 0 ? {} : { hosts: host.extraHosts.map((h) => ({ host: h.host, ip: h.ip })) }),
            capabilities: NET_ADMIN,
            devices: [TUN_DEVICE],
            // Declared for `docker ps`/the allocator; no `wait`: a fresh environment has
            // no published build yet, and gateways announce readiness via /gateway/ready.
            healthcheck: tcpHealthcheck([gw.httpPort], { startPeriod: '60s' }),
            destroyGraceSeconds: STOP_GRACE_SECONDS,
          }),
          {
            parent: this,
            provider: host.provider,
            deleteBeforeReplace: true,
            dependsOn: [host.buildServer.resource],
          },
        ),
      );
    }
    this.containers = containers;
    this.containerNames = pulumi.all(containers.map((c) => c.name));
    this.registrationTokens = pulumi.secret(pulumi.all(tokens));
    this.registerOutputs({ containerNames: this.containerNames });
  }
}

/** One gateway's environment (its token as a secret). */
function gatewayEnv(args: GatewayPoolArgs, gw: GatewayPoolArgs['members'][number], host: GatewayPoolArgs['hosts'][string], token: pulumi.Output<string>): pulumi.Output<string>[] {
  return [
    envVar('ENV_NAME', args.envName),
    envVar('GATEWAY_HTTP_PORT', gw.httpPort),
    envVar('GATEWAY_VPN_PORT', gw.vpnPort),
    envVar('GATEWAY_ID', gw.name),
    secretEnvVar('GATEWAY_TOKEN', token),
    envVar('GANYMEDE_FQDN', ganymedeFqdn(args.domain)),
    envVar('DOMAIN', args.domain),
    // The build server on the gateway's own host (the main one or the host's build mirror).
    envVar('BUILD_SERVER_URL', host.buildServer.url),
    // The API server (gateway protocol): on the environment network, or through stage 1.
    envVar('GANYMEDE_URL', host.ganymedeUrl),
    envVar('GATEWAY_IDLE_TIMEOUT_MS', args.idleTimeoutSeconds * 1000),
    envVar('GATEWAY_PUSH_INTERVAL_MS', args.pushIntervalSeconds * 1000),
    ...(args.extraCaCertificates === undefined ? [] : [envVar('NODE_EXTRA_CA_CERTS', GATEWAY_EXTRA_CA_FILE)]),
  ];
}
