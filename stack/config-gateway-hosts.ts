/**
 * The `gatewayHosts` setting: a JSON list of `{ name?, host, ip?, poolSize,
 * firstIndex? }` entries, each checked on its own and then together (distinct
 * names and hosts, disjoint gateway indices). Every problem is reported; the
 * entries that parsed are returned so later rules still run.
 */
import { isDnsLabel, isValidIpv4 } from '../runtime/naming';
import type { GatewayHostConfig } from './config';

/** Where problems with `gatewayHosts` go (the config collector, bound to the key). */
export interface HostsReport {
  add(problem: string, fix: string): void;
  /** `pulumi config set <project>:gatewayHosts <value>`. */
  setFix(value: string): string;
}

const SSH_HOST_RE = /^ssh:\/\/(?:[A-Za-z0-9._-]+@)?([A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::([0-9]{1,5}))?$/;

function quote(v: string): string {
  return JSON.stringify(v);
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

const HOSTS_EXAMPLE = `'[{"name":"main","host":"main","poolSize":4},{"name":"gw-b","host":"ssh://deploy@203.0.113.12","poolSize":6}]'`;

/** Parses the JSON list of `{ name?, host, ip?, poolSize, firstIndex? }`. */
export function parseGatewayHosts(raw: string, report: HostsReport): GatewayHostConfig[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch (err) {
    report.add(`is not valid JSON (${(err as Error).message}).`, report.setFix(HOSTS_EXAMPLE));
    return [];
  }
  if (!Array.isArray(parsed) || parsed.length === 0) {
    report.add('must be a non-empty JSON array of {name?, host, ip?, poolSize, firstIndex?}.', report.setFix(HOSTS_EXAMPLE));
    return [];
  }
  const hosts: GatewayHostConfig[] = [];
  let next = 0;
  parsed.forEach((entry: unknown, i: number) => {
    const h = parseHostEntry(entry, i, next, report);
    if (h === undefined) return;
    hosts.push(h);
    next = h.firstIndex + h.poolSize;
  });
  checkHostsDistinct(hosts, report);
  return hosts;
}

/** One entry; `next` is the first gateway index after the previous entry's. Problems go to the report, in field order. */
function parseHostEntry(entry: unknown, i: number, next: number, report: HostsReport): GatewayHostConfig | undefined {
  const where = `[${i}]`;
  if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) {
    report.add(`${where} must be an object.`, report.setFix(HOSTS_EXAMPLE));
    return undefined;
  }
  const e = entry as Record<string, unknown>;
  for (const k of Object.keys(e)) {
    if (!HOST_ENTRY_KEYS.includes(k)) {
      report.add(`${where} has unknown field ${quote(k)} (allowed: ${HOST_ENTRY_KEYS.join(', ')}).`, 'remove the field.');
    }
  }
  const host = e.host;
  const { kind, sshHostPart } = hostKind(where, host, report);
  const poolSize = e.poolSize;
  if (typeof poolSize !== 'number' || !Number.isInteger(poolSize) || poolSize < 1) {
    report.add(`${where}.poolSize must be a whole number of at least 1, got ${JSON.stringify(poolSize)}.`, 'set "poolSize" to the number of gateways on that host.');
  }
  let firstIndex = next;
  if (e.firstIndex !== undefined) {
    if (typeof e.firstIndex !== 'number' || !Number.isInteger(e.firstIndex) || e.firstIndex < 0) {
      report.add(`${where}.firstIndex must be a whole number of at least 0, got ${JSON.stringify(e.firstIndex)}.`, 'remove it to continue after the previous host.');
    } else {
      firstIndex = e.firstIndex;
    }
  }
  const ip = hostIp(where, e.ip, kind, sshHostPart, report);
  let name: string;
  if (e.name !== undefined) {
    if (typeof e.name !== 'string' || !isDnsLabel(e.name)) {
      report.add(`${where}.name must be a lowercase DNS label, got ${JSON.stringify(e.name)}.`, 'use e.g. "gw-b".');
      name = `invalid-${i}`;
    } else {
      name = e.name;
    }
  } else {
    name = kind === 'main' ? 'main' : defaultHostName(sshHostPart ?? `host-${i}`);
  }
  const size = typeof poolSize === 'number' && Number.isInteger(poolSize) && poolSize > 0 ? poolSize : 1;
  return { name, kind, dockerHost: kind === 'ssh' ? (host as string) : undefined, ip, poolSize: size, firstIndex };
}

/** `main`, or an ssh:// Docker host URL (its host part, for the default name and ip). */
function hostKind(where: string, host: unknown, report: HostsReport): { kind: 'main' | 'ssh'; sshHostPart?: string } {
  if (host === 'main') return { kind: 'main' };
  if (typeof host === 'string' && SSH_HOST_RE.test(host)) {
    const m = SSH_HOST_RE.exec(host);
    if (m?.[2] !== undefined && (Number(m[2]) < 1 || Number(m[2]) > 65535)) {
      report.add(`${where}.host has an invalid SSH port in ${quote(host)}.`, 'use ssh://user@host[:port].');
    }
    return { kind: 'ssh', sshHostPart: m?.[1] };
  }
  report.add(`${where}.host must be "main" or an ssh:// Docker host URL, got ${JSON.stringify(host)}.`, 'use "main" or "ssh://user@203.0.113.12".');
  return { kind: 'main' };
}

/** The address the stage-1 nginx reaches an ssh:// host at: `ip`, or the SSH host when it is an IPv4 address. */
function hostIp(where: string, ip: unknown, kind: 'main' | 'ssh', sshHostPart: string | undefined, report: HostsReport): string | undefined {
  if (ip !== undefined) {
    if (kind === 'main') {
      report.add(`${where}.ip is only for ssh:// hosts (gateways on the main host are reached by container name).`, 'remove "ip" from the main entry.');
    } else if (!isValidIpv4(ip)) {
      report.add(`${where}.ip must be an IPv4 address, got ${JSON.stringify(ip)}.`, 'set "ip" to the address the stage-1 nginx reaches that host at.');
    } else {
      return ip;
    }
    return undefined;
  }
  if (kind === 'ssh') {
    if (sshHostPart !== undefined && isValidIpv4(sshHostPart)) return sshHostPart;
    if (sshHostPart !== undefined) {
      report.add(`${where}.ip is required because the SSH host ${quote(sshHostPart)} is not an IPv4 address.`, 'add "ip": "<address the stage-1 nginx reaches that host at>".');
    }
  }
  return undefined;
}

/** Names and Docker hosts appear once each; gateway index ranges do not overlap. */
function checkHostsDistinct(hosts: GatewayHostConfig[], report: HostsReport): void {
  const seenNames = new Set<string>();
  const seenHosts = new Set<string>();
  for (const h of hosts) {
    if (seenNames.has(h.name)) {
      report.add(`host name ${quote(h.name)} appears twice.`, 'give every entry a distinct "name".');
    }
    seenNames.add(h.name);
    const hk = h.dockerHost ?? 'main';
    if (seenHosts.has(hk)) {
      report.add(`host ${quote(hk)} appears twice.`, 'merge the entries and add their pool sizes.');
    }
    seenHosts.add(hk);
  }
  const sorted = [...hosts].sort((a, b) => a.firstIndex - b.firstIndex);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1];
    const cur = sorted[i];
    if (cur.firstIndex < prev.firstIndex + prev.poolSize) {
      report.add(
        `gateway indices of ${quote(prev.name)} (${prev.firstIndex}-${prev.firstIndex + prev.poolSize - 1}) and ${quote(cur.name)} (from ${cur.firstIndex}) overlap.`,
        'adjust "firstIndex" or "poolSize" so every gateway index belongs to one host.',
      );
    }
  }
}
