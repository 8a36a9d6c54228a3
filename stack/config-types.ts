/**
 * The stack configuration's types and constants (see config.ts, which parses it).
 * Pure: no Pulumi.
 */
import type { UserContainerNaming } from '../runtime/naming';

/** The Pulumi project name (`name:` in Pulumi.yaml) and so the config namespace. */
export const PROJECT = 'demiurge';

export type TlsMode = 'mkcert' | 'letsencrypt' | 'none';
export const TLS_MODES: readonly TlsMode[] = ['mkcert', 'letsencrypt', 'none'];

export const LETSENCRYPT_DIRECTORY = 'https://acme-v02.api.letsencrypt.org/directory';
/** Renew the base certificate when fewer days are left (Let's Encrypt's own advice for 90-day certificates). */
export const DEFAULT_TLS_RENEW_BEFORE_DAYS = 30;

/** The four images of an environment; the same keys `naming.imageName` accepts. */
export type ImageKey = 'dev' | 'pdns' | 'build-server' | 'gateway';
export const IMAGE_KEYS: readonly ImageKey[] = ['dev', 'pdns', 'build-server', 'gateway'];

/** Build context directory (relative to the project directory) of each image. */
export const IMAGE_CONTEXTS: Readonly<Record<ImageKey, string>> = {
  dev: 'images/dev',
  pdns: 'images/powerdns',
  'build-server': 'images/build-server',
  gateway: 'images/gateway',
};

/** embedded: the dev container runs the built-in API server; workspace: the team's own Ganymede serves 127.0.0.1:6000. */
export type GanymedeMode = 'embedded' | 'workspace';
export const GANYMEDE_MODES: readonly GanymedeMode[] = ['embedded', 'workspace'];
/** The seed's idle rule: a gateway with no activity for 5 minutes pushes, stops and is ready again. */
export const DEFAULT_GATEWAY_IDLE_TIMEOUT_SECONDS = 300;
export const DEFAULT_GATEWAY_PUSH_INTERVAL_SECONDS = 60;

export type ImageSource =
  | { kind: 'build'; context: string }
  | { kind: 'prebuilt'; tag: string };

export type TlsConfig =
  | { mode: 'none' }
  | { mode: 'mkcert'; renewBeforeDays: number }
  | {
      mode: 'letsencrypt';
      acmeEmail: string;
      acmeDirectory: string;
      /** PEM: CAs of the ACME server's own HTTPS (a private ACME CA); undefined: the system's. */
      acmeCaCertificates?: string;
      renewBeforeDays: number;
    };

/** Where a slice of the gateway pool runs. */
export interface GatewayHostConfig {
  /** DNS label naming this host in resource names (`main` for the main Docker host). */
  name: string;
  /** `main` (the environment's own Docker host) or a remote `ssh://` Docker host. */
  kind: 'main' | 'ssh';
  /** Docker host URL for `ssh` hosts. */
  dockerHost?: string;
  /** Address at which the stage-1 nginx reaches this host's published gateway ports (`ssh` hosts). */
  ip?: string;
  poolSize: number;
  /** Index of the first gateway on this host; indices are global across hosts. */
  firstIndex: number;
}

export interface StackConfig {
  project: string;
  envName: string;
  domain: string;
  publicIp: string;
  /** Total number of gateways (sum over `gatewayHosts`). */
  gatewayPoolSize: number;
  gatewayHttpPortBase: number;
  gatewayVpnPortBase: number;
  /** Ports reserved for the pool from each base: [base, base + size - 1]. */
  gatewayPortRangeSize: number;
  /** Always non-empty; a single `main` entry unless `gatewayHosts` is set. */
  gatewayHosts: GatewayHostConfig[];
  /** Host ports the dev container's stage-1 nginx is published on (it listens on 80/443 inside). */
  stage1HttpPort: number;
  stage1HttpsPort: number;
  dnsPort: number;
  dnsBindIp: string;
  dnsWildcard: boolean;
  /**
   * nested: `uc-<id>.org-<uuid>.<domain>`, one certificate per organization;
   * flat: `uc-<id>--org-<uuid>.<domain>`, covered by the base wildcard.
   */
  userContainerNaming: UserContainerNaming;
  powerDnsApiHostPort: number;
  powerDnsAdminUrl: string;
  tls: TlsConfig;
  images: Record<ImageKey, ImageSource>;
  /** Docker host of the environment (dev, pdns, build server); undefined = the local default. */
  dockerHost?: string;
  dockerSocketPath: string;
  retainDataVolumes: boolean;
  /** Who serves the API at 127.0.0.1:6000 in the dev container (ganymede.<domain>). */
  ganymede: GanymedeMode;
  /** Gateways release themselves after this many seconds without activity (GATEWAY_IDLE_TIMEOUT_MS). */
  gatewayIdleTimeoutSeconds: number;
  /** Gateways push their organization's data this often while allocated (GATEWAY_PUSH_INTERVAL_MS). */
  gatewayPushIntervalSeconds: number;
  /** The API server probes gateways on remote Docker hosts this often (api.hostHealth.intervalSeconds; 3 silent rounds quarantine a host). */
  hostHealthIntervalSeconds: number;
  /** PEM: extra CAs every gateway trusts when calling GANYMEDE_URL (NODE_EXTRA_CA_CERTS); undefined: none. */
  gatewayExtraCaCertificates?: string;
}

export type ConfigKey = keyof FieldValues;

export interface ConfigIssue {
  /** Bare key, e.g. `gatewayPoolSize`. */
  key: string;
  /** Namespaced key, e.g. `demiurge:gatewayPoolSize`. */
  fullKey: string;
  problem: string;
  fix: string;
}

export class StackConfigError extends Error {
  readonly issues: readonly ConfigIssue[];
  constructor(project: string, issues: readonly ConfigIssue[]) {
    const lines = issues.map((i) => `  - ${i.fullKey}: ${i.problem} Fix: ${i.fix}`);
    super(
      `Invalid stack configuration for project "${project}" ` +
        `(${issues.length} problem${issues.length === 1 ? '' : 's'}); no resources were declared:\n` +
        lines.join('\n'),
    );
    this.name = 'StackConfigError';
    this.issues = issues;
  }
}

export interface ParseOptions {
  /** Config namespace used in messages; defaults to PROJECT. */
  project?: string;
  /** Default for `envName` (loadStackConfig passes the stack name). */
  defaultEnvName?: string;
}

export type RawConfig = Readonly<Record<string, string | undefined>>;

/**
 * The value of every key after reading it on its own (before the cross-field rules).
 * Its tail repeats StackConfig's on purpose: one field per `demiurge:` key (FIELDS is typed by it),
 * whereas StackConfig is what the program reads after the rules (grouped: tls, images, gateway hosts).
 */
export interface FieldValues {
  envName: string;
  domain: string;
  publicIp: string;
  /** undefined: unset (or invalid), the pool size then comes from gatewayHosts or defaults to 3. */
  gatewayPoolSize: number | undefined;
  gatewayHttpPortBase: number;
  gatewayVpnPortBase: number;
  gatewayPortRangeSize: number;
  /** undefined: unset; [] when the JSON itself is unusable. */
  gatewayHosts: GatewayHostConfig[] | undefined;
  stage1HttpPort: number;
  stage1HttpsPort: number;
  dnsPort: number;
  dnsBindIp: string;
  dnsWildcard: boolean;
  powerDnsApiHostPort: number;
  powerDnsAdminUrl: string;
  tlsMode: TlsMode;
  acmeEmail: string;
  acmeDirectory: string;
  acmeCaCertificates: string | undefined;
  tlsRenewBeforeDays: number;
  userContainerNaming: UserContainerNaming;
  devImage: ImageSource;
  powerDnsImage: ImageSource;
  buildServerImage: ImageSource;
  gatewayImage: ImageSource;
  dockerHost: string | undefined;
  dockerSocketPath: string;
  retainDataVolumes: boolean;
  ganymede: GanymedeMode;
  gatewayIdleTimeoutSeconds: number;
  gatewayPushIntervalSeconds: number;
  hostHealthIntervalSeconds: number;
  gatewayExtraCaCertificates: string | undefined;
}
