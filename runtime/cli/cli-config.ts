import { existsSync } from 'fs';
import type { GatewayAllocatorOptions } from '../allocator';
import { databaseUrl, powerDnsDatabaseUrl } from '../config/allocator-options';
import { DEFAULT_RUNTIME_CONFIG_PATH, RUNTIME_CONFIG_ENV, type RuntimeConfig } from '../config/types';
import { AllocatorError } from '../errors';
import { isUserContainerNaming } from '../naming';
import { DevCaIssuer } from '../tls/dev-ca-issuer';
import { OrgCertificates } from '../tls/org-certificates';

/** Every setting: flag name, environment variable, what it is. The CLI's help and README table come from here. */
export const SETTINGS = [
  { flag: 'database-url', env: 'DATABASE_URL', help: 'PostgreSQL connection string of the pool (the stack output databaseUrl)' },
  { flag: 'env', env: 'ENV_NAME', help: 'environment name (the stack output envName)' },
  { flag: 'domain', env: 'DOMAIN', help: 'environment domain' },
  { flag: 'public-ip', env: 'PUBLIC_IP', help: 'address organization names resolve to (stage-1 host); default 127.0.0.1' },
  { flag: 'pdns-api-url', env: 'PDNS_API_URL', help: 'PowerDNS HTTP API base URL' },
  { flag: 'pdns-api-key', env: 'PDNS_API_KEY', help: 'PowerDNS API key (prefer the variable: flags show in ps)' },
  { flag: 'zone', env: 'PDNS_ZONE', help: 'PowerDNS zone; default the domain' },
  { flag: 'pdns-database-url', env: 'PDNS_DATABASE_URL', help: "PowerDNS's gpgsql database: write records to its tables (prefer the variable: flags show in ps); default: through the API" },
  { flag: 'nginx-conf-dir', env: 'NGINX_CONF_DIR', help: "directory of the allocator's stage-1 nginx files" },
  { flag: 'tls-cert', env: 'NGINX_TLS_CERT', help: 'base certificate of the organization server' },
  { flag: 'tls-key', env: 'NGINX_TLS_KEY', help: 'its key' },
  { flag: 'nginx-listen', env: 'NGINX_LISTEN', help: 'listen parameters of the organization server; default "443 ssl"' },
  { flag: 'nginx-status-listen', env: 'NGINX_STATUS_LISTEN', help: 'loopback status server; default 127.0.0.1:8099' },
  { flag: 'nginx-test-command', env: 'NGINX_TEST_COMMAND', help: 'JSON array, default ["nginx","-t","-q"]' },
  { flag: 'nginx-reload-command', env: 'NGINX_RELOAD_COMMAND', help: 'JSON array, default ["nginx","-s","reload"]' },
  { flag: 'schema', env: 'ALLOCATOR_SCHEMA', help: 'PostgreSQL schema of the pool; default gateway_pool' },
  { flag: 'user-container-naming', env: 'USER_CONTAINER_NAMING', help: 'nested (default) or flat (uc-…--org-…, no per-org certificates)' },
  { flag: 'org-cert-issuer', env: 'ORG_CERT_ISSUER', help: 'none (default) or dev-ca: mint per-org certificates from the mkcert CA (ACME ones are the API server\'s job)' },
  { flag: 'dev-caroot', env: 'DEV_CAROOT', help: 'mkcert CAROOT (rootCA.pem, rootCA-key.pem) for org-cert-issuer dev-ca' },
  { flag: 'org-cert-key', env: 'ORG_CERT_KEY', help: 'key encrypting per-org private keys at rest (the stack secret orgCertificateKey)' },
] as const;

export type SettingName = (typeof SETTINGS)[number]['flag'];
export type Settings = Partial<Record<SettingName, string>>;

/** Flags win over the environment, which wins over the runtime config file; empty values count as unset. */
export function resolveSettings(flags: Settings, env: NodeJS.ProcessEnv, file: Settings = {}): Settings {
  const out: Settings = {};
  for (const s of SETTINGS) {
    const v = [flags[s.flag], env[s.env], file[s.flag]].find((x) => x !== undefined && x !== '');
    if (v !== undefined) out[s.flag] = v;
  }
  return out;
}

/**
 * The runtime config file the CLI reads, if any: --config (must exist), else
 * $DEMIURGE_RUNTIME_CONFIG (must exist), else the dev container's
 * /etc/demiurge/runtime/config.json when it exists.
 */
export function cliConfigPath(flag: string | undefined, env: NodeJS.ProcessEnv, defaultPath = DEFAULT_RUNTIME_CONFIG_PATH): string | undefined {
  if (flag !== undefined && flag !== '') return flag;
  const fromEnv = env[RUNTIME_CONFIG_ENV];
  if (fromEnv !== undefined && fromEnv !== '') return fromEnv;
  return existsSync(defaultPath) ? defaultPath : undefined;
}

/**
 * A loaded runtime config as CLI settings (the lowest-priority layer). ACME
 * per-organization certificates have no CLI setting: the caller adds them
 * (certificatesFromConfig) when the config asks for them.
 */
export function settingsFromConfig(cfg: RuntimeConfig): Settings {
  const out: Settings = {
    'database-url': databaseUrl(cfg),
    env: cfg.envName,
    domain: cfg.domain,
    'public-ip': cfg.publicIp,
    'pdns-api-url': cfg.powerdns.apiUrl,
    'pdns-api-key': cfg.secrets.powerdnsApiKey,
    zone: cfg.powerdns.zone,
    'nginx-conf-dir': cfg.nginx.confDir,
    'tls-cert': cfg.nginx.tls.certPath,
    'tls-key': cfg.nginx.tls.keyPath,
    schema: cfg.schema,
    'user-container-naming': cfg.userContainerNaming,
  };
  const pdnsDb = powerDnsDatabaseUrl(cfg);
  if (pdnsDb) out['pdns-database-url'] = pdnsDb;
  if (cfg.nginx.listen) out['nginx-listen'] = cfg.nginx.listen;
  if (cfg.nginx.statusListen) out['nginx-status-listen'] = cfg.nginx.statusListen;
  if (cfg.nginx.testCommand) out['nginx-test-command'] = JSON.stringify(cfg.nginx.testCommand);
  if (cfg.nginx.reloadCommand) out['nginx-reload-command'] = JSON.stringify(cfg.nginx.reloadCommand);
  if (cfg.tls.mode === 'mkcert' && cfg.userContainerNaming === 'nested' && cfg.secrets.orgCertificateKey) {
    out['org-cert-issuer'] = 'dev-ca';
    out['dev-caroot'] = cfg.tls.caroot;
    out['org-cert-key'] = cfg.secrets.orgCertificateKey;
  }
  return out;
}

function commandArray(value: string | undefined, name: string): string[] | undefined {
  if (value === undefined) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch {
    throw new AllocatorError('INVALID_CONFIG', `${name} must be a JSON array of strings, e.g. ["nginx","-t","-q"]`);
  }
  if (!Array.isArray(parsed) || parsed.length === 0 || !parsed.every((p) => typeof p === 'string')) {
    throw new AllocatorError('INVALID_CONFIG', `${name} must be a non-empty JSON array of strings`);
  }
  return parsed as string[];
}

/**
 * Allocator options from resolved settings. With `effects: false` (commands
 * that only read or write the pool tables) PowerDNS and nginx settings may be
 * absent; the allocator never touches them on those paths.
 */
export function allocatorOptions(s: Settings, effects: boolean): GatewayAllocatorOptions {
  const need: SettingName[] = ['database-url', 'env', 'domain'];
  if (effects) need.push('pdns-api-url', 'pdns-api-key', 'nginx-conf-dir', 'tls-cert', 'tls-key');
  const missing = need.filter((n) => s[n] === undefined);
  if (missing.length > 0) {
    const named = missing.map((n) => `--${n} / ${SETTINGS.find((x) => x.flag === n)?.env}`);
    throw new AllocatorError('INVALID_CONFIG', `missing setting(s): ${named.join(', ')}`, { missing });
  }
  const naming = s['user-container-naming'];
  if (naming !== undefined && !isUserContainerNaming(naming)) throw new AllocatorError('INVALID_CONFIG', `user-container-naming must be nested or flat, got ${JSON.stringify(naming)}`);
  const issuer = s['org-cert-issuer'] ?? 'none';
  if (issuer !== 'none' && issuer !== 'dev-ca') throw new AllocatorError('INVALID_CONFIG', `org-cert-issuer must be none or dev-ca, got ${JSON.stringify(issuer)}`);
  let certificates: OrgCertificates | undefined;
  if (issuer === 'dev-ca' && effects) {
    const lacking = (['dev-caroot', 'org-cert-key'] as const).filter((n) => s[n] === undefined);
    if (lacking.length > 0) throw new AllocatorError('INVALID_CONFIG', `org-cert-issuer dev-ca needs ${lacking.map((n) => `--${n} / ${SETTINGS.find((x) => x.flag === n)?.env}`).join(', ')}`);
    certificates = new OrgCertificates({ issuer: new DevCaIssuer({ caroot: s['dev-caroot'] as string }), encryptionKey: s['org-cert-key'] as string });
  }
  const domain = s.domain as string;
  const unused = '/nonexistent/demiurge-cli-read-only';
  return {
    envName: s.env as string,
    domain,
    publicIp: s['public-ip'] ?? '127.0.0.1',
    pg: { connectionString: s['database-url'] as string, max: 4 },
    schema: s.schema,
    userContainerNaming: naming,
    certificates,
    powerdns: {
      apiUrl: s['pdns-api-url'] ?? 'http://pdns-not-configured.invalid',
      apiKey: s['pdns-api-key'] ?? 'not-configured',
      zone: s.zone ?? domain,
      ...(s['pdns-database-url'] && effects ? { database: { connectionString: s['pdns-database-url'], max: 2 } } : {}),
    },
    nginx: {
      confDir: s['nginx-conf-dir'] ?? unused,
      tls: { certPath: s['tls-cert'] ?? `${unused}.crt`, keyPath: s['tls-key'] ?? `${unused}.key` },
      listen: s['nginx-listen'],
      statusListen: s['nginx-status-listen'],
      testCommand: commandArray(s['nginx-test-command'], 'nginx-test-command'),
      reloadCommand: commandArray(s['nginx-reload-command'], 'nginx-reload-command'),
    },
  };
}
