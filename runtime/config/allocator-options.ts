import type { GatewayAllocatorOptions } from '../allocator';
import { AcmeIssuer } from '../tls/acme-issuer';
import { DevCaIssuer } from '../tls/dev-ca-issuer';
import { OrgCertificates, type OrgCertificatesOptions } from '../tls/org-certificates';
import type { RuntimeConfig } from './types';

function postgresUrl(d: RuntimeConfig['database'], password: string): string {
  const host = d.host.includes(':') ? `[${d.host}]` : d.host;
  return `postgres://${encodeURIComponent(d.user)}:${encodeURIComponent(password)}@${host}:${d.port}/${encodeURIComponent(d.database)}`;
}

/** postgres:// URL of the config's database (parts percent-encoded, so any password works). */
export function databaseUrl(cfg: RuntimeConfig): string {
  return postgresUrl(cfg.database, cfg.secrets.databasePassword);
}

/** postgres:// URL of PowerDNS's database, when the config names one (its password is validated with it). */
export function powerDnsDatabaseUrl(cfg: RuntimeConfig): string | undefined {
  const d = cfg.powerdns.database;
  if (!d) return undefined;
  if (cfg.secrets.powerdnsDatabasePassword === null) throw new Error('powerdnsDatabasePassword is required with powerdns.database');
  return postgresUrl(d, cfg.secrets.powerdnsDatabasePassword);
}

/** An OrgCertificates that owns its issuer: close() also closes the issuer (the ACME challenge listener, the dev CA's scratch folder). */
export class ConfigOrgCertificates extends OrgCertificates {
  constructor(
    private readonly ownIssuer: DevCaIssuer | AcmeIssuer,
    opts: Omit<OrgCertificatesOptions, 'issuer'>,
  ) {
    super({ ...opts, issuer: ownIssuer });
  }

  override async close(): Promise<void> {
    await super.close();
    await this.ownIssuer.close();
  }
}

/**
 * The per-organization certificate manager the config asks for: mkcert → the
 * dev CA, letsencrypt → ACME DNS-01 through the environment's PowerDNS, none
 * (or flat naming, whose names the base wildcard covers) → undefined.
 */
export function certificatesFromConfig(cfg: RuntimeConfig): ConfigOrgCertificates | undefined {
  if (cfg.tls.mode === 'none' || cfg.userContainerNaming === 'flat') return undefined;
  const encryptionKey = cfg.secrets.orgCertificateKey;
  // validateSecrets refuses a missing key in these modes; this keeps the type honest.
  if (encryptionKey === null) throw new Error('orgCertificateKey is required with per-organization certificates');
  if (cfg.tls.mode === 'mkcert') return new ConfigOrgCertificates(new DevCaIssuer({ caroot: cfg.tls.caroot }), { encryptionKey });
  const t = cfg.tls;
  const issuer = new AcmeIssuer({
    directoryUrl: t.directoryUrl,
    email: t.email,
    stateDir: t.stateDir,
    resolvers: t.resolvers,
    dns: { apiUrl: cfg.powerdns.apiUrl, apiKey: cfg.secrets.powerdnsApiKey, zone: cfg.powerdns.zone },
    ...(t.caCertificatesFile ? { caCertificatesFile: t.caCertificatesFile } : {}),
  });
  return new ConfigOrgCertificates(issuer, { encryptionKey });
}

/** The allocator's PowerDNS options: the API, and PowerDNS's database when the config names one. */
export function powerDnsOptionsFromConfig(cfg: RuntimeConfig): GatewayAllocatorOptions['powerdns'] {
  const url = powerDnsDatabaseUrl(cfg);
  return { apiUrl: cfg.powerdns.apiUrl, apiKey: cfg.secrets.powerdnsApiKey, zone: cfg.powerdns.zone, ...(url ? { database: { connectionString: url } } : {}) };
}

/** GatewayAllocator options from a loaded runtime config (the allocator owns the pg pool it opens). */
export function allocatorOptionsFromConfig(cfg: RuntimeConfig, overrides: Partial<GatewayAllocatorOptions> = {}): GatewayAllocatorOptions {
  return {
    envName: cfg.envName,
    domain: cfg.domain,
    publicIp: cfg.publicIp,
    pg: { connectionString: databaseUrl(cfg) },
    schema: cfg.schema,
    userContainerNaming: cfg.userContainerNaming,
    powerdns: powerDnsOptionsFromConfig(cfg),
    nginx: { ...cfg.nginx, tls: { ...cfg.nginx.tls } },
    certificates: 'certificates' in overrides ? overrides.certificates : certificatesFromConfig(cfg),
    ...overrides,
  };
}
