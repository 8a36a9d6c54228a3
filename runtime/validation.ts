import { AllocatorError } from './errors';
import type { GatewaySpec } from './inventory';
import { isCanonicalOrgId, isDnsLabel, isValidIpv4, isValidPort } from './naming';

/** Rejects anything but a canonical lowercase UUID, before any side effect. */
export function assertOrganizationId(value: unknown): asserts value is string {
  if (!isCanonicalOrgId(value)) {
    const shown =
      typeof value === 'string'
        ? JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}…` : value)
        : typeof value;
    throw new AllocatorError(
      'INVALID_ORGANIZATION_ID',
      `organization id must be a canonical lowercase UUID (8-4-4-4-12 hex digits), got ${shown}`,
    );
  }
}

/** Gateway names become nginx comments, log fields and Docker container names: one DNS label. */
export function isValidGatewayName(value: unknown): value is string {
  return typeof value === 'string' && value.length <= 63 && isDnsLabel(value);
}

/** A host the stage-1 nginx can proxy to: an IPv4 address or a DNS name (no ports, no schemes). */
export function isValidGatewayHost(value: unknown): value is string {
  if (typeof value !== 'string' || value.length === 0 || value.length > 253) return false;
  const host: string = value;
  if (isValidIpv4(String(host))) return true;
  return host.split('.').every((label) => isDnsLabel(label)) && !/^[0-9.]+$/.test(host);
}

export function assertGatewayName(value: unknown): asserts value is string {
  if (!isValidGatewayName(value)) {
    throw new AllocatorError('INVALID_GATEWAY', `gateway name must be a lowercase DNS label, got ${JSON.stringify(String(value).slice(0, 80))}`);
  }
}

/** Validates a whole inventory at once; returns a normalised copy or throws listing every problem. */
export function validateInventory(input: unknown): GatewaySpec[] {
  if (!Array.isArray(input)) {
    throw new AllocatorError('INVALID_GATEWAY', 'registerGateways expects an array of { name, host, httpPort, vpnPort }');
  }
  const problems: string[] = [];
  const names = new Set<string>();
  const endpoints = new Set<string>();
  const result: GatewaySpec[] = [];
  input.forEach((raw: unknown, i) => {
    if (typeof raw !== 'object' || raw === null) {
      problems.push(`[${i}] is not an object`);
      return;
    }
    const g = raw as Record<string, unknown>;
    const extra = Object.keys(g).filter((k) => !['name', 'host', 'httpPort', 'vpnPort'].includes(k));
    if (extra.length > 0) problems.push(`[${i}] has unknown field(s) ${extra.join(', ')}`);
    if (!isValidGatewayName(g.name)) problems.push(`[${i}].name must be a lowercase DNS label`);
    if (!isValidGatewayHost(g.host)) problems.push(`[${i}].host must be an IPv4 address or a DNS name`);
    if (!isValidPort(g.httpPort)) problems.push(`[${i}].httpPort must be an integer 1..65535`);
    if (!isValidPort(g.vpnPort)) problems.push(`[${i}].vpnPort must be an integer 1..65535`);
    if (typeof g.name === 'string') {
      if (names.has(g.name)) problems.push(`[${i}].name ${g.name} appears twice`);
      names.add(g.name);
    }
    const endpoint = `${String(g.host)}:${String(g.httpPort)}`;
    if (endpoints.has(endpoint)) problems.push(`[${i}] ${endpoint} is used by two gateways`);
    endpoints.add(endpoint);
    result.push({ name: g.name as string, host: g.host as string, httpPort: g.httpPort as number, vpnPort: g.vpnPort as number });
  });
  if (problems.length > 0) {
    throw new AllocatorError('INVALID_GATEWAY', `invalid gateway inventory: ${problems.slice(0, 20).join('; ')}`, { problems });
  }
  return result;
}
