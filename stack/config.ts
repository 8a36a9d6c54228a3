/**
 * The stack configuration: every key the program understands, read and
 * validated once.
 *
 * `parseStackConfig(raw)` is pure (no Pulumi), so it is unit-tested directly;
 * `loadStackConfig()` is the thin adapter that reads `pulumi.Config` and is the
 * first thing `index.ts` does, so invalid configuration stops the program
 * before any resource is declared. All problems are collected and reported at
 * once, each naming its key (`<project>:<key>`) and the fix.
 */
import * as pulumi from '@pulumi/pulumi';
import {
  PORTS,
  USER_CONTAINER_NAMINGS,
  isUserContainerNaming,
  type UserContainerNaming,
  isDnsLabel,
  isValidDomain,
  isValidEnvName,
  isValidIpv4,
  portRange,
} from '../runtime/naming';

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
}

/**
 * Every key the program reads, with its default as documented in the README
 * ("Configuration reference"); a test keeps the two in sync.
 */
export const CONFIG_KEYS = {
  envName: 'the stack name',
  domain: '(required)',
  publicIp: '(required)',
  gatewayPoolSize: '3 (or the sum of gatewayHosts pool sizes)',
  gatewayHttpPortBase: String(PORTS.defaultGatewayHttpBase),
  gatewayVpnPortBase: String(PORTS.defaultGatewayVpnBase),
  gatewayPortRangeSize: '100',
  gatewayHosts: '(unset: every gateway on the main Docker host)',
  stage1HttpPort: String(PORTS.stage1Http),
  stage1HttpsPort: String(PORTS.stage1Https),
  dnsPort: String(PORTS.dns),
  dnsBindIp: '0.0.0.0',
  dnsWildcard: 'false',
  powerDnsApiHostPort: String(PORTS.powerDnsApi),
  powerDnsAdminUrl: 'http://127.0.0.1:<powerDnsApiHostPort>',
  tlsMode: 'none',
  acmeEmail: '(required when tlsMode is letsencrypt)',
  acmeDirectory: LETSENCRYPT_DIRECTORY,
  tlsRenewBeforeDays: String(DEFAULT_TLS_RENEW_BEFORE_DAYS),
  userContainerNaming: 'nested',
  devImage: '(unset: build images/dev)',
  powerDnsImage: '(unset: build images/powerdns)',
  buildServerImage: '(unset: build images/build-server)',
  gatewayImage: '(unset: build images/gateway)',
  dockerHost: '(unset: DOCKER_HOST or the local socket)',
  dockerSocketPath: '/var/run/docker.sock',
  retainDataVolumes: 'true',
  ganymede: 'embedded',
  gatewayIdleTimeoutSeconds: String(DEFAULT_GATEWAY_IDLE_TIMEOUT_SECONDS),
  gatewayPushIntervalSeconds: String(DEFAULT_GATEWAY_PUSH_INTERVAL_SECONDS),
} as const;

export type ConfigKey = keyof typeof CONFIG_KEYS;

const IMAGE_CONFIG_KEYS: Readonly<Record<ImageKey, ConfigKey>> = {
  dev: 'devImage',
  pdns: 'powerDnsImage',
  'build-server': 'buildServerImage',
  gateway: 'gatewayImage',
};

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

// ------------------------------------------------------------------ helpers

const EMAIL_RE = /^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$/;
/** docker reference: [registry[:port]/]repo[/repo...][:tag][@sha256:digest] */
const IMAGE_REF_RE =
  /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]{1,5})?\/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$/;
const SSH_HOST_RE = /^ssh:\/\/(?:[A-Za-z0-9._-]+@)?([A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::([0-9]{1,5}))?$/;
/** `uc-<uuid>.org-<uuid>.` is 81 characters; a DNS name is at most 253. */
const MAX_DOMAIN_LENGTH = 253 - 81;

function quote(v: string): string {
  return JSON.stringify(v);
}

class Collector {
  readonly issues: ConfigIssue[] = [];
  constructor(private readonly project: string) {}
  full(key: string): string {
    return `${this.project}:${key}`;
  }
  add(key: string, problem: string, fix: string): void {
    this.issues.push({ key, fullKey: this.full(key), problem, fix });
  }
  setFix(key: string, value: string): string {
    return `pulumi config set ${this.full(key)} ${value}`;
  }
}

function parseWholeNumber(v: string): number | undefined {
  return /^(0|[1-9][0-9]{0,8})$/.test(v) ? Number(v) : undefined;
}

function describeNumberProblem(v: string): string {
  if (/^\s*-/.test(v)) return `must not be negative, got ${quote(v)}.`;
  return `must be a whole number, got ${quote(v)}.`;
}

function rangesOverlap(a: [number, number], b: [number, number]): boolean {
  return a[0] <= b[1] && b[0] <= a[1];
}

function fmtRange(r: [number, number]): string {
  return `${r[0]}-${r[1]}`;
}

function isHttpUrl(v: string): boolean {
  try {
    const u = new URL(v);
    return (u.protocol === 'http:' || u.protocol === 'https:') && u.username === '' && u.password === '' && u.hostname !== '';
  } catch {
    return false;
  }
}

// ------------------------------------------------------------------ parse

/**
 * Validates raw stack configuration (bare keys → string values, as `pulumi
 * config` stores them) and returns the typed config, or throws a
 * StackConfigError listing every problem.
 */
export function parseStackConfig(raw: RawConfig, options: ParseOptions = {}): StackConfig {
  const project = options.project ?? PROJECT;
  const c = new Collector(project);
  const get = (key: ConfigKey): string | undefined => {
    const v = raw[key];
    return v === undefined || v === '' ? undefined : v;
  };

  // Unknown keys in our namespace are almost always typos that would silently fall back to a default.
  for (const key of Object.keys(raw)) {
    if (!(key in CONFIG_KEYS)) {
      c.add(
        key,
        'is not a configuration key of this program (a typo would silently fall back to a default).',
        `pulumi config rm ${c.full(key)}; known keys: ${Object.keys(CONFIG_KEYS).join(', ')}.`,
      );
    }
  }

  const int = (key: ConfigKey, dflt: number, min: number, max: number, example: number): number => {
    const v = get(key);
    if (v === undefined) return dflt;
    const n = parseWholeNumber(v);
    if (n === undefined) {
      c.add(key, describeNumberProblem(v), c.setFix(key, String(example)));
      return dflt;
    }
    if (n < min || n > max) {
      c.add(key, `must be between ${min} and ${max}, got ${n}.`, c.setFix(key, String(example)));
      return dflt;
    }
    return n;
  };
  const port = (key: ConfigKey, dflt: number): number => int(key, dflt, 1, 65535, dflt);
  const bool = (key: ConfigKey, dflt: boolean): boolean => {
    const v = get(key);
    if (v === undefined) return dflt;
    if (v === 'true') return true;
    if (v === 'false') return false;
    c.add(key, `must be true or false, got ${quote(v)}.`, c.setFix(key, String(dflt)));
    return dflt;
  };

  // ---- identity
  const envRaw = get('envName') ?? options.defaultEnvName;
  let envName = 'invalid-env';
  if (envRaw === undefined) {
    c.add('envName', 'is required.', c.setFix('envName', 'dev-001'));
  } else if (!isValidEnvName(envRaw)) {
    c.add(
      'envName',
      `must be a DNS label of at most 32 characters (lowercase letters, digits, inner hyphens, starting with a letter), got ${quote(envRaw)}.`,
      c.setFix('envName', 'dev-001'),
    );
  } else {
    envName = envRaw;
  }

  const domainRaw = get('domain');
  let domain = 'invalid.example';
  if (domainRaw === undefined) {
    c.add('domain', 'is required.', c.setFix('domain', 'demiurge.test'));
  } else if (!isValidDomain(domainRaw)) {
    c.add(
      'domain',
      `must be a lowercase DNS name of at least two labels without a trailing dot, got ${quote(domainRaw)}.`,
      c.setFix('domain', 'demiurge.test'),
    );
  } else if (domainRaw.length > MAX_DOMAIN_LENGTH) {
    c.add(
      'domain',
      `is ${domainRaw.length} characters; at most ${MAX_DOMAIN_LENGTH} leave room for uc-<uuid>.org-<uuid>.<domain>.`,
      'choose a shorter domain.',
    );
  } else {
    domain = domainRaw;
  }

  const ipRaw = get('publicIp');
  let publicIp = '127.0.0.1';
  if (ipRaw === undefined) {
    c.add('publicIp', 'is required (the IPv4 address browsers reach the stage-1 nginx at).', c.setFix('publicIp', '127.0.0.1'));
  } else if (!isValidIpv4(ipRaw) || ipRaw === '0.0.0.0' || ipRaw === '255.255.255.255') {
    c.add('publicIp', `must be a unicast IPv4 address, got ${quote(ipRaw)}.`, c.setFix('publicIp', '127.0.0.1'));
  } else {
    publicIp = ipRaw;
  }

  // ---- ports
  const gatewayHttpPortBase = port('gatewayHttpPortBase', PORTS.defaultGatewayHttpBase);
  const gatewayVpnPortBase = port('gatewayVpnPortBase', PORTS.defaultGatewayVpnBase);
  const gatewayPortRangeSize = int('gatewayPortRangeSize', 100, 1, 65535, 100);
  // Host side only: inside the dev container nginx always listens on 80/443 (docs/CONTRACTS.md).
  const stage1HttpPort = port('stage1HttpPort', PORTS.stage1Http);
  const stage1HttpsPort = port('stage1HttpsPort', PORTS.stage1Https);
  const dnsPort = port('dnsPort', PORTS.dns);
  // 0 = do not publish the API on the Docker host (then powerDnsAdminUrl must say how to reach it).
  const powerDnsApiHostPort = int('powerDnsApiHostPort', PORTS.powerDnsApi, 0, 65535, PORTS.powerDnsApi);

  const dnsBindIpRaw = get('dnsBindIp');
  let dnsBindIp = '0.0.0.0';
  if (dnsBindIpRaw !== undefined) {
    if (isValidIpv4(dnsBindIpRaw)) dnsBindIp = dnsBindIpRaw;
    else c.add('dnsBindIp', `must be an IPv4 address of the host (or 0.0.0.0), got ${quote(dnsBindIpRaw)}.`, c.setFix('dnsBindIp', '127.0.0.1'));
  }

  // ---- gateway hosts and pool size
  const poolRaw = get('gatewayPoolSize');
  let poolSize: number | undefined;
  if (poolRaw !== undefined) {
    const n = parseWholeNumber(poolRaw);
    if (n === undefined) c.add('gatewayPoolSize', describeNumberProblem(poolRaw), c.setFix('gatewayPoolSize', '3'));
    else if (n < 1) c.add('gatewayPoolSize', `must be at least 1, got ${n}.`, c.setFix('gatewayPoolSize', '3'));
    else poolSize = n;
  }
  const hostsRaw = get('gatewayHosts');
  let gatewayHosts: GatewayHostConfig[];
  if (hostsRaw === undefined) {
    const n = poolSize ?? (poolRaw === undefined ? 3 : 1);
    gatewayHosts = [{ name: 'main', kind: 'main', poolSize: n, firstIndex: 0 }];
  } else {
    gatewayHosts = parseGatewayHosts(hostsRaw, c);
    const sum = gatewayHosts.reduce((s, h) => s + h.poolSize, 0);
    if (poolSize !== undefined && gatewayHosts.length > 0 && sum !== poolSize) {
      c.add(
        'gatewayPoolSize',
        `is ${poolSize} but the poolSize values in ${c.full('gatewayHosts')} add up to ${sum}.`,
        `make them agree: ${c.setFix('gatewayPoolSize', String(sum))} or change the per-host pool sizes.`,
      );
    }
    if (gatewayHosts.length === 0) gatewayHosts = [{ name: 'main', kind: 'main', poolSize: poolSize ?? 1, firstIndex: 0 }];
  }
  const gatewayPoolSize = gatewayHosts.reduce((s, h) => s + h.poolSize, 0);
  const highestIndex = Math.max(...gatewayHosts.map((h) => h.firstIndex + h.poolSize - 1));

  // ---- ranges
  const httpRange = portRange(gatewayHttpPortBase, gatewayPortRangeSize);
  const vpnRange = portRange(gatewayVpnPortBase, gatewayPortRangeSize);
  if (httpRange[1] > 65535) {
    c.add('gatewayHttpPortBase', `range ${fmtRange(httpRange)} (base + gatewayPortRangeSize) ends above 65535.`, 'lower the base or gatewayPortRangeSize.');
  }
  if (vpnRange[1] > 65535) {
    c.add('gatewayVpnPortBase', `range ${fmtRange(vpnRange)} (base + gatewayPortRangeSize) ends above 65535.`, 'lower the base or gatewayPortRangeSize.');
  }
  if (highestIndex + 1 > gatewayPortRangeSize) {
    const key = hostsRaw !== undefined && poolSize === undefined ? 'gatewayHosts' : 'gatewayPoolSize';
    c.add(
      key,
      `needs gateway indices 0-${highestIndex} but gatewayPortRangeSize reserves only ${gatewayPortRangeSize} ports per range ` +
        `(HTTP ${fmtRange(httpRange)}, VPN ${fmtRange(vpnRange)}).`,
      `lower the pool or raise the range: ${c.setFix('gatewayPortRangeSize', String(highestIndex + 1))} (keep ranges of stacks on one host disjoint).`,
    );
  }
  if (rangesOverlap(httpRange, vpnRange)) {
    c.add(
      'gatewayVpnPortBase',
      `VPN range ${fmtRange(vpnRange)} overlaps the HTTP range ${fmtRange(httpRange)} (${c.full('gatewayHttpPortBase')}).`,
      c.setFix('gatewayVpnPortBase', String(PORTS.defaultGatewayVpnBase)),
    );
  }
  const fixed: { port: number; what: string }[] = [
    { port: stage1HttpPort, what: `stage-1 HTTP (${c.full('stage1HttpPort')})` },
    { port: stage1HttpsPort, what: `stage-1 HTTPS (${c.full('stage1HttpsPort')})` },
    { port: dnsPort, what: `DNS (${c.full('dnsPort')})` },
    { port: powerDnsApiHostPort, what: `PowerDNS API (${c.full('powerDnsApiHostPort')})` },
  ].filter((f) => f.port !== 0);
  for (const [key, range] of [
    ['gatewayHttpPortBase', httpRange],
    ['gatewayVpnPortBase', vpnRange],
  ] as const) {
    for (const f of fixed) {
      if (f.port >= range[0] && f.port <= range[1]) {
        c.add(key, `range ${fmtRange(range)} contains port ${f.port}, used by ${f.what}.`, 'move the base so the range avoids the stage-1 ports, the DNS port and the PowerDNS API port.');
      }
    }
  }
  if (stage1HttpPort === stage1HttpsPort) {
    c.add('stage1HttpsPort', `must differ from ${c.full('stage1HttpPort')} (${stage1HttpPort}).`, c.setFix('stage1HttpsPort', String(PORTS.stage1Https)));
  }
  if (dnsPort === stage1HttpPort || dnsPort === stage1HttpsPort) {
    c.add('dnsPort', `must not be ${dnsPort} (used by the stage-1 nginx).`, c.setFix('dnsPort', '53'));
  }
  if (powerDnsApiHostPort !== 0 && (powerDnsApiHostPort === stage1HttpPort || powerDnsApiHostPort === stage1HttpsPort || powerDnsApiHostPort === dnsPort)) {
    c.add('powerDnsApiHostPort', `must not be ${powerDnsApiHostPort} (used by the stage-1 nginx or DNS).`, c.setFix('powerDnsApiHostPort', '8081'));
  }

  const adminRaw = get('powerDnsAdminUrl');
  let powerDnsAdminUrl = `http://127.0.0.1:${powerDnsApiHostPort}`;
  if (adminRaw !== undefined) {
    if (isHttpUrl(adminRaw)) powerDnsAdminUrl = adminRaw.replace(/\/+$/, '');
    else c.add('powerDnsAdminUrl', `must be an http(s) URL without credentials, got ${quote(adminRaw)}.`, c.setFix('powerDnsAdminUrl', 'http://127.0.0.1:8081'));
  } else if (powerDnsApiHostPort === 0) {
    c.add(
      'powerDnsAdminUrl',
      `is required when ${c.full('powerDnsApiHostPort')} is 0 (the API is not published, so say how this machine reaches it).`,
      c.setFix('powerDnsAdminUrl', 'http://127.0.0.1:18081'),
    );
  }
  // ---- user-container names (flat names resolve through the *.<domain> record, so it defaults on)
  const namingRaw = get('userContainerNaming') ?? 'nested';
  let userContainerNaming: UserContainerNaming = 'nested';
  if (!isUserContainerNaming(namingRaw)) {
    c.add('userContainerNaming', `must be one of ${USER_CONTAINER_NAMINGS.join(', ')}, got ${quote(namingRaw)}.`, c.setFix('userContainerNaming', 'nested'));
  } else {
    userContainerNaming = namingRaw;
  }
  const dnsWildcard = bool('dnsWildcard', userContainerNaming === 'flat');
  if (userContainerNaming === 'flat' && !dnsWildcard) {
    c.add(
      'dnsWildcard',
      `is false, but ${c.full('userContainerNaming')} is flat: uc-<id>--org-<uuid>.${domain} names resolve only through the *.${domain} record.`,
      `pulumi config rm ${c.full('dnsWildcard')} (flat turns it on) or ${c.setFix('userContainerNaming', 'nested')}.`,
    );
  }

  // ---- TLS
  const modeRaw = get('tlsMode') ?? 'none';
  let tls: TlsConfig = { mode: 'none' };
  if (!(TLS_MODES as readonly string[]).includes(modeRaw)) {
    c.add('tlsMode', `must be one of ${TLS_MODES.join(', ')}, got ${quote(modeRaw)}.`, c.setFix('tlsMode', 'mkcert'));
  } else {
    const mode = modeRaw as TlsMode;
    // Let's Encrypt certificates live 90 days: renewing with 89 or more left would renew on every check.
    const renewBeforeDays = int('tlsRenewBeforeDays', DEFAULT_TLS_RENEW_BEFORE_DAYS, 1, 60, DEFAULT_TLS_RENEW_BEFORE_DAYS);
    if (mode === 'mkcert') {
      tls = { mode, renewBeforeDays };
    } else if (mode === 'letsencrypt') {
      const email = get('acmeEmail');
      if (email === undefined) {
        c.add('acmeEmail', 'is required when tlsMode is letsencrypt (the ACME account e-mail).', c.setFix('acmeEmail', `admin@${domain}`));
      } else if (!EMAIL_RE.test(email)) {
        c.add('acmeEmail', `must be an e-mail address, got ${quote(email)}.`, c.setFix('acmeEmail', `admin@${domain}`));
      }
      const dir = get('acmeDirectory') ?? LETSENCRYPT_DIRECTORY;
      if (!isHttpUrl(dir) || !dir.startsWith('https://')) {
        c.add('acmeDirectory', `must be an https:// ACME directory URL, got ${quote(dir)}.`, c.setFix('acmeDirectory', LETSENCRYPT_DIRECTORY));
      }
      tls = { mode, acmeEmail: email ?? '', acmeDirectory: dir, renewBeforeDays };
    }
  }

  // ---- images
  const images = {} as Record<ImageKey, ImageSource>;
  for (const key of IMAGE_KEYS) {
    const cfgKey = IMAGE_CONFIG_KEYS[key];
    const tag = get(cfgKey);
    if (tag === undefined) {
      images[key] = { kind: 'build', context: IMAGE_CONTEXTS[key] };
    } else if (!IMAGE_REF_RE.test(tag)) {
      c.add(cfgKey, `must be a Docker image reference such as registry.example.com/demiurge/${key}:1.2.3, got ${quote(tag)}.`, `fix the tag, or pulumi config rm ${c.full(cfgKey)} to build ${IMAGE_CONTEXTS[key]}.`);
      images[key] = { kind: 'build', context: IMAGE_CONTEXTS[key] };
    } else {
      images[key] = { kind: 'prebuilt', tag };
    }
  }

  // ---- Docker
  const dockerHost = get('dockerHost');
  if (dockerHost !== undefined && !/^(unix:\/\/\/\S+|tcp:\/\/\S+:[0-9]{1,5}|ssh:\/\/\S+)$/.test(dockerHost)) {
    c.add('dockerHost', `must be a Docker host URL (unix:///path, tcp://host:port or ssh://user@host), got ${quote(dockerHost)}.`, c.setFix('dockerHost', 'ssh://deploy@203.0.113.10'));
  }
  const dockerSocketPath = get('dockerSocketPath') ?? '/var/run/docker.sock';
  if (!/^\/[^\s:]*$/.test(dockerSocketPath)) {
    c.add('dockerSocketPath', `must be an absolute path on the Docker host, got ${quote(dockerSocketPath)}.`, c.setFix('dockerSocketPath', '/var/run/docker.sock'));
  }
  const retainDataVolumes = bool('retainDataVolumes', true);

  // ---- runtime in the environment
  const ganymedeRaw = get('ganymede') ?? 'embedded';
  let ganymede: GanymedeMode = 'embedded';
  if (!(GANYMEDE_MODES as readonly string[]).includes(ganymedeRaw)) {
    c.add('ganymede', `must be one of ${GANYMEDE_MODES.join(', ')}, got ${quote(ganymedeRaw)}.`, c.setFix('ganymede', 'embedded'));
  } else {
    ganymede = ganymedeRaw as GanymedeMode;
  }
  const gatewayIdleTimeoutSeconds = int('gatewayIdleTimeoutSeconds', DEFAULT_GATEWAY_IDLE_TIMEOUT_SECONDS, 1, 86400, DEFAULT_GATEWAY_IDLE_TIMEOUT_SECONDS);
  const gatewayPushIntervalSeconds = int('gatewayPushIntervalSeconds', DEFAULT_GATEWAY_PUSH_INTERVAL_SECONDS, 1, 86400, DEFAULT_GATEWAY_PUSH_INTERVAL_SECONDS);

  if (c.issues.length > 0) throw new StackConfigError(project, c.issues);

  return {
    project,
    envName,
    domain,
    publicIp,
    gatewayPoolSize,
    gatewayHttpPortBase,
    gatewayVpnPortBase,
    gatewayPortRangeSize,
    gatewayHosts,
    stage1HttpPort,
    stage1HttpsPort,
    dnsPort,
    dnsBindIp,
    dnsWildcard,
    userContainerNaming,
    powerDnsApiHostPort,
    powerDnsAdminUrl,
    tls,
    images,
    dockerHost,
    dockerSocketPath,
    retainDataVolumes,
    ganymede,
    gatewayIdleTimeoutSeconds,
    gatewayPushIntervalSeconds,
  };
}

const HOST_ENTRY_KEYS = ['name', 'host', 'ip', 'poolSize', 'firstIndex'];

function defaultHostName(host: string): string {
  const label = host
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 60)
    .replace(/-+$/g, '');
  return label === '' ? 'host' : label;
}

/** Parses the JSON list of `{ name?, host, ip?, poolSize, firstIndex? }`. */
function parseGatewayHosts(raw: string, c: Collector): GatewayHostConfig[] {
  const key = 'gatewayHosts';
  const example =
    `'[{"name":"main","host":"main","poolSize":4},{"name":"gw-b","host":"ssh://deploy@203.0.113.12","poolSize":6}]'`;
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch (err) {
    c.add(key, `is not valid JSON (${(err as Error).message}).`, c.setFix(key, example));
    return [];
  }
  if (!Array.isArray(parsed) || parsed.length === 0) {
    c.add(key, 'must be a non-empty JSON array of {name?, host, ip?, poolSize, firstIndex?}.', c.setFix(key, example));
    return [];
  }
  const hosts: GatewayHostConfig[] = [];
  let next = 0;
  parsed.forEach((entry: unknown, i: number) => {
    const where = `[${i}]`;
    if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) {
      c.add(key, `${where} must be an object.`, c.setFix(key, example));
      return;
    }
    const e = entry as Record<string, unknown>;
    for (const k of Object.keys(e)) {
      if (!HOST_ENTRY_KEYS.includes(k)) {
        c.add(key, `${where} has unknown field ${quote(k)} (allowed: ${HOST_ENTRY_KEYS.join(', ')}).`, 'remove the field.');
      }
    }
    const host = e.host;
    let kind: 'main' | 'ssh' = 'main';
    let sshHostPart: string | undefined;
    if (host === 'main') {
      kind = 'main';
    } else if (typeof host === 'string' && SSH_HOST_RE.test(host)) {
      kind = 'ssh';
      const m = SSH_HOST_RE.exec(host);
      sshHostPart = m?.[1];
      if (m?.[2] !== undefined && (Number(m[2]) < 1 || Number(m[2]) > 65535)) {
        c.add(key, `${where}.host has an invalid SSH port in ${quote(host)}.`, 'use ssh://user@host[:port].');
      }
    } else {
      c.add(key, `${where}.host must be "main" or an ssh:// Docker host URL, got ${JSON.stringify(host)}.`, 'use "main" or "ssh://user@203.0.113.12".');
    }
    const poolSize = e.poolSize;
    if (typeof poolSize !== 'number' || !Number.isInteger(poolSize) || poolSize < 1) {
      c.add(key, `${where}.poolSize must be a whole number of at least 1, got ${JSON.stringify(poolSize)}.`, 'set "poolSize" to the number of gateways on that host.');
    }
    let firstIndex = next;
    if (e.firstIndex !== undefined) {
      if (typeof e.firstIndex !== 'number' || !Number.isInteger(e.firstIndex) || e.firstIndex < 0) {
        c.add(key, `${where}.firstIndex must be a whole number of at least 0, got ${JSON.stringify(e.firstIndex)}.`, 'remove it to continue after the previous host.');
      } else {
        firstIndex = e.firstIndex;
      }
    }
    let ip: string | undefined;
    if (e.ip !== undefined) {
      if (kind === 'main') {
        c.add(key, `${where}.ip is only for ssh:// hosts (gateways on the main host are reached by container name).`, 'remove "ip" from the main entry.');
      } else if (!isValidIpv4(e.ip)) {
        c.add(key, `${where}.ip must be an IPv4 address, got ${JSON.stringify(e.ip)}.`, 'set "ip" to the address the stage-1 nginx reaches that host at.');
      } else {
        ip = e.ip;
      }
    } else if (kind === 'ssh') {
      if (sshHostPart !== undefined && isValidIpv4(sshHostPart)) {
        ip = sshHostPart;
      } else if (sshHostPart !== undefined) {
        c.add(key, `${where}.ip is required because the SSH host ${quote(sshHostPart)} is not an IPv4 address.`, 'add "ip": "<address the stage-1 nginx reaches that host at>".');
      }
    }
    let name: string;
    if (e.name !== undefined) {
      if (typeof e.name !== 'string' || !isDnsLabel(e.name)) {
        c.add(key, `${where}.name must be a lowercase DNS label, got ${JSON.stringify(e.name)}.`, 'use e.g. "gw-b".');
        name = `invalid-${i}`;
      } else {
        name = e.name;
      }
    } else {
      name = kind === 'main' ? 'main' : defaultHostName(sshHostPart ?? `host-${i}`);
    }
    const size = typeof poolSize === 'number' && Number.isInteger(poolSize) && poolSize > 0 ? poolSize : 1;
    hosts.push({ name, kind, dockerHost: kind === 'ssh' ? (host as string) : undefined, ip, poolSize: size, firstIndex });
    next = firstIndex + size;
  });
  const seenNames = new Set<string>();
  const seenHosts = new Set<string>();
  for (const h of hosts) {
    if (seenNames.has(h.name)) {
      c.add(key, `host name ${quote(h.name)} appears twice.`, 'give every entry a distinct "name".');
    }
    seenNames.add(h.name);
    const hk = h.dockerHost ?? 'main';
    if (seenHosts.has(hk)) {
      c.add(key, `host ${quote(hk)} appears twice.`, 'merge the entries and add their pool sizes.');
    }
    seenHosts.add(hk);
  }
  const sorted = [...hosts].sort((a, b) => a.firstIndex - b.firstIndex);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1];
    const cur = sorted[i];
    if (cur.firstIndex < prev.firstIndex + prev.poolSize) {
      c.add(
        key,
        `gateway indices of ${quote(prev.name)} (${prev.firstIndex}-${prev.firstIndex + prev.poolSize - 1}) and ${quote(cur.name)} (from ${cur.firstIndex}) overlap.`,
        'adjust "firstIndex" or "poolSize" so every gateway index belongs to one host.',
      );
    }
  }
  return hosts;
}

// ------------------------------------------------------------------ load

/**
 * Reads every key of the project namespace from the Pulumi configuration and
 * validates it. Call once, first thing in the program.
 */
export function loadStackConfig(): StackConfig {
  const project = pulumi.getProject();
  const prefix = `${project}:`;
  const raw: Record<string, string | undefined> = {};
  for (const [fullKey, value] of Object.entries(pulumi.runtime.allConfig())) {
    if (fullKey.startsWith(prefix)) raw[fullKey.slice(prefix.length)] = value;
  }
  return parseStackConfig(raw, { project, defaultEnvName: pulumi.getStack() });
}
