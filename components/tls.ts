import * as pulumi from '@pulumi/pulumi';
import * as docker from '@pulumi/docker';
import * as random from '@pulumi/random';
import * as command from '@pulumi/command';
import type { TlsConfig } from '../stack/config';
import { PORTS, powerDnsContainerName, tlsRenewerContainerName } from '../runtime/naming';
import { STOP_GRACE_SECONDS, TYPE_PREFIX, type EnvContainerBaseArgs, envContainerArgs, envNetworkAttachment, envVar, roleLabels, secretEnvVar } from './common';
import { plainFile, type BundledFile } from './runtime-bundle';

/** Where the renewal CLI (one esbuild bundle) is uploaded in the renewer container. */
export const RENEWER_CODE_DIR = '/opt/demiurge/runtime';
export const RENEW_CLI = `${RENEWER_CODE_DIR}/tls-renew.js`;
/**
 * letsencrypt with `acmeCaCertificates`: the ACME server's TLS CAs (PEM), uploaded as this file into
 * the renewer and the dev container alike (same directory in both: the dev container's runtime
 * directory), for lego's LEGO_CA_CERTIFICATES. A file, never a command line.
 */
export const ACME_CA_FILE_NAME = 'acme-ca.pem';
export const ACME_CA_FILE = `${RENEWER_CODE_DIR}/${ACME_CA_FILE_NAME}`;
/** Mount point of the `tls` volume (same path in the dev container, see DEV_MOUNTS.tlsState). */
export const TLS_STATE_DIR = '/var/lib/demiurge/tls';
/** mkcert's CAROOT on the tls volume: the dev CA developers trust once. */
export const DEV_CA_DIR = `${TLS_STATE_DIR}/ca`;
/** lego's ACME account, shared by the renewer (base certificate) and the allocator (organization certificates). */
export const ACME_STATE_DIR = `${TLS_STATE_DIR}/acme`;
/** The dev image's nginx worker user (images/dev/rootfs/etc/nginx/nginx.conf). */
export const NGINX_WORKER_USER = 'www-data';
/** How often the renewer looks at the certificate (it renews only when due). */
export const RENEW_CHECK_INTERVAL_SECONDS = 3600;

/** Prints the dev CA certificate (public) from the renewer container; its stdout becomes a stack output. */
export const CA_EXPORT_SCRIPT = String.raw`set -euo pipefail
: "${'$'}{CONTAINER:?}" "${'$'}{CA_FILE:?}"
if [ -n "${'$'}{DEMIURGE_DOCKER_HOST:-}" ]; then export DOCKER_HOST="$DEMIURGE_DOCKER_HOST"; fi
for _ in $(seq 1 60); do
  if docker exec "$CONTAINER" test -s "$CA_FILE" 2>/dev/null; then docker exec "$CONTAINER" cat "$CA_FILE"; exit 0; fi
  sleep 2
done
echo "the dev CA did not appear at $CA_FILE in $CONTAINER (see: docker logs $CONTAINER)" >&2
exit 1
`;

/**
 * What the runtime allocator (in the dev container) needs to build its
 * organization-certificate issuer: a stack output, so Ganymede is configured
 * from the stack like the rest of the allocator.
 */
export type TlsRuntimeSettings =
  | { issuer: 'none' }
  /** `new DevCaIssuer({ caroot })` */
  | { issuer: 'dev-ca'; caroot: string }
  /** `new AcmeIssuer({ directoryUrl, email, stateDir, resolvers, dns: { apiUrl: powerDnsApiUrl, apiKey: powerDnsApiKey, zone: domain } })` */
  | { issuer: 'acme'; directoryUrl: string; email: string; stateDir: string; resolvers: string[]; caCertificatesFile?: string };

export interface TlsArgs extends Omit<EnvContainerBaseArgs, 'publicIp'> {
  tls: TlsConfig;
  /** The dev image (Node.js 20, mkcert, lego, docker CLI): the renewer runs from it. */
  image: pulumi.Input<string>;
  volumes: { certs: pulumi.Input<string>; tls: pulumi.Input<string> };
  /** The dev container, whose nginx serves the certificate (and is reloaded through the Docker socket). */
  devContainer: { name: pulumi.Input<string>; resource: pulumi.Resource };
  /** In-container paths (certs volume) of the base certificate, the dev container's TLS_CERT_PATH / TLS_KEY_PATH. */
  certPath: string;
  keyPath: string;
  /** Where the certs volume is mounted (same in both containers). */
  certsMount: string;
  /** Host path of the Docker socket on the Docker host. */
  dockerSocketPath: string;
  /** Docker host for the CA export command (undefined: local default). */
  dockerHost?: string;
  /** runtime/cli/tls-renew.ts bundled (components/runtime-bundle.ts). */
  renewCli: BundledFile;
  /** letsencrypt only: PowerDNS API on the environment network, for DNS-01. */
  powerDns?: {
    apiUrl: string;
    apiKey: pulumi.Input<string>;
    /** The zone must exist before the first order. */
    ready: pulumi.Resource[];
  };
}

/**
 * TLS of the stage-1 nginx. In modes mkcert and letsencrypt:
 *  - a small renewer container (`demiurge-<env>-tls-renewer`, the dev image
 *    running runtime/cli/tls-renew.ts in a loop) issues the base certificate
 *    (`<domain>`, `*.<domain>`) into the certs volume on its first pass and
 *    renews it when fewer than `renewBeforeDays` are left, checking hourly;
 *    after writing it runs `nginx -t` and a graceful reload in the dev
 *    container (through the Docker socket) and confirms by TLS handshake that
 *    the new certificate is served, restoring the previous pair on failure.
 *    Its healthcheck (`tls-renew check`) passes once a valid certificate for
 *    the names is installed, and `pulumi up` waits for it;
 *  - mkcert: the dev CA lives on the `tls` volume (protected, retained), so
 *    it is created once and stays trusted across `pulumi up`s; its
 *    certificate is the stack output `tlsDevCaCertificate`;
 *  - letsencrypt: ACME DNS-01 through the environment's PowerDNS (lego, with
 *    our own challenge writer; see runtime/tls/acme-issuer.ts);
 *  - the key that encrypts per-organization private keys at rest in
 *    PostgreSQL: 32 random bytes, a secret.
 * Mode none declares nothing (the dev image serves a self-signed certificate).
 */
export class Tls extends pulumi.ComponentResource {
  readonly mode: TlsConfig['mode'];
  readonly renewer?: docker.Container;
  /** mkcert: the dev CA certificate (PEM, public). */
  readonly caCertificate?: pulumi.Output<string>;
  /** Secret: base64 of 32 bytes, the AES-256-GCM key for organization private keys at rest. */
  readonly orgCertificateKey?: pulumi.Output<string>;
  /** The files uploaded into the renewer (for tests and diffs). */
  readonly renewerCode: BundledFile[] = [];
  readonly runtime: TlsRuntimeSettings;

  constructor(name: string, args: TlsArgs, opts?: pulumi.ComponentResourceOptions) {
    super(`${TYPE_PREFIX}:Tls`, name, {}, opts);
    this.mode = args.tls.mode;
    const tls = args.tls;
    const resolvers = [`${powerDnsContainerName(args.envName)}:${PORTS.dns}`];
    this.runtime = runtimeSettingsOf(tls, resolvers);
    if (tls.mode === 'none') {
      this.registerOutputs({ mode: this.mode });
      return;
    }
    const orgKey = new random.RandomBytes(`${name}-org-cert-key`, { length: 32 }, { parent: this });
    this.orgCertificateKey = pulumi.secret(orgKey.base64);

    const containerName = tlsRenewerContainerName(args.envName);
    const { envs, dependsOn } = renewerEnvironment(args, tls, resolvers);

    if (tls.mode === 'letsencrypt' && tls.acmeCaCertificates !== undefined) this.renewerCode.push(plainFile(ACME_CA_FILE_NAME, tls.acmeCaCertificates));
    this.renewerCode.push(args.renewCli);
    this.renewer = new docker.Container(
      `${name}-renewer`,
      envContainerArgs(containerName, args.image, {
        labels: roleLabels(args.envName, 'tls-renewer'),
        // The dev image's own entrypoint starts PostgreSQL and nginx: not here.
        entrypoints: ['/usr/bin/tini', '--'],
        command: ['node', RENEW_CLI, 'loop'],
        envs,
        uploads: this.renewerCode.map((f) => ({ file: `${RENEWER_CODE_DIR}/${f.path}`, content: f.content })),
        networksAdvanced: envNetworkAttachment(args.networkName, containerName),
        volumes: [
          { volumeName: args.volumes.certs, containerPath: args.certsMount },
          { volumeName: args.volumes.tls, containerPath: TLS_STATE_DIR },
          // `docker exec <dev> nginx -t` / `nginx -s reload` after writing a certificate.
          { hostPath: args.dockerSocketPath, containerPath: '/var/run/docker.sock' },
        ],
        // Healthy once a valid certificate for the names is installed; `up` waits for the first one.
        healthcheck: {
          tests: ['CMD', 'node', RENEW_CLI, 'check'],
          interval: '30s',
          timeout: '20s',
          retries: 3,
          startPeriod: '600s',
        },
        wait: true,
        waitTimeout: 900,
        destroyGraceSeconds: STOP_GRACE_SECONDS,
      }),
      { parent: this, provider: args.provider, deleteBeforeReplace: true, dependsOn },
    );

    if (tls.mode === 'mkcert') this.caCertificate = this.exportDevCa(name, this.renewer, args.dockerHost);
    this.registerOutputs({ mode: this.mode, caCertificate: this.caCertificate, orgCertificateKey: this.orgCertificateKey });
  }

  /** mkcert: the dev CA's certificate, read out of the renewer once it runs. */
  private exportDevCa(name: string, renewer: docker.Container, dockerHost: TlsArgs['dockerHost']): pulumi.Output<string> {
    const exportCa = new command.local.Command(
      `${name}-dev-ca`,
      {
        create: CA_EXPORT_SCRIPT,
        interpreter: ['/bin/bash', '-c'],
        environment: { CONTAINER: renewer.name, CA_FILE: `${DEV_CA_DIR}/rootCA.pem`, DEMIURGE_DOCKER_HOST: dockerHost ?? '' },
        // A new renewer (new code or image) re-reads it; the CA itself never changes (protected volume).
        triggers: [renewer.id],
      },
      { parent: this, dependsOn: [renewer] },
    );
    return exportCa.stdout;
  }
}

/** What the allocator's certificate manager is built from (the runtime configuration's `tls`). */
function runtimeSettingsOf(tls: TlsConfig, resolvers: string[]): TlsRuntimeSettings {
  if (tls.mode === 'none') return { issuer: 'none' };
  if (tls.mode === 'mkcert') return { issuer: 'dev-ca', caroot: DEV_CA_DIR };
  return {
    issuer: 'acme',
    directoryUrl: tls.acmeDirectory,
    email: tls.acmeEmail,
    stateDir: ACME_STATE_DIR,
    resolvers,
    ...(tls.acmeCaCertificates === undefined ? {} : { caCertificatesFile: ACME_CA_FILE }),
  };
}

/** The renewer's environment (mkcert or ACME through our PowerDNS) and what it must wait for. */
function renewerEnvironment(args: TlsArgs, tls: Exclude<TlsConfig, { mode: 'none' }>, resolvers: string[]): { envs: pulumi.Input<string>[]; dependsOn: pulumi.Resource[] } {
  const envs: pulumi.Input<string>[] = [
    envVar('DOMAIN', args.domain),
    envVar('TLS_CERT_PATH', args.certPath),
    envVar('TLS_KEY_PATH', args.keyPath),
    envVar('TLS_RENEW_BEFORE_DAYS', tls.renewBeforeDays),
    envVar('TLS_RENEW_INTERVAL_SECONDS', RENEW_CHECK_INTERVAL_SECONDS),
    envVar('NGINX_CONTAINER', args.devContainer.name),
    pulumi.interpolate`TLS_PROBE=${args.devContainer.name}:${PORTS.stage1Https}`,
    // nginx's workers (www-data in the dev image, the same image here) load keys per handshake for per-org certificates.
    envVar('TLS_KEY_OWNER', NGINX_WORKER_USER),
  ];
  const dependsOn: pulumi.Resource[] = [args.devContainer.resource];
  if (tls.mode === 'mkcert') {
    envs.push(envVar('TLS_ISSUER', 'mkcert'), envVar('MKCERT_CAROOT', DEV_CA_DIR));
  } else {
    if (args.powerDns === undefined) throw new Error('Tls: letsencrypt mode needs the PowerDNS API');
    envs.push(
      envVar('TLS_ISSUER', 'acme'),
      envVar('ACME_DIRECTORY', tls.acmeDirectory),
      envVar('ACME_EMAIL', tls.acmeEmail),
      envVar('ACME_STATE_DIR', ACME_STATE_DIR),
      envVar('PDNS_API_URL', args.powerDns.apiUrl),
      secretEnvVar('PDNS_API_KEY', args.powerDns.apiKey),
      envVar('PDNS_ZONE', args.domain),
      // lego checks the TXT records at our PowerDNS itself (the CA asks it too, via the delegation).
      envVar('DNS_RESOLVERS', resolvers.join(',')),
    );
    if (tls.acmeCaCertificates !== undefined) envs.push(envVar('ACME_CA_CERTIFICATES', ACME_CA_FILE));
    dependsOn.push(...args.powerDns.ready);
  }
  return { envs, dependsOn };
}
