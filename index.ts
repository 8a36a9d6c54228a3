/**
 * The Demiurge environment: one stack per environment (Pulumi.<stack>.yaml).
 *
 * Configuration is read and validated once, before any resource is declared;
 * components receive typed arguments and never read configuration themselves.
 * The stack outputs are the hand-off to the runtime allocator (runtime/).
 */
import * as pulumi from '@pulumi/pulumi';
import * as docker from '@pulumi/docker';
import { loadStackConfig, type ImageKey } from './stack/config';
import { gatewayInventory as toInventory, planGateways } from './stack/gateways';
import {
  BuildMirror,
  BuildServer,
  ContainerImage,
  DEV_MOUNTS,
  DEV_TLS_CERT_PATH,
  DEV_TLS_KEY_PATH,
  DevContainer,
  RUNTIME_CONFIG_PATH,
  EnvironmentNetwork,
  GatewayPool,
  NamedVolumes,
  PowerDns,
  RuntimeConfig,
  Tls,
  type GatewayPoolHost,
} from './components';
import { bundleRuntimeEntry, plainFile, runtimeMigrations } from './components/runtime-bundle';
import { ACME_CA_FILE_NAME } from './components/tls';
import type { GatewaySpec } from './runtime/inventory';
import {
  buildServerUrl,
  ganymedeFqdn,
  ganymedeInternalUrl,
  ganymedePublicUrl,
  ganymedeStage1Url,
  imageName,
  networkName as envNetworkName,
} from './runtime/naming';

/** Directory of the stage-1 nginx the allocator owns (docs/CONTRACTS.md). */
const NGINX_CONF_DIR = '/etc/nginx/demiurge';

// 1. Configuration: throws (listing every problem) before anything is declared.
const cfg = loadStackConfig();
const plan = planGateways(cfg);
const env = cfg.envName;

// The runtime, bundled from this checkout (esbuild, deterministic): a change to runtime/ changes
// exactly the containers that carry the changed bundle.
const devRuntimeFiles = [
  bundleRuntimeEntry('api-server.js'),
  bundleRuntimeEntry('gateway-pool.js'),
  ...runtimeMigrations(),
  // The allocator's AcmeIssuer (organization certificates) trusts the ACME server as the renewer does.
  ...(cfg.tls.mode === 'letsencrypt' && cfg.tls.acmeCaCertificates !== undefined ? [plainFile(ACME_CA_FILE_NAME, cfg.tls.acmeCaCertificates)] : []),
];
const gatewayDefaultApp = bundleRuntimeEntry('gateway-app.js');
const renewCli = bundleRuntimeEntry('tls-renew.js');

// 2. The environment's Docker host: network, volumes, images.
const mainProvider = new docker.Provider('docker-main', { host: cfg.dockerHost });
const network = new EnvironmentNetwork('network', { envName: env, provider: mainProvider });
const volumes = new NamedVolumes('volumes', {
  envName: env,
  provider: mainProvider,
  retainData: cfg.retainDataVolumes,
});
const image = (key: ImageKey, provider: docker.Provider, resourceName = `image-${key}`): ContainerImage =>
  new ContainerImage(resourceName, { imageName: imageName(env, key), source: cfg.images[key], provider });

const devImage = image('dev', mainProvider);

// 3. Dev container (stage-1 nginx, Ganymede, PostgreSQL).
const dev = new DevContainer('dev', {
  envName: env,
  domain: cfg.domain,
  publicIp: cfg.publicIp,
  provider: mainProvider,
  image: devImage.ref,
  networkName: network.name,
  volumes: volumes.names,
  httpPort: cfg.stage1HttpPort,
  httpsPort: cfg.stage1HttpsPort,
  dockerSocketPath: cfg.dockerSocketPath,
  tlsCertPath: DEV_TLS_CERT_PATH,
  tlsKeyPath: DEV_TLS_KEY_PATH,
  runtimeFiles: devRuntimeFiles,
  ganymede: cfg.ganymede,
});

// 4. PowerDNS with the zone and its core records.
const pdns = new PowerDns('pdns', {
  envName: env,
  domain: cfg.domain,
  publicIp: cfg.publicIp,
  provider: mainProvider,
  image: image('pdns', mainProvider).ref,
  networkName: network.name,
  database: dev.container,
  dbPassword: dev.pdnsDbPassword,
  dnsPort: cfg.dnsPort,
  dnsBindIp: cfg.dnsBindIp,
  apiHostPort: cfg.powerDnsApiHostPort,
  adminUrl: cfg.powerDnsAdminUrl,
  wildcard: cfg.dnsWildcard,
});

// 5. Build server (environment network only).
const buildServer = new BuildServer('build-server', {
  envName: env,
  provider: mainProvider,
  image: image('build-server', mainProvider).ref,
  networkName: network.name,
  buildsVolume: volumes.names.builds,
});

// 6. Gateway pool, possibly spread over several Docker hosts. A remote host gets its own network,
//    images and build mirror (builds volume + build server, unpublished: `pack --stack` fills every
//    host's volume); its gateways call the API server back through stage 1 at publicIp, and publish
//    their HTTP port on the host address stage 1 reaches them at.
const poolHosts: Record<string, GatewayPoolHost> = {};
let mainGatewayImage: ContainerImage | undefined;
for (const host of cfg.gatewayHosts) {
  if (host.kind === 'main') {
    mainGatewayImage = mainGatewayImage ?? image('gateway', mainProvider);
    poolHosts[host.name] = {
      provider: mainProvider,
      image: mainGatewayImage.ref,
      networkName: network.name,
      buildServer: { resource: buildServer.container, url: buildServerUrl(env) },
      ganymedeUrl: ganymedeInternalUrl(env),
    };
  } else {
    const provider = new docker.Provider(`docker-${host.name}`, { host: host.dockerHost });
    const hostNetwork = new EnvironmentNetwork(`network-${host.name}`, { envName: env, provider });
    const mirror = new BuildMirror(`build-mirror-${host.name}`, {
      envName: env,
      provider,
      image: image('build-server', provider, `image-build-server-${host.name}`).ref,
      networkName: hostNetwork.name,
    });
    poolHosts[host.name] = {
      provider,
      image: image('gateway', provider, `image-gateway-${host.name}`).ref,
      networkName: hostNetwork.name,
      buildServer: { resource: mirror.server.container, url: mirror.url },
      ganymedeUrl: ganymedeStage1Url(cfg.domain, cfg.stage1HttpsPort),
      extraHosts: [{ host: ganymedeFqdn(cfg.domain), ip: cfg.publicIp }],
      httpBindIp: host.ip,
    };
  }
}
const pool = new GatewayPool('gateway-pool', {
  envName: env,
  domain: cfg.domain,
  members: plan,
  hosts: poolHosts,
  defaultApp: gatewayDefaultApp,
  idleTimeoutSeconds: cfg.gatewayIdleTimeoutSeconds,
  pushIntervalSeconds: cfg.gatewayPushIntervalSeconds,
  extraCaCertificates: cfg.gatewayExtraCaCertificates,
});

// 7. Stage-1 TLS: the renewer container issues/renews the base certificate into the certs volume
//    and reloads the dev container's nginx; the dev CA / ACME account live on the tls volume.
const tls = new Tls('tls', {
  envName: env,
  domain: cfg.domain,
  tls: cfg.tls,
  provider: mainProvider,
  // The dev image's id: the renewer runs the same image (Node.js, mkcert, lego, docker CLI). Taken from
  // the image, not from the dev container, so replacing the dev container (new runtime code) leaves it alone.
  image: devImage.ref,
  networkName: network.name,
  volumes: { certs: volumes.names.certs, tls: volumes.names.tls },
  devContainer: { name: dev.containerName, resource: dev.container },
  certPath: DEV_TLS_CERT_PATH,
  keyPath: DEV_TLS_KEY_PATH,
  certsMount: DEV_MOUNTS.certs,
  dockerSocketPath: cfg.dockerSocketPath,
  dockerHost: cfg.dockerHost,
  renewCli,
  powerDns:
    cfg.tls.mode === 'letsencrypt'
      ? { apiUrl: pdns.apiUrl, apiKey: pdns.apiKey, ready: [pdns.recordsCommand] }
      : undefined,
});

// 8. The runtime configuration in the dev container (config.json, secrets.json) from the same values
//    as the outputs below; in embedded mode the API server is restarted on it and answers /healthz.
const inventory = toInventory(plan);
const runtimeConfig = new RuntimeConfig('runtime-config', {
  envName: env,
  domain: cfg.domain,
  publicIp: cfg.publicIp,
  ganymede: cfg.ganymede,
  tlsMode: cfg.tls.mode,
  tlsRuntime: tls.runtime,
  inventory,
  nginxConfDir: NGINX_CONF_DIR,
  tlsCertPath: DEV_TLS_CERT_PATH,
  tlsKeyPath: DEV_TLS_KEY_PATH,
  userContainerNaming: cfg.userContainerNaming,
  hostHealthIntervalSeconds: cfg.hostHealthIntervalSeconds,
  powerDnsApiUrl: pdns.apiUrl,
  devContainer: { name: dev.containerName, id: dev.container.id },
  databasePassword: dev.ganymedeDbPassword,
  powerDnsApiKey: pdns.apiKey,
  powerDnsDbPassword: dev.pdnsDbPassword,
  orgCertificateKey: tls.orgCertificateKey,
  gatewayRegistrationTokens: pool.registrationTokens,
  dockerHost: cfg.dockerHost,
  // The API server's first reconcile publishes into the zone: let it exist.
  after: [pdns.recordsCommand],
});

// ------------------------------------------------------------------ stack outputs
export const envName: string = env;
export const domain: string = cfg.domain;
export const publicIp: string = cfg.publicIp;
export const frontendUrl = `https://${cfg.domain}`;
export const ganymedeUrl = ganymedePublicUrl(cfg.domain);
/** embedded (the built-in API server runs in the dev container) or workspace. */
export const ganymede: string = cfg.ganymede;
/** Secret: bearer token of `${ganymedeUrl}/operator/*` (and what the in-container CLI reads from secrets.json). */
export const operatorToken: pulumi.Output<string> = runtimeConfig.operatorToken;
/** Where the runtime processes in the dev container read their configuration. */
export const runtimeConfigPath: string = RUNTIME_CONFIG_PATH;
/** Exactly `GatewaySpec[]`, ready for `registerGateways`; available once the pool exists. */
export const gatewayInventory: pulumi.Output<GatewaySpec[]> = pool.containerNames.apply(() => inventory);
/** PowerDNS API on the environment network (what the allocator in the dev container uses). */
export const powerDnsApiUrl: string = pdns.apiUrl;
/** Secret: per-gateway registration tokens (GATEWAY_TOKEN), for `gateway-pool sync` and /gateway/ready. */
export const gatewayRegistrationTokens: pulumi.Output<Record<string, string>> = pool.registrationTokens;
/** PowerDNS API from the machine running Pulumi (loopback publish or tunnel). */
export const powerDnsAdminUrl: string = pdns.adminUrl;
export const powerDnsApiKey: pulumi.Output<string> = pulumi.secret(pdns.apiKey);
export const zone: string = pdns.zone;
/** The allocator's PostgreSQL URL (secret). */
export const databaseUrl: pulumi.Output<string> = pulumi.secret(dev.databaseUrl);
export const nginxConfDir: string = NGINX_CONF_DIR;
export const networkName: string = envNetworkName(env);
export const devContainerName: pulumi.Output<string> = dev.containerName;
export const dnsPort: number = cfg.dnsPort;
export const tlsMode: string = tls.mode;
/** mkcert mode: the dev CA certificate (PEM) to trust on client machines; null otherwise. */
export const tlsDevCaCertificate: pulumi.Output<string> | null = tls.caCertificate ?? null;
/** Secret (null in tlsMode none): base64 AES-256-GCM key for organization private keys at rest (OrgCertificates encryptionKey). */
export const orgCertificateKey: pulumi.Output<string> | null = tls.orgCertificateKey ?? null;
/** How the allocator issues organization certificates (DevCaIssuer caroot / AcmeIssuer settings), all paths in the dev container. */
export const tlsRuntime = tls.runtime;
/** nested (`uc-<id>.org-<uuid>.<domain>`, a certificate per organization) or flat (`uc-<id>--org-<uuid>.<domain>`). */
export const userContainerNaming: string = cfg.userContainerNaming;
