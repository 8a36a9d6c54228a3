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
 *
 * Parts: the types (config-types.ts), the field kinds (config-field-kinds.ts),
 * the rules and the problem collector (config-rules.ts), the gateway hosts list
 * (config-gateway-hosts.ts).
 */
import * as pulumi from '@pulumi/pulumi';
import { PORTS, USER_CONTAINER_NAMINGS, isValidDomain, isValidEnvName, isValidIpv4, portRange } from '../runtime/naming';
import { DEFAULT_HOST_HEALTH } from '../runtime/config/types';
import { parseGatewayHosts } from './config-gateway-hosts';
import { Collector, RULES, gatewayHostsOf, poolSizeOf, quote, tlsConfigOf, type Derived } from './config-rules';
import type { ConfigKey, FieldValues, ImageKey, ImageSource, ParseOptions, RawConfig, StackConfig } from './config-types';
import {
  DEFAULT_GATEWAY_IDLE_TIMEOUT_SECONDS,
  DEFAULT_GATEWAY_PUSH_INTERVAL_SECONDS,
  DEFAULT_TLS_RENEW_BEFORE_DAYS,
  GANYMEDE_MODES,
  IMAGE_KEYS,
  LETSENCRYPT_DIRECTORY,
  PROJECT,
  StackConfigError,
  TLS_MODES,
} from './config-types';
import {
  DOCKER_HOST_RE,
  EMAIL_RE,
  type Field,
  type FieldContext,
  type FieldTable,
  IMAGE_CONFIG_KEYS,
  INVALID,
  MAX_DOMAIN_LENGTH,
  boolField,
  describeNumberProblem,
  imageField,
  intField,
  isHttpUrl,
  oneOfField,
  parseWholeNumber,
  pemField,
  portField,
  resolve,
} from './config-field-kinds';

export * from './config-types';

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
  hostHealthIntervalSeconds: intField(DEFAULT_HOST_HEALTH.intervalSeconds, 1, 3600),
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
    hostHealthIntervalSeconds: v.hostHealthIntervalSeconds,
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
