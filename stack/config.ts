/**
 * The stack configuration: every key the program understands, read and
 * validated once.
 *
 * `parseStackConfig(raw)` is pure (no Pulumi), so it is unit-tested directly;
 * `loadStackConfig()` is the thin adapter that reads `pulumi.Config` and is the
 * first thing `index.ts` does, so invalid configuration stops the program
 * before any resource is declared. All problems are collected and reported at
 * once, each naming its key (`<project>:<key>`) and the fix.
 *
 * Shape: FIELDS is the table of keys (default as documented, how one value is
 * parsed, the example its fixes suggest); CONFIG_KEYS is generated from it.
 * What involves several keys (pool size against the port ranges, TLS mode
 * against its settings, naming against the wildcard record…) is a named rule
 * in RULES, run after every field was read.
 */
import { X509Certificate } from 'crypto';
import * as pulumi from '@pulumi/pulumi';
import { PORTS, USER_CONTAINER_NAMINGS, type UserContainerNaming, isValidDomain, isValidEnvName, isValidIpv4, portRange } from '../runtime/naming';
import { parseGatewayHosts } from './config-gateway-hosts';

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

// ------------------------------------------------------------------ helpers

const EMAIL_RE = /^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$/;
/** docker reference: [registry[:port]/]repo[/repo...][:tag][@sha256:digest] */
const IMAGE_REF_RE =
  /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]{1,5})?\/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$/;
const DOCKER_HOST_RE = /^(unix:\/\/\/\S+|tcp:\/\/\S+:[0-9]{1,5}|ssh:\/\/\S+)$/;
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

const PEM_CERT_RE = /-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----/g;

/**
 * One or more PEM certificates and nothing else (no private key, no text around them), each one
 * parseable; returns them normalised (one block after another, final newline), or undefined.
 */
export function parsePemCertificates(v: string): string | undefined {
  const blocks = v.match(PEM_CERT_RE) ?? [];
  if (blocks.length === 0 || v.replace(PEM_CERT_RE, '').trim() !== '') return undefined;
  try {
    for (const b of blocks) new X509Certificate(b);
  } catch {
    return undefined;
  }
  return `${blocks.map((b) => b.trim()).join('\n')}\n`;
}

/** A PEM bundle key (public certificates: not a secret, but a file, never a command line). */
function pemField(what: string, when?: (ctx: FieldContext) => boolean): Field<string | undefined> {
  return {
    doc: '(unset: none)',
    example: '"$(cat ca.pem)"',
    ...(when === undefined ? {} : { when }),
    parse: (v, ctx) => parsePemCertificates(v) ?? ctx.fail(`must be one or more PEM certificates (-----BEGIN CERTIFICATE----- ... -----END CERTIFICATE-----) and nothing else: ${what}.`),
    fallback: undefined,
  };
}

// ------------------------------------------------------------------ fields

/** The value of every key after reading it on its own (before the cross-field rules). */
interface FieldValues {
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
  gatewayExtraCaCertificates: string | undefined;
}

const INVALID = Symbol('invalid');

/** What a field's functions see while FIELDS is read in order. */
interface FieldContext {
  /** The fields listed above this one in FIELDS, already read (later ones are not set yet). */
  readonly values: Readonly<FieldValues>;
  readonly options: ParseOptions;
  /** The raw value of any key ('' counts as unset). */
  raw(key: ConfigKey): string | undefined;
  full(key: ConfigKey): string;
  /** Records a problem with the field being read; `fix` defaults to setting its example. */
  fail(problem: string, fix?: string): typeof INVALID;
  /** `pulumi config set <project>:<key> <value>`. */
  setFix(key: ConfigKey, value: string): string;
}

type Dynamic<T> = T | ((ctx: FieldContext) => T);

interface Field<T> {
  /** The default as the README's configuration reference shows it (CONFIG_KEYS). */
  doc: string;
  /** Raw value parsed when the key is unset; undefined: the key stays unset. */
  rawDefault?: Dynamic<string | undefined>;
  /** When unset without a default: the problem, and the example of its fix if it differs. */
  required?: { problem: Dynamic<string>; example?: string };
  /** The value `pulumi config set` fixes suggest. */
  example?: Dynamic<string>;
  /** Reads one value; on a problem returns `ctx.fail(...)`. */
  parse: (value: string, ctx: FieldContext) => T | typeof INVALID;
  /** The value when unset without a default, or invalid (rules still run on it; an invalid config declares nothing). */
  fallback: T;
  /** The key is read only when this holds (e.g. ACME settings only with tlsMode letsencrypt). */
  when?: (ctx: FieldContext) => boolean;
}

type FieldTable = { [K in ConfigKey]: Field<FieldValues[K]> };

function resolve<T>(d: Dynamic<T>, ctx: FieldContext): T {
  return typeof d === 'function' ? (d as (ctx: FieldContext) => T)(ctx) : d;
}

function wholeNumber(min: number, max: number): Field<number>['parse'] {
  return (v, ctx) => {
    const n = parseWholeNumber(v);
    if (n === undefined) return ctx.fail(describeNumberProblem(v));
    if (n < min || n > max) return ctx.fail(`must be between ${min} and ${max}, got ${n}.`);
    return n;
  };
}

/** A whole number with a default, suggested as the fix. */
function intField(dflt: number, min: number, max: number): Field<number> {
  return { doc: String(dflt), rawDefault: String(dflt), example: String(dflt), parse: wholeNumber(min, max), fallback: dflt };
}

function portField(dflt: number): Field<number> {
  return intField(dflt, 1, 65535);
}

function boolField(dflt: Dynamic<string>, doc: string): Field<boolean> {
  return {
    doc,
    rawDefault: dflt,
    example: dflt,
    parse: (v, ctx) => (v === 'true' ? true : v === 'false' ? false : ctx.fail(`must be true or false, got ${quote(v)}.`)),
    fallback: false,
  };
}

function oneOfField<T extends string>(choices: readonly T[], dflt: T, example: string): Field<T> {
  return {
    doc: dflt,
    rawDefault: dflt,
    example,
    parse: (v, ctx) => ((choices as readonly string[]).includes(v) ? (v as T) : ctx.fail(`must be one of ${choices.join(', ')}, got ${quote(v)}.`)),
    fallback: dflt,
  };
}

function imageField(image: ImageKey): Field<ImageSource> {
  const build: ImageSource = { kind: 'build', context: IMAGE_CONTEXTS[image] };
  return {
    doc: `(unset: build ${IMAGE_CONTEXTS[image]})`,
    parse: (tag, ctx) =>
      IMAGE_REF_RE.test(tag)
        ? { kind: 'prebuilt', tag }
        : ctx.fail(
            `must be a Docker image reference such as registry.example.com/demiurge/${image}:1.2.3, got ${quote(tag)}.`,
            `fix the tag, or pulumi config rm ${ctx.full(IMAGE_CONFIG_KEYS[image])} to build ${IMAGE_CONTEXTS[image]}.`,
          ),
    fallback: build,
  };
}

const IMAGE_CONFIG_KEYS = {
  dev: 'devImage',
  pdns: 'powerDnsImage',
  'build-server': 'buildServerImage',
  gateway: 'gatewayImage',
} as const satisfies Readonly<Record<ImageKey, ConfigKey>>;

const GATEWAY_HOSTS_EXAMPLE =
  `'[{"name":"main","host":"main","poolSize":4},{"name":"gw-b","host":"ssh://deploy@203.0.113.12","poolSize":6}]'`;

/**
 * Every key the program reads, in the order they are read (a field may look
 * at the ones above it) and documented.
 */
const FIELDS: FieldTable = {
  envName: {
    doc: 'the stack name',
    rawDefault: (ctx) => ctx.options.defaultEnvName,
    required: { problem: 'is required.' },
    example: 'dev-001',
    parse: (v, ctx) =>
      isValidEnvName(v)
        ? v
        : ctx.fail(`must be a DNS label of at most 32 characters (lowercase letters, digits, inner hyphens, starting with a letter), got ${quote(v)}.`),
    fallback: 'invalid-env',
  },
  domain: {
    doc: '(required)',
    required: { problem: 'is required.' },
    example: 'demiurge.test',
    parse: (v, ctx) => {
      if (!isValidDomain(v)) return ctx.fail(`must be a lowercase DNS name of at least two labels without a trailing dot, got ${quote(v)}.`);
      if (v.length > MAX_DOMAIN_LENGTH) {
        return ctx.fail(`is ${v.length} characters; at most ${MAX_DOMAIN_LENGTH} leave room for uc-<uuid>.org-<uuid>.<domain>.`, 'choose a shorter domain.');
      }
      return v;
    },
    fallback: 'invalid.example',
  },
  publicIp: {
    doc: '(required)',
    required: { problem: 'is required (the IPv4 address browsers reach the stage-1 nginx at).' },
    example: '127.0.0.1',
    parse: (v, ctx) => (isValidIpv4(v) && v !== '0.0.0.0' && v !== '255.255.255.255' ? v : ctx.fail(`must be a unicast IPv4 address, got ${quote(v)}.`)),
    fallback: '127.0.0.1',
  },
  gatewayPoolSize: {
    doc: '3 (or the sum of gatewayHosts pool sizes)',
    example: '3',
    parse: (v, ctx) => {
      const n = parseWholeNumber(v);
      if (n === undefined) return ctx.fail(describeNumberProblem(v));
      return n < 1 ? ctx.fail(`must be at least 1, got ${n}.`) : n;
    },
    fallback: undefined,
  },
  gatewayHttpPortBase: portField(PORTS.defaultGatewayHttpBase),
  gatewayVpnPortBase: portField(PORTS.defaultGatewayVpnBase),
  gatewayPortRangeSize: intField(100, 1, 65535),
  gatewayHosts: {
    doc: '(unset: every gateway on the main Docker host)',
    parse: (v, ctx) => parseGatewayHosts(v, { add: (problem, fix) => ctx.fail(problem, fix), setFix: (value) => ctx.setFix('gatewayHosts', value) }),
    example: GATEWAY_HOSTS_EXAMPLE,
    fallback: undefined,
  },
  // Host side only: inside the dev container nginx always listens on 80/443 (docs/CONTRACTS.md).
  stage1HttpPort: portField(PORTS.stage1Http),
  stage1HttpsPort: portField(PORTS.stage1Https),
  dnsPort: portField(PORTS.dns),
  dnsBindIp: {
    doc: '0.0.0.0',
    rawDefault: '0.0.0.0',
    example: '127.0.0.1',
    parse: (v, ctx) => (isValidIpv4(v) ? v : ctx.fail(`must be an IPv4 address of the host (or 0.0.0.0), got ${quote(v)}.`)),
    fallback: '0.0.0.0',
  },
  // Flat names resolve through the *.<domain> record, so flat naming turns it on by default.
  dnsWildcard: boolField((ctx) => String(ctx.raw('userContainerNaming') === 'flat'), 'false'),
  // 0 = do not publish the API on the Docker host (then powerDnsAdminUrl must say how to reach it).
  powerDnsApiHostPort: { ...intField(PORTS.powerDnsApi, 0, 65535) },
  powerDnsAdminUrl: {
    doc: 'http://127.0.0.1:<powerDnsApiHostPort>',
    rawDefault: (ctx) => (ctx.values.powerDnsApiHostPort === 0 ? undefined : `http://127.0.0.1:${ctx.values.powerDnsApiHostPort}`),
    required: {
      problem: (ctx) => `is required when ${ctx.full('powerDnsApiHostPort')} is 0 (the API is not published, so say how this machine reaches it).`,
      example: 'http://127.0.0.1:18081',
    },
    example: 'http://127.0.0.1:8081',
    parse: (v, ctx) => (isHttpUrl(v) ? v.replace(/\/+$/, '') : ctx.fail(`must be an http(s) URL without credentials, got ${quote(v)}.`)),
    fallback: '',
  },
  tlsMode: oneOfField(TLS_MODES, 'none', 'mkcert'),
  acmeEmail: {
    doc: '(required when tlsMode is letsencrypt)',
    when: (ctx) => ctx.values.tlsMode === 'letsencrypt',
    required: { problem: 'is required when tlsMode is letsencrypt (the ACME account e-mail).' },
    example: (ctx) => `admin@${ctx.values.domain}`,
    parse: (v, ctx) => (EMAIL_RE.test(v) ? v : ctx.fail(`must be an e-mail address, got ${quote(v)}.`)),
    fallback: '',
  },
  acmeDirectory: {
    doc: LETSENCRYPT_DIRECTORY,
    when: (ctx) => ctx.values.tlsMode === 'letsencrypt',
    rawDefault: LETSENCRYPT_DIRECTORY,
    example: LETSENCRYPT_DIRECTORY,
    parse: (v, ctx) => (isHttpUrl(v) && v.startsWith('https://') ? v : ctx.fail(`must be an https:// ACME directory URL, got ${quote(v)}.`)),
    fallback: LETSENCRYPT_DIRECTORY,
  },
  // A private ACME CA (step-ca, Pebble) serves its directory with a certificate of its own CA.
  acmeCaCertificates: pemField("the CAs of the ACME directory's HTTPS", (ctx) => ctx.values.tlsMode === 'letsencrypt'),
  // Let's Encrypt certificates live 90 days: renewing with 89 or more left would renew on every check.
  // Not read next to an unknown tlsMode (that one problem is enough).
  tlsRenewBeforeDays: {
    ...intField(DEFAULT_TLS_RENEW_BEFORE_DAYS, 1, 60),
    when: (ctx) => (TLS_MODES as readonly string[]).includes(ctx.raw('tlsMode') ?? 'none'),
  },
  userContainerNaming: oneOfField(USER_CONTAINER_NAMINGS, 'nested', 'nested'),
  devImage: imageField('dev'),
  powerDnsImage: imageField('pdns'),
  buildServerImage: imageField('build-server'),
  gatewayImage: imageField('gateway'),
  dockerHost: {
    doc: '(unset: DOCKER_HOST or the local socket)',
    example: 'ssh://deploy@203.0.113.10',
    parse: (v, ctx) => (DOCKER_HOST_RE.test(v) ? v : ctx.fail(`must be a Docker host URL (unix:///path, tcp://host:port or ssh://user@host), got ${quote(v)}.`)),
    fallback: undefined,
  },
  dockerSocketPath: {
    doc: '/var/run/docker.sock',
    rawDefault: '/var/run/docker.sock',
    example: '/var/run/docker.sock',
    parse: (v, ctx) => (/^\/[^\s:]*$/.test(v) ? v : ctx.fail(`must be an absolute path on the Docker host, got ${quote(v)}.`)),
    fallback: '/var/run/docker.sock',
  },
  retainDataVolumes: boolField('true', 'true'),
  ganymede: oneOfField(GANYMEDE_MODES, 'embedded', 'embedded'),
  gatewayIdleTimeoutSeconds: intField(DEFAULT_GATEWAY_IDLE_TIMEOUT_SECONDS, 1, 86400),
  gatewayPushIntervalSeconds: intField(DEFAULT_GATEWAY_PUSH_INTERVAL_SECONDS, 1, 86400),
  // Remote gateways call GANYMEDE_URL through stage 1: its certificate must verify (a private ACME CA's root).
  gatewayExtraCaCertificates: pemField('the CAs gateways trust for GANYMEDE_URL'),
};

/**
 * Every key the program reads, with its default as documented in the README
 * ("Configuration reference"); a test keeps the two in sync.
 */
export const CONFIG_KEYS: Readonly<Record<ConfigKey, string>> = Object.fromEntries(
  Object.entries(FIELDS).map(([key, field]) => [key, field.doc]),
) as Record<ConfigKey, string>;

const KEYS = Object.keys(FIELDS) as ConfigKey[];

/** Reads every field in table order; problems go to the collector. */
function readFields(raw: RawConfig, options: ParseOptions, c: Collector): FieldValues {
  const values = {} as Record<ConfigKey, unknown>;
  for (const key of KEYS) {
    const field = FIELDS[key] as Field<unknown>;
    const ctx: FieldContext = {
      values: values as unknown as FieldValues,
      options,
      raw: (k) => (raw[k] === '' ? undefined : raw[k]),
      full: (k) => c.full(k),
      setFix: (k, value) => c.setFix(k, value),
      fail: (problem, fix) => {
        c.add(key, problem, fix ?? c.setFix(key, resolve(field.example ?? '', ctx)));
        return INVALID;
      },
    };
    values[key] = readField(field, key, ctx, c);
  }
  return values as unknown as FieldValues;
}

function readField(field: Field<unknown>, key: ConfigKey, ctx: FieldContext, c: Collector): unknown {
  if (field.when && !field.when(ctx)) return field.fallback;
  const value = ctx.raw(key) ?? (field.rawDefault === undefined ? undefined : resolve(field.rawDefault, ctx));
  if (value === undefined) {
    if (field.required) {
      const example = field.required.example ?? resolve(field.example ?? '', ctx);
      c.add(key, resolve(field.required.problem, ctx), c.setFix(key, example));
    }
    return field.fallback;
  }
  const parsed = field.parse(value, ctx);
  if (parsed !== INVALID) return parsed;
  // An invalid value (reported) reads as the default, so the rules judge the rest as if it were unset.
  const dflt = field.rawDefault === undefined ? undefined : resolve(field.rawDefault, ctx);
  const again = dflt === undefined || dflt === value ? INVALID : field.parse(dflt, ctx);
  return again === INVALID ? field.fallback : again;
}

// ------------------------------------------------------------------ rules

/** The fields plus what the rules derive from several of them. */
interface Derived {
  raw: RawConfig;
  v: FieldValues;
  gatewayHosts: GatewayHostConfig[];
  httpRange: [number, number];
  vpnRange: [number, number];
}

type Rule = (d: Derived, c: Collector) => void;

/** The gateway hosts: the configured list, or every gateway on the main host. */
function gatewayHostsOf(raw: RawConfig, v: FieldValues): GatewayHostConfig[] {
  if (v.gatewayHosts === undefined) {
    // An invalid gatewayPoolSize (reported) still lets the rules run on one gateway.
    const n = v.gatewayPoolSize ?? (raw.gatewayPoolSize === undefined || raw.gatewayPoolSize === '' ? 3 : 1);
    return [{ name: 'main', kind: 'main', poolSize: n, firstIndex: 0 }];
  }
  if (v.gatewayHosts.length === 0) return [{ name: 'main', kind: 'main', poolSize: v.gatewayPoolSize ?? 1, firstIndex: 0 }];
  return v.gatewayHosts;
}

function poolSizeOf(hosts: readonly GatewayHostConfig[]): number {
  return hosts.reduce((s, h) => s + h.poolSize, 0);
}

/** gatewayPoolSize, when set next to gatewayHosts, must be their sum. */
const poolSizeMatchesHosts: Rule = ({ v }, c) => {
  if (v.gatewayHosts === undefined || v.gatewayHosts.length === 0 || v.gatewayPoolSize === undefined) return;
  const sum = poolSizeOf(v.gatewayHosts);
  if (sum === v.gatewayPoolSize) return;
  c.add(
    'gatewayPoolSize',
    `is ${v.gatewayPoolSize} but the poolSize values in ${c.full('gatewayHosts')} add up to ${sum}.`,
    `make them agree: ${c.setFix('gatewayPoolSize', String(sum))} or change the per-host pool sizes.`,
  );
};

const portRangesEndBelow65536: Rule = ({ httpRange, vpnRange }, c) => {
  for (const [key, range] of [
    ['gatewayHttpPortBase', httpRange],
    ['gatewayVpnPortBase', vpnRange],
  ] as const) {
    if (range[1] > 65535) c.add(key, `range ${fmtRange(range)} (base + gatewayPortRangeSize) ends above 65535.`, 'lower the base or gatewayPortRangeSize.');
  }
};

/** Every gateway index needs a port in each range. */
const poolFitsPortRange: Rule = ({ raw, v, gatewayHosts, httpRange, vpnRange }, c) => {
  const highestIndex = Math.max(...gatewayHosts.map((h) => h.firstIndex + h.poolSize - 1));
  if (highestIndex + 1 <= v.gatewayPortRangeSize) return;
  const hostsSet = raw.gatewayHosts !== undefined && raw.gatewayHosts !== '';
  const key = hostsSet && v.gatewayPoolSize === undefined ? 'gatewayHosts' : 'gatewayPoolSize';
  c.add(
    key,
    `needs gateway indices 0-${highestIndex} but gatewayPortRangeSize reserves only ${v.gatewayPortRangeSize} ports per range ` +
      `(HTTP ${fmtRange(httpRange)}, VPN ${fmtRange(vpnRange)}).`,
    `lower the pool or raise the range: ${c.setFix('gatewayPortRangeSize', String(highestIndex + 1))} (keep ranges of stacks on one host disjoint).`,
  );
};

const portRangesDisjoint: Rule = ({ httpRange, vpnRange }, c) => {
  if (!rangesOverlap(httpRange, vpnRange)) return;
  c.add(
    'gatewayVpnPortBase',
    `VPN range ${fmtRange(vpnRange)} overlaps the HTTP range ${fmtRange(httpRange)} (${c.full('gatewayHttpPortBase')}).`,
    c.setFix('gatewayVpnPortBase', String(PORTS.defaultGatewayVpnBase)),
  );
};

/** The gateway ranges must not contain the stage-1, DNS or PowerDNS API ports. */
const portRangesAvoidFixedPorts: Rule = ({ v, httpRange, vpnRange }, c) => {
  const fixed: { port: number; what: string }[] = [
    { port: v.stage1HttpPort, what: `stage-1 HTTP (${c.full('stage1HttpPort')})` },
    { port: v.stage1HttpsPort, what: `stage-1 HTTPS (${c.full('stage1HttpsPort')})` },
    { port: v.dnsPort, what: `DNS (${c.full('dnsPort')})` },
    { port: v.powerDnsApiHostPort, what: `PowerDNS API (${c.full('powerDnsApiHostPort')})` },
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
};

/** Stage-1 HTTP, HTTPS, DNS and the PowerDNS API are published on distinct host ports. */
const fixedPortsDistinct: Rule = ({ v }, c) => {
  const { stage1HttpPort: http, stage1HttpsPort: https, dnsPort: dns, powerDnsApiHostPort: api } = v;
  if (http === https) {
    c.add('stage1HttpsPort', `must differ from ${c.full('stage1HttpPort')} (${http}).`, c.setFix('stage1HttpsPort', String(PORTS.stage1Https)));
  }
  if (dns === http || dns === https) {
    c.add('dnsPort', `must not be ${dns} (used by the stage-1 nginx).`, c.setFix('dnsPort', '53'));
  }
  if (api !== 0 && (api === http || api === https || api === dns)) {
    c.add('powerDnsApiHostPort', `must not be ${api} (used by the stage-1 nginx or DNS).`, c.setFix('powerDnsApiHostPort', '8081'));
  }
};

/** uc-<id>--org-<uuid>.<domain> names resolve only through the *.<domain> record. */
const flatNamingNeedsWildcard: Rule = ({ v }, c) => {
  if (v.userContainerNaming !== 'flat' || v.dnsWildcard) return;
  c.add(
    'dnsWildcard',
    `is false, but ${c.full('userContainerNaming')} is flat: uc-<id>--org-<uuid>.${v.domain} names resolve only through the *.${v.domain} record.`,
    `pulumi config rm ${c.full('dnsWildcard')} (flat turns it on) or ${c.setFix('userContainerNaming', 'nested')}.`,
  );
};

/**
 * The rules between keys. Rules between a TLS mode and its settings are the
 * `when`/`required` of the ACME fields; ganymede mode has no dependent key yet.
 */
const RULES: readonly Rule[] = [
  poolSizeMatchesHosts,
  portRangesEndBelow65536,
  poolFitsPortRange,
  portRangesDisjoint,
  portRangesAvoidFixedPorts,
  fixedPortsDistinct,
  flatNamingNeedsWildcard,
];

function tlsConfigOf(v: FieldValues): TlsConfig {
  if (v.tlsMode === 'mkcert') return { mode: 'mkcert', renewBeforeDays: v.tlsRenewBeforeDays };
  if (v.tlsMode === 'letsencrypt') {
    return {
      mode: 'letsencrypt',
      acmeEmail: v.acmeEmail,
      acmeDirectory: v.acmeDirectory,
      ...(v.acmeCaCertificates === undefined ? {} : { acmeCaCertificates: v.acmeCaCertificates }),
      renewBeforeDays: v.tlsRenewBeforeDays,
    };
  }
  return { mode: 'none' };
}

// ------------------------------------------------------------------ parse

/** Keys in our namespace that the program does not know are almost always typos that would silently fall back to a default. */
function reportUnknownKeys(raw: RawConfig, c: Collector): void {
  for (const key of Object.keys(raw)) {
    if (key in FIELDS) continue;
    c.add(
      key,
      'is not a configuration key of this program (a typo would silently fall back to a default).',
      `pulumi config rm ${c.full(key)}; known keys: ${KEYS.join(', ')}.`,
    );
  }
}

/**
 * Validates raw stack configuration (bare keys → string values, as `pulumi
 * config` stores them) and returns the typed config, or throws a
 * StackConfigError listing every problem.
 */
export function parseStackConfig(raw: RawConfig, options: ParseOptions = {}): StackConfig {
  const project = options.project ?? PROJECT;
  const c = new Collector(project);
  reportUnknownKeys(raw, c);
  const v = readFields(raw, options, c);
  const gatewayHosts = gatewayHostsOf(raw, v);
  const derived: Derived = {
    raw,
    v,
    gatewayHosts,
    httpRange: portRange(v.gatewayHttpPortBase, v.gatewayPortRangeSize),
    vpnRange: portRange(v.gatewayVpnPortBase, v.gatewayPortRangeSize),
  };
  for (const rule of RULES) rule(derived, c);
  if (c.issues.length > 0) throw new StackConfigError(project, c.issues);

  const images = {} as Record<ImageKey, ImageSource>;
  for (const key of IMAGE_KEYS) images[key] = v[IMAGE_CONFIG_KEYS[key]];
  return {
    project,
    envName: v.envName,
    domain: v.domain,
    publicIp: v.publicIp,
    gatewayPoolSize: poolSizeOf(gatewayHosts),
    gatewayHttpPortBase: v.gatewayHttpPortBase,
    gatewayVpnPortBase: v.gatewayVpnPortBase,
    gatewayPortRangeSize: v.gatewayPortRangeSize,
    gatewayHosts,
    stage1HttpPort: v.stage1HttpPort,
    stage1HttpsPort: v.stage1HttpsPort,
    dnsPort: v.dnsPort,
    dnsBindIp: v.dnsBindIp,
    dnsWildcard: v.dnsWildcard,
    userContainerNaming: v.userContainerNaming,
    powerDnsApiHostPort: v.powerDnsApiHostPort,
    powerDnsAdminUrl: v.powerDnsAdminUrl,
    tls: tlsConfigOf(v),
    images,
    dockerHost: v.dockerHost,
    dockerSocketPath: v.dockerSocketPath,
    retainDataVolumes: v.retainDataVolumes,
    ganymede: v.ganymede,
    gatewayIdleTimeoutSeconds: v.gatewayIdleTimeoutSeconds,
    gatewayPushIntervalSeconds: v.gatewayPushIntervalSeconds,
    ...(v.gatewayExtraCaCertificates === undefined ? {} : { gatewayExtraCaCertificates: v.gatewayExtraCaCertificates }),
  };
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
