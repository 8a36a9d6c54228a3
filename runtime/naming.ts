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

export type ContainerRole = 'dev' | 'pdns' | 'build-server' | 'gateway';

export const ROLE_LABEL = 'demiurge.role';
export const ENVIRONMENT_LABEL = 'environment';

/** Lowercase DNS label: letters, digits, inner hyphens; 1..63 chars. */
const DNS_LABEL_RE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * Environment names end up in container names, volume names, DNS labels and
 * nginx file names, so they are restricted to a short DNS label that starts
 * with a letter.
 */
const ENV_NAME_RE = /^[a-z](?:[a-z0-9-]{0,30}[a-z0-9])?$/;

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

export type VolumeKind = 'workspace' | 'pgdata' | 'builds' | 'certs';

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
