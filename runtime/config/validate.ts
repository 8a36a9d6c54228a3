/**
 * Validation of config.json and secrets.json: every problem is collected
 * (field path + what to do), so one run shows everything wrong with a file.
 * Secret VALUES never appear in a problem, only their field names.
 */
import * as path from 'path';
import type { GatewaySpec } from '../inventory';
import { isUserContainerNaming, isValidDomain, isValidEnvName, isValidIpv4, isValidPort, type UserContainerNaming } from '../naming';
import { validateInventory } from '../validation';
import { DEFAULT_HOST_HEALTH, RUNTIME_CONFIG_VERSION, type RuntimeApiConfig, type RuntimeConfig, type RuntimeSecrets, type RuntimeTlsConfig } from './types';

type Json = Record<string, unknown>;

/** Collects problems as `field: what is wrong (fix)`. */
export class Problems {
  readonly list: string[] = [];
  add(field: string, message: string): void {
    this.list.push(`${field}: ${message}`);
  }
}

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function describe(v: unknown): string {
  if (v === undefined) return 'missing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v === 'string' ? `${JSON.stringify(v.length > 60 ? `${v.slice(0, 60)}…` : v)}` : `${typeof v} ${JSON.stringify(v)}`;
}

/** `missing`, or `got <value>`. */
function shown(v: unknown): string {
  return v === undefined ? 'missing' : `got ${describe(v)}`;
}

/** Reads fields of one JSON object, reporting under `prefix`; unknown keys are problems (typos must not pass silently). */
class Section {
  private readonly seen = new Set<string>();
  constructor(
    readonly obj: Json,
    readonly prefix: string,
    readonly p: Problems,
  ) {}

  private name(key: string): string {
    return this.prefix ? `${this.prefix}.${key}` : key;
  }

  raw(key: string): unknown {
    this.seen.add(key);
    return this.obj[key];
  }

  string(key: string, fix: string, opts: { optional?: boolean; secret?: boolean; check?: (v: string) => boolean } = {}): string | undefined {
    const v = this.raw(key);
    if (v === undefined && opts.optional) return undefined;
    if (typeof v !== 'string' || v === '' || (opts.check && !opts.check(v))) {
      this.p.add(this.name(key), `${opts.secret ? (v === undefined ? 'missing' : 'invalid') : shown(v)}; ${fix}`);
      return undefined;
    }
    return v;
  }

  number(key: string, fix: string, opts: { optional?: boolean; check: (v: number) => boolean }): number | undefined {
    const v = this.raw(key);
    if (v === undefined && opts.optional) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v) || !opts.check(v)) {
      this.p.add(this.name(key), `${shown(v)}; ${fix}`);
      return undefined;
    }
    return v;
  }

  section(key: string, fix: string, optional = false): Section | undefined {
    const v = this.raw(key);
    if (v === undefined && optional) return undefined;
    if (!isObject(v)) {
      this.p.add(this.name(key), `${shown(v)}; ${fix}`);
      return undefined;
    }
    return new Section(v, this.name(key), this.p);
  }

  stringArray(key: string, fix: string, optional = false): string[] | undefined {
    const v = this.raw(key);
    if (v === undefined && optional) return undefined;
    if (!Array.isArray(v) || v.length === 0 || !v.every((x) => typeof x === 'string' && x !== '')) {
      this.p.add(this.name(key), `${shown(v)}; ${fix}`);
      return undefined;
    }
    return v as string[];
  }

  /** Call after reading every known key. */
  noOthers(allowed: string[] = []): void {
    for (const k of Object.keys(this.obj)) {
      if (!this.seen.has(k) && !allowed.includes(k)) this.p.add(this.name(k), 'unknown field; remove it (or check its spelling)');
    }
  }
}

const isHttpUrl = (v: string): boolean => {
  try {
    const u = new URL(v);
    return (u.protocol === 'http:' || u.protocol === 'https:') && u.username === '' && u.password === '';
  } catch {
    return false;
  }
};
const isAbsolutePath = (v: string): boolean => path.isAbsolute(v);
const positive = (v: number): boolean => v > 0 && v <= 86_400 * 7;

/** `host:port`, host an IPv4 address, `localhost` or a DNS name; `[::]:6000` style IPv6 too. */
export function parseListen(v: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(v);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (!isValidPort(port)) return undefined;
  return { host: m[1] ?? m[2], port };
}

function tlsConfig(s: Section): RuntimeTlsConfig | undefined {
  const mode = s.string('mode', 'one of "mkcert", "letsencrypt", "none" (stack config demiurge:tlsMode)', { check: (v) => ['mkcert', 'letsencrypt', 'none'].includes(v) });
  // The stack output tlsRuntime's `issuer` may be copied along; it must agree with the mode.
  const issuer = s.raw('issuer');
  const expected = { mkcert: 'dev-ca', letsencrypt: 'acme', none: 'none' }[mode ?? 'none'];
  if (issuer !== undefined && mode !== undefined && issuer !== expected) s.p.add(`${s.prefix}.issuer`, `is ${describe(issuer)} but mode ${mode} means ${JSON.stringify(expected)}; write both from the same tlsRuntime output`);
  let out: RuntimeTlsConfig | undefined;
  if (mode === 'none') out = { mode };
  else if (mode === 'mkcert') {
    const caroot = s.string('caroot', 'the absolute path of the mkcert CAROOT (rootCA.pem, rootCA-key.pem), e.g. /var/lib/demiurge/tls/ca', { check: isAbsolutePath });
    if (caroot) out = { mode, caroot };
  } else if (mode === 'letsencrypt') {
    const directoryUrl = s.string('directoryUrl', 'the ACME directory URL, e.g. https://acme-v02.api.letsencrypt.org/directory', { check: isHttpUrl });
    const email = s.string('email', 'the ACME account e-mail', { check: (v) => /^[^\s@]+@[^\s@]+$/.test(v) });
    const stateDir = s.string('stateDir', 'the absolute path of the ACME account directory, e.g. /var/lib/demiurge/tls/acme', { check: isAbsolutePath });
    const resolvers = s.stringArray('resolvers', 'a non-empty array of host:port DNS servers (the environment PowerDNS, e.g. ["demiurge-dev-001-pdns:53"])');
    if (resolvers) resolvers.forEach((r, i) => parseListen(r) === undefined && s.p.add(`${s.prefix}.resolvers[${i}]`, `${shown(r)}; write host:port`));
    const caCertificatesFile = s.string('caCertificatesFile', 'an absolute path of a PEM file, or leave it out', { optional: true, check: isAbsolutePath });
    if (directoryUrl && email && stateDir && resolvers) out = { mode, directoryUrl, email, stateDir, resolvers, ...(caCertificatesFile ? { caCertificatesFile } : {}) };
  }
  // Fields of another mode count as unknown: a half-edited file must not pass.
  s.noOthers(['issuer']);
  return out;
}

function apiConfig(s: Section): RuntimeApiConfig | undefined {
  const listenText = s.string('listen', 'write host:port, e.g. "0.0.0.0:6000"', { check: (v) => parseListen(v) !== undefined });
  const publicUrl = s.string('publicUrl', 'the public URL of the API, e.g. https://ganymede.<domain>', { check: isHttpUrl });
  const gatewayUrl = s.string('gatewayUrl', 'the URL gateways reach the API at, e.g. http://demiurge-<env>-dev:6000', { check: isHttpUrl });
  const reconcile = s.number('reconcileIntervalSeconds', 'a number of seconds > 0 (default 60)', { optional: true, check: positive }) ?? 60;
  const reaperSection = s.section('reaper', 'an object { intervalSeconds, silenceSeconds }, or leave it out for 30 / 600', true);
  let reaper = { intervalSeconds: 30, silenceSeconds: 600 };
  if (reaperSection) {
    reaper = {
      intervalSeconds: reaperSection.number('intervalSeconds', 'a number of seconds > 0 (default 30)', { optional: true, check: positive }) ?? 30,
      silenceSeconds: reaperSection.number('silenceSeconds', 'a number of seconds > 0 (default 600)', { optional: true, check: positive }) ?? 600,
    };
    reaperSection.noOthers();
  }
  const healthSection = s.section('hostHealth', 'an object { intervalSeconds, failuresBeforeUnreachable, timeoutMs }, or leave it out for 15 / 3 / 3000', true);
  let hostHealth = { ...DEFAULT_HOST_HEALTH };
  if (healthSection) {
    hostHealth = {
      intervalSeconds: healthSection.number('intervalSeconds', `a number of seconds > 0 (default ${DEFAULT_HOST_HEALTH.intervalSeconds})`, { optional: true, check: positive }) ?? DEFAULT_HOST_HEALTH.intervalSeconds,
      failuresBeforeUnreachable:
        healthSection.number('failuresBeforeUnreachable', `a whole number ≥ 1 (default ${DEFAULT_HOST_HEALTH.failuresBeforeUnreachable})`, { optional: true, check: (n) => Number.isInteger(n) && n >= 1 }) ??
        DEFAULT_HOST_HEALTH.failuresBeforeUnreachable,
      timeoutMs: healthSection.number('timeoutMs', `a number of milliseconds > 0 (default ${DEFAULT_HOST_HEALTH.timeoutMs})`, { optional: true, check: positive }) ?? DEFAULT_HOST_HEALTH.timeoutMs,
    };
    healthSection.noOthers();
  }
  s.noOthers();
  if (!listenText || !publicUrl || !gatewayUrl) return undefined;
  return { listen: parseListen(listenText) as { host: string; port: number }, publicUrl: publicUrl.replace(/\/+$/, ''), gatewayUrl: gatewayUrl.replace(/\/+$/, ''), reconcileIntervalSeconds: reconcile, reaper, hostHealth };
}

type ConfigWithoutSecrets = Omit<RuntimeConfig, 'secrets'>;

type Config = ConfigWithoutSecrets;

function databaseConfig(db: Section, names = 'ganymede'): Config['database'] | undefined {
  const host = db.string('host', 'the PostgreSQL host name or address');
  const port = db.number('port', 'a TCP port 1-65535 (5432)', { optional: true, check: isValidPort }) ?? 5432;
  const name = db.string('database', `the database name (${names})`);
  const user = db.string('user', `the role name (${names})`);
  db.noOthers();
  return host && name && user ? { host, port, database: name, user } : undefined;
}

/** `domain` (when valid) must lie in the zone. */
function powerdnsConfig(pd: Section, domain: string | undefined, p: Problems): Config['powerdns'] | undefined {
  const apiUrl = pd.string('apiUrl', 'the PowerDNS HTTP API base URL, e.g. http://demiurge-<env>-pdns:8081', { check: isHttpUrl });
  const zone = pd.string('zone', 'the zone the names live in (the domain or a parent of it), or leave it out for the domain', { optional: true, check: (v) => isValidDomain(v.replace(/\.$/, '')) });
  const dbSection = pd.section('database', "an object { host, port, database, user } naming PowerDNS's gpgsql database (password: secrets powerdnsDatabasePassword), or leave it out to write records through the API", true);
  const database = dbSection ? databaseConfig(dbSection, 'pdns') : undefined;
  pd.noOthers();
  if (dbSection && !database) return undefined;
  if (apiUrl && domain) {
    const z = (zone ?? domain).replace(/\.$/, '');
    if (domain !== z && !domain.endsWith(`.${z}`)) p.add('powerdns.zone', `${z} does not contain the domain ${domain}; write the domain or a parent zone`);
    else return { apiUrl: apiUrl.replace(/\/+$/, ''), zone: z, ...(database ? { database } : {}) };
  }
  return undefined;
}

function nginxConfig(ng: Section): Config['nginx'] | undefined {
  const confDir = ng.string('confDir', 'the absolute path of the allocator-owned nginx directory, e.g. /etc/nginx/demiurge', { check: isAbsolutePath });
  const t = ng.section('tls', 'an object { certPath, keyPath } (the stage-1 base certificate)');
  const certPath = t?.string('certPath', 'the absolute path of the base certificate, e.g. /etc/demiurge/tls/fullchain.pem', { check: isAbsolutePath });
  const keyPath = t?.string('keyPath', 'the absolute path of its key, e.g. /etc/demiurge/tls/privkey.pem', { check: isAbsolutePath });
  t?.noOthers();
  const listen = ng.string('listen', 'nginx listen parameters, e.g. "443 ssl", or leave it out', { optional: true });
  const statusListen = ng.string('statusListen', 'a loopback host:port, e.g. 127.0.0.1:8099, or leave it out', { optional: true, check: (v) => parseListen(v) !== undefined });
  const testCommand = ng.stringArray('testCommand', 'a non-empty array of strings, e.g. ["nginx","-t","-q"], or leave it out', true);
  const reloadCommand = ng.stringArray('reloadCommand', 'a non-empty array of strings, e.g. ["nginx","-s","reload"], or leave it out', true);
  ng.noOthers();
  if (!confDir || !certPath || !keyPath) return undefined;
  const nginx: Config['nginx'] = { confDir, tls: { certPath, keyPath } };
  if (listen) nginx.listen = listen;
  if (statusListen) nginx.statusListen = statusListen;
  if (testCommand) nginx.testCommand = testCommand;
  if (reloadCommand) nginx.reloadCommand = reloadCommand;
  return nginx;
}

function inventoryConfig(inv: unknown, p: Problems): GatewaySpec[] | undefined {
  try {
    return validateInventory(inv);
  } catch (err) {
    p.add('inventory', `${err instanceof Error ? err.message : String(err)}; write the stack output gatewayInventory (an array of { name, host, httpPort, vpnPort })`);
    return undefined;
  }
}

/** Validates a parsed config.json; `file` names it in problems. Returns undefined when there are problems (they are in `p`). */
export function validateConfig(input: unknown, file: string, p: Problems): ConfigWithoutSecrets | undefined {
  if (!isObject(input)) {
    p.add('(top level)', `${shown(input)}; the file must hold one JSON object`);
    return undefined;
  }
  const s = new Section(input, '', p);
  const version = s.raw('version');
  if (version !== RUNTIME_CONFIG_VERSION) p.add('version', `${shown(version)}; this runtime reads version ${RUNTIME_CONFIG_VERSION} (run \`pulumi up\` with the same repository revision as the runtime)`);
  const envName = s.string('envName', 'a short lowercase DNS label (stack output envName)', { check: isValidEnvName });
  const domain = s.string('domain', 'a lowercase DNS name without trailing dot (stack output domain)', { check: isValidDomain });
  const publicIp = s.string('publicIp', 'an IPv4 address (the stage-1 host, stack config demiurge:publicIp)', { check: isValidIpv4 });
  const schema = s.string('schema', 'a PostgreSQL schema name [a-z_][a-z0-9_]*, or leave it out for gateway_pool', { optional: true, check: (v) => /^[a-z_][a-z0-9_]{0,62}$/.test(v) }) ?? 'gateway_pool';

  const dbSection = s.section('database', 'an object { host, port, database, user } (the password is in the secrets file)');
  const database = dbSection ? databaseConfig(dbSection) : undefined;

  const pdSection = s.section('powerdns', 'an object { apiUrl, zone } (the API key is in the secrets file)');
  const powerdns = pdSection ? powerdnsConfig(pdSection, domain, p) : undefined;

  const ngSection = s.section('nginx', 'an object { confDir, tls: { certPath, keyPath } }');
  const nginx = ngSection ? nginxConfig(ngSection) : undefined;

  const namingRaw = s.raw('userContainerNaming');
  let naming: UserContainerNaming = 'nested';
  if (namingRaw !== undefined) {
    if (isUserContainerNaming(namingRaw)) naming = namingRaw;
    else p.add('userContainerNaming', `${shown(namingRaw)}; write "nested" or "flat" (stack config demiurge:userContainerNaming)`);
  }

  const inventory = inventoryConfig(s.raw('inventory'), p);

  const tlsSection = s.section('tls', 'an object { mode: "mkcert" | "letsencrypt" | "none", … } (stack output tlsRuntime)');
  const tls = tlsSection ? tlsConfig(tlsSection) : undefined;
  const apiSection = s.section('api', 'an object { listen, publicUrl, gatewayUrl, reconcileIntervalSeconds?, reaper? }');
  const api = apiSection ? apiConfig(apiSection) : undefined;

  const secretsRaw = s.string('secretsFile', 'the path of the secrets file (mode 0600), e.g. /etc/demiurge/runtime/secrets.json');
  s.noOthers();

  if (p.list.length > 0 || !envName || !domain || !publicIp || !database || !powerdns || !nginx || !inventory || !tls || !api || !secretsRaw) return undefined;
  return {
    version: RUNTIME_CONFIG_VERSION,
    envName,
    domain,
    publicIp,
    schema,
    database,
    powerdns,
    nginx,
    userContainerNaming: naming,
    inventory,
    tls,
    api,
    secretsFile: path.resolve(path.dirname(file), secretsRaw),
    configFile: file,
  };
}

/** Validates a parsed secrets.json against the config (which gateways need tokens, whether a certificate key is needed). */
export function validateSecrets(input: unknown, cfg: ConfigWithoutSecrets, p: Problems): RuntimeSecrets | undefined {
  if (!isObject(input)) {
    p.add('(top level)', `got ${input === null ? 'null' : Array.isArray(input) ? 'an array' : typeof input}; the secrets file must hold one JSON object`);
    return undefined;
  }
  const s = new Section(input, '', p);
  const databasePassword = s.string('databasePassword', 'the password of the database user (stack secret)', { secret: true });
  const powerdnsApiKey = s.string('powerdnsApiKey', 'the PowerDNS API key (stack secret powerDnsApiKey)', { secret: true });
  // Required exactly when the config names PowerDNS's database; the key is refused otherwise, so a stale secret is noticed.
  const powerdnsDatabasePassword = cfg.powerdns.database
    ? (s.string('powerdnsDatabasePassword', `the password of PowerDNS's database role ${cfg.powerdns.database.user} (config powerdns.database)`, { secret: true }) ?? null)
    : null;
  const operatorToken = s.string('operatorToken', 'the stack secret operatorToken: 16-200 characters of [A-Za-z0-9._~+/=-]', { secret: true, check: (v) => /^[A-Za-z0-9._~+/=-]{16,200}$/.test(v) });
  const keyRaw = s.raw('orgCertificateKey');
  const needsKey = cfg.tls.mode !== 'none' && cfg.userContainerNaming === 'nested';
  let orgCertificateKey: string | null = null;
  if (typeof keyRaw === 'string' && keyRaw !== '') orgCertificateKey = keyRaw;
  else if (keyRaw !== undefined && keyRaw !== null) p.add('orgCertificateKey', 'invalid; write the stack secret orgCertificateKey (base64 of 32 bytes) or null');
  else if (needsKey) p.add('orgCertificateKey', `missing; tls.mode ${cfg.tls.mode} with nested naming issues per-organization certificates, whose keys are encrypted with the stack secret orgCertificateKey`);
  const tokensSection = s.section('gatewayRegistrationTokens', 'an object mapping every gateway name to its registration token (stack secret gatewayRegistrationTokens)');
  let tokens: Record<string, string> | undefined;
  if (tokensSection) {
    tokens = {};
    for (const [name, v] of Object.entries(tokensSection.obj)) {
      tokensSection.raw(name);
      if (typeof v !== 'string' || !/^[A-Za-z0-9._~+/=-]{16,200}$/.test(v)) p.add(`gatewayRegistrationTokens.${name}`, 'invalid; a registration token is 16-200 characters of [A-Za-z0-9._~+/=-]');
      else tokens[name] = v;
    }
    const missing = cfg.inventory.map((g) => g.name).filter((n) => !(n in (tokensSection.obj as Json)));
    if (missing.length > 0) p.add('gatewayRegistrationTokens', `no token for ${missing.join(', ')}; write one per inventory gateway (the same stack output), or the gateway cannot call /gateway/ready`);
  }
  s.noOthers();
  if (p.list.length > 0 || databasePassword === undefined || !powerdnsApiKey || !operatorToken || !tokens) return undefined;
  return { databasePassword, powerdnsApiKey, powerdnsDatabasePassword, operatorToken, orgCertificateKey, gatewayRegistrationTokens: tokens };
}
