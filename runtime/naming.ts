/**
 * The single source of naming and port rules, imported by both the Pulumi
 * program (components/, stack/) and the runtime allocator, so that the two
 * halves can never disagree on a container name, an FQDN or a port.
 *
 * Pure functions only: no I/O, no Pulumi, no pg.
 */

/** Fixed ports inside containers / on the environment network (see design.md "Ports"). */
export const PORTS = {
  stage1Http: 80,
  stage1Https: 443,
  dns: 53,
  powerDnsApi: 8081,
  buildServer: 8090,
  gatewayApp: 8888,
  postgres: 5432,
  defaultGatewayHttpBase: 7100,
  defaultGatewayVpnBase: 49100,
} as const;

export type ContainerRole = 'dev' | 'pdns' | 'build-server' | 'gateway' | 'tls-renewer';

export const ROLE_LABEL = 'demiurge.role';
export const ENVIRONMENT_LABEL = 'environment';
/**
 * Image label of a gateway image whose entrypoint runs gateway-reload on this signal (value: the
 * signal's name). `demiurge-gateway reload` sends it instead of a `docker exec` and reads the result
 * from the container's log (docs/CONTRACTS.md, "Gateway reload"); an image without the label (older
 * images: the signal would stop them) is reloaded by exec.
 */
export const RELOAD_SIGNAL_LABEL = 'demiurge.reload-signal';
export const RELOAD_SIGNAL = 'SIGUSR1';

/** Lowercase DNS label: letters, digits, inner hyphens; 1..63 chars. */
const DNS_LABEL_RE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * Environment names end up in container names, volume names, DNS labels and
 * nginx file names, so they are restricted to a short DNS label that starts
 * with a letter. Written in the syntax JavaScript and POSIX extended regular
 * expressions share: the gateway image checks ENV_NAME with the same pattern
 * (images/gateway/.../common.sh `valid_env_name`; a unit test keeps them equal).
 */
export const ENV_NAME_PATTERN = '^[a-z]([a-z0-9-]{0,30}[a-z0-9])?$';
const ENV_NAME_RE = new RegExp(ENV_NAME_PATTERN);

/** Canonical lowercase UUID (any version); the only accepted organization id form. */
export const ORG_ID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export function isDnsLabel(value: string): boolean {
  return DNS_LABEL_RE.test(value);
}

export function isValidEnvName(value: unknown): value is string {
  return typeof value === 'string' && ENV_NAME_RE.test(value);
}

/** A lowercase DNS name of at least two labels, without a trailing dot, ≤ 253 chars. */
export function isValidDomain(value: unknown): value is string {
  if (typeof value !== 'string' || value.length === 0 || value.length > 253) return false;
  const labels = value.split('.');
  return labels.length >= 2 && labels.every(isDnsLabel) && !/^[0-9]+$/.test(labels[labels.length - 1]);
}

export function isCanonicalOrgId(value: unknown): value is string {
  return typeof value === 'string' && value.length === 36 && ORG_ID_RE.test(value);
}

export function isValidIpv4(value: unknown): value is string {
  if (typeof value !== 'string') return false;
  const parts = value.split('.');
  return (
    parts.length === 4 &&
    parts.every((p) => /^(0|[1-9][0-9]{0,2})$/.test(p) && Number(p) <= 255)
  );
}

export function isValidPort(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 1 && value <= 65535;
}

// ---------------------------------------------------------------- Docker names

export function networkName(env: string): string {
  return `demiurge-${env}`;
}

/**
 * `tls` holds the environment's TLS authority state, which must outlive every
 * container: the mkcert dev CA (trusted once on developers' machines) and the
 * ACME account. `certs` holds what nginx serves.
 */
export type VolumeKind = 'workspace' | 'pgdata' | 'builds' | 'certs' | 'tls';

export function volumeName(env: string, kind: VolumeKind): string {
  return `demiurge-${env}-${kind}`;
}

export function devContainerName(env: string): string {
  return `demiurge-${env}-dev`;
}

export function powerDnsContainerName(env: string): string {
  return `demiurge-${env}-pdns`;
}

export function buildServerContainerName(env: string): string {
  return `demiurge-${env}-build-server`;
}

/** Issues and renews the stage-1 base certificate (runtime/cli/tls-renew.ts loop). */
export function tlsRenewerContainerName(env: string): string {
  return `demiurge-${env}-tls-renewer`;
}

export function gatewayName(env: string, index: number): string {
  if (!Number.isInteger(index) || index < 0) throw new RangeError(`gateway index must be a non-negative integer, got ${index}`);
  return `gw-pool-${env}-${index}`;
}

/** Parses `gw-pool-<env>-<n>` back into its index, or returns undefined. */
export function gatewayIndex(env: string, name: string): number | undefined {
  const prefix = `gw-pool-${env}-`;
  if (!name.startsWith(prefix)) return undefined;
  const rest = name.slice(prefix.length);
  return /^(0|[1-9][0-9]*)$/.test(rest) ? Number(rest) : undefined;
}

export function gatewayHttpPort(httpPortBase: number, index: number): number {
  return httpPortBase + index;
}

export function gatewayVpnPort(vpnPortBase: number, index: number): number {
  return vpnPortBase + index;
}

export function containerLabels(env: string, role: ContainerRole): Record<string, string> {
  return { [ENVIRONMENT_LABEL]: env, [ROLE_LABEL]: role };
}

export function imageName(env: string, image: 'dev' | 'pdns' | 'build-server' | 'gateway'): string {
  return `demiurge-${env}-${image}`;
}

// ---------------------------------------------------------------- DNS names

export function ganymedeFqdn(domain: string): string {
  return `ganymede.${domain}`;
}

export function orgFqdn(orgId: string, domain: string): string {
  return `org-${orgId}.${domain}`;
}

export function orgWildcardFqdn(orgId: string, domain: string): string {
  return `*.org-${orgId}.${domain}`;
}

/**
 * How user containers are named under an organization:
 * - `nested`: `uc-<id>.org-<uuid>.<domain>`. Two labels below the domain, so
 *   the base `*.<domain>` certificate does NOT cover them (a wildcard covers
 *   exactly one label): each organization needs its own `*.org-<uuid>.<domain>`
 *   certificate and DNS wildcard.
 * - `flat`: `uc-<id>--org-<org>.<domain>`. One label below the domain, covered
 *   by the base wildcard certificate and by a `*.<domain>` DNS record: no
 *   certificate per organization (Let's Encrypt allows 50 new certificates per
 *   registered domain per week, i.e. 50 new organizations a week).
 */
export type UserContainerNaming = 'nested' | 'flat';

export const USER_CONTAINER_NAMINGS: readonly UserContainerNaming[] = ['nested', 'flat'];

export function isUserContainerNaming(value: unknown): value is UserContainerNaming {
  return value === 'nested' || value === 'flat';
}

/** Longest DNS label (RFC 1035). A flat name must fit the whole `uc-…--org-…` into one. */
export const MAX_DNS_LABEL = 63;

const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';
/** 128 bits in RFC 4648 base32 (lowercase, no padding): 26 characters, the last one carrying 3 bits (2 zero). */
export const COMPACT_ID_RE = /^[a-z2-7]{25}[aeimquy4]$/;

/**
 * A canonical UUID as 26 lowercase base32 characters. Why: two canonical UUIDs
 * cannot share one DNS label (`uc-<36>--org-<36>` is 81 characters, the limit
 * is 63), while `uc-<26>--org-<26>` is 61.
 */
export function compactId(uuid: string): string {
  if (!isCanonicalOrgId(uuid)) throw new RangeError(`not a canonical lowercase UUID: ${JSON.stringify(uuid)}`);
  const bytes = Buffer.from(uuid.replace(/-/g, ''), 'hex');
  let out = '';
  let acc = 0;
  let bits = 0;
  for (const b of bytes) {
    acc = (acc << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out += BASE32[(acc >>> (bits - 5)) & 31];
      bits -= 5;
    }
    acc &= (1 << bits) - 1;
  }
  return out + BASE32[(acc << (5 - bits)) & 31];
}

/** Inverse of compactId; undefined for anything that is not exactly one encoded UUID. */
export function uuidOfCompactId(token: string): string | undefined {
  if (!COMPACT_ID_RE.test(token)) return undefined;
  let hex = '';
  let acc = 0;
  let bits = 0;
  for (const ch of token) {
    acc = (acc << 5) | BASE32.indexOf(ch);
    bits += 5;
    if (bits >= 8) {
      hex += ((acc >>> (bits - 8)) & 255).toString(16).padStart(2, '0');
      bits -= 8;
      acc &= (1 << bits) - 1;
    }
  }
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** A user-container id: a canonical UUID, or a short lowercase id (letters, digits, single inner hyphens). */
const USER_CONTAINER_ID_RE = /^[a-z0-9]+(?:-[a-z0-9]+)*$/;

export function isValidUserContainerId(value: unknown): value is string {
  return typeof value === 'string' && value.length <= MAX_DNS_LABEL - 3 && USER_CONTAINER_ID_RE.test(value);
}

/**
 * The public name of a user container.
 * nested: `uc-<id>.org-<uuid>.<domain>`.
 * flat:   `uc-<id>--org-<uuid>.<domain>`, with every UUID (the organization's,
 *         and the container's if it is one) written as its 26-character
 *         compactId so that the label stays within 63 characters; throws a
 *         RangeError if it still does not fit (a long non-UUID container id).
 */
export function userContainerFqdn(userContainerId: string, orgId: string, domain: string, naming: UserContainerNaming = 'nested'): string {
  if (!isValidUserContainerId(userContainerId)) throw new RangeError(`invalid user container id ${JSON.stringify(userContainerId)}`);
  if (!isCanonicalOrgId(orgId)) throw new RangeError(`invalid organization id ${JSON.stringify(orgId)}`);
  if (naming === 'nested') return `uc-${userContainerId}.org-${orgId}.${domain}`;
  const uc = isCanonicalOrgId(userContainerId) ? compactId(userContainerId) : userContainerId;
  const label = `uc-${uc}--org-${compactId(orgId)}`;
  if (label.length > MAX_DNS_LABEL) throw new RangeError(`flat user-container label ${label} is ${label.length} characters; DNS allows ${MAX_DNS_LABEL}`);
  return `${label}.${domain}`;
}

export interface ParsedOrgHostname {
  orgId: string;
  /** The user container's id as written in the name (a compactId is turned back into its UUID); undefined for `org-<uuid>.<domain>` itself. */
  userContainerId?: string;
  /** Which scheme the name uses; undefined for `org-<uuid>.<domain>` itself, which both schemes share. */
  naming?: UserContainerNaming;
}

/**
 * Reads a host name the stage-1 nginx (and a gateway's stage-2) receives:
 * `org-<uuid>.<domain>`, `uc-<id>.org-<uuid>.<domain>` (nested) or
 * `uc-<id>--org-<uuid|compact>.<domain>` (flat). The canonical UUID is
 * accepted in the flat form too when it fits (e.g. `uc-abc--org-<uuid>`).
 */
export function parseOrgHostname(hostname: string, domain: string): ParsedOrgHostname | undefined {
  const host = hostname.toLowerCase().replace(/\.$/, '');
  if (!host.endsWith(`.${domain}`)) return undefined;
  const rest = host.slice(0, -domain.length - 1);
  const labels = rest.split('.');
  if (labels.some((l) => l.length === 0 || l.length > MAX_DNS_LABEL)) return undefined;
  const last = labels[labels.length - 1];
  const nested = /^org-(.+)$/.exec(last);
  if (nested && isCanonicalOrgId(nested[1])) {
    if (labels.length === 1) return { orgId: nested[1] };
    if (labels.length === 2) {
      const uc = /^uc-(.+)$/.exec(labels[0]);
      if (uc && isValidUserContainerId(uc[1])) return { orgId: nested[1], userContainerId: uc[1], naming: 'nested' };
    }
    return undefined;
  }
  if (labels.length !== 1) return undefined;
  const flat = /^uc-(.+)--org-([a-z0-9-]+)$/.exec(last);
  if (!flat) return undefined;
  const orgId = isCanonicalOrgId(flat[2]) ? flat[2] : uuidOfCompactId(flat[2]);
  const ucId = uuidOfCompactId(flat[1]) ?? flat[1];
  if (orgId === undefined || !isValidUserContainerId(ucId)) return undefined;
  return { orgId, userContainerId: ucId, naming: 'flat' };
}

/** The names a per-organization certificate covers (nested naming only): the org name and its one-label wildcard. */
export function orgCertificateNames(orgId: string, domain: string): string[] {
  return [orgFqdn(orgId, domain), orgWildcardFqdn(orgId, domain)];
}

/**
 * The A records the allocator publishes for an organization. nested: the org
 * name and its wildcard; flat: the org name only (user containers resolve
 * through the environment's `*.<domain>` record, `demiurge:dnsWildcard`).
 */
export function orgDnsNames(orgId: string, domain: string, naming: UserContainerNaming = 'nested'): string[] {
  return naming === 'nested' ? [orgFqdn(orgId, domain), orgWildcardFqdn(orgId, domain)] : [orgFqdn(orgId, domain)];
}

/** RFC 6125 matching of one certificate name (`*.` only as the whole left-most label) against a host name. */
export function certificateNameCovers(certName: string, hostname: string): boolean {
  const c = certName.toLowerCase();
  const h = hostname.toLowerCase().replace(/\.$/, '');
  if (!c.startsWith('*.')) return c === h;
  const dot = h.indexOf('.');
  return dot > 0 && h.slice(dot + 1) === c.slice(2);
}

// ---------------------------------------------------------------- DNS timing

/**
 * How long any cache may keep an answer about an organization's name: the
 * promise is that a client that asked before an allocation (or after a
 * release) sees the change within 5 s, through an ordinary caching resolver.
 * RFC 2308: a resolver keeps an NXDOMAIN for min(SOA TTL, SOA minimum), a
 * record for its TTL; resolvers count whole seconds, so an entry may live
 * TTL + 1 s. Costs: a resolver asks again at most every 2–3 s per name that
 * is in use (README "How fast an organization's name appears and disappears").
 */
export const DNS_TIMING = {
  /** SOA minimum = the zone's negative TTL (NXDOMAIN / NODATA), seconds. */
  negativeTtlSeconds: 2,
  /** TTL of the SOA record itself (resolvers take the lesser of the two), seconds. */
  soaTtlSeconds: 2,
  /** TTL of organization A records (`org-<uuid>`, `*.org-<uuid>`): a release disappears this fast, seconds. */
  orgRecordTtlSeconds: 3,
} as const;

/** SOA content of an environment's zone: `ns1.<domain>. hostmaster.<domain>. serial refresh retry expire minimum`. */
export function zoneSoaContent(domain: string): string {
  return `${absolute(`ns1.${domain}`)} ${absolute(`hostmaster.${domain}`)} 0 10800 3600 604800 ${DNS_TIMING.negativeTtlSeconds}`;
}

/** Absolute (dot-terminated) form used by the PowerDNS API. */
export function absolute(name: string): string {
  return name.endsWith('.') ? name : `${name}.`;
}

// ---------------------------------------------------------------- builds

export function buildTarballName(env: string): string {
  return `gateway-${env}.tar.gz`;
}

/** URL at which gateways reach the build server: by container name on the environment network. */
export function buildServerUrl(env: string): string {
  return `http://${buildServerContainerName(env)}:${PORTS.buildServer}`;
}

/** URL at which the PowerDNS API is reachable on the environment network. */
export function powerDnsApiUrl(env: string): string {
  return `http://${powerDnsContainerName(env)}:${PORTS.powerDnsApi}`;
}

/** Port ranges [first, last] a pool occupies. */
export function portRange(base: number, poolSize: number): [number, number] {
  return [base, base + Math.max(poolSize, 1) - 1];
}

// ---------------------------------------------------------------- API server (Ganymede)

/** Port of the API server in the dev container: stage 1 proxies ganymede.<domain> to 127.0.0.1 on it. */
export const GANYMEDE_PORT = 6000;

/** URL at which gateways reach the API server: the dev container by name on the environment network. */
export function ganymedeInternalUrl(env: string): string {
  return `http://${devContainerName(env)}:${GANYMEDE_PORT}`;
}

/** The API server's public URL, through stage 1. */
export function ganymedePublicUrl(domain: string): string {
  return `https://${ganymedeFqdn(domain)}`;
}

/**
 * The API server through stage 1 on the port the main host publishes it at: what
 * gateways on another Docker host call back (they are not on the main host's
 * environment network). 443 gives the public URL itself.
 */
export function ganymedeStage1Url(domain: string, stage1HttpsPort: number): string {
  return stage1HttpsPort === PORTS.stage1Https ? ganymedePublicUrl(domain) : `${ganymedePublicUrl(domain)}:${stage1HttpsPort}`;
}
