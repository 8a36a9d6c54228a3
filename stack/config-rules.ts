/**
 * The stack configuration's cross-field rules (pool size against the port
 * ranges, fixed ports, naming against the wildcard record…), run by
 * parseStackConfig after every field was read, and the collector every
 * problem goes to. Pure: no Pulumi.
 */
import { PORTS } from '../runtime/naming';
import type { ConfigIssue, FieldValues, GatewayHostConfig, RawConfig, TlsConfig } from './config-types';

export function quote(v: string): string {
  return JSON.stringify(v);
}

export class Collector {
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

export function rangesOverlap(a: [number, number], b: [number, number]): boolean {
  return a[0] <= b[1] && b[0] <= a[1];
}

export function fmtRange(r: [number, number]): string {
  return `${r[0]}-${r[1]}`;
}


// ------------------------------------------------------------------ rules

/** The fields plus what the rules derive from several of them. */
export interface Derived {
  raw: RawConfig;
  v: FieldValues;
  gatewayHosts: GatewayHostConfig[];
  httpRange: [number, number];
  vpnRange: [number, number];
}

type Rule = (d: Derived, c: Collector) => void;

/** The gateway hosts: the configured list, or every gateway on the main host. */
export function gatewayHostsOf(raw: RawConfig, v: FieldValues): GatewayHostConfig[] {
  if (v.gatewayHosts === undefined) {
    // An invalid gatewayPoolSize (reported) still lets the rules run on one gateway.
    const n = v.gatewayPoolSize ?? (raw.gatewayPoolSize === undefined || raw.gatewayPoolSize === '' ? 3 : 1);
    return [{ name: 'main', kind: 'main', poolSize: n, firstIndex: 0 }];
  }
  if (v.gatewayHosts.length === 0) return [{ name: 'main', kind: 'main', poolSize: v.gatewayPoolSize ?? 1, firstIndex: 0 }];
  return v.gatewayHosts;
}

export function poolSizeOf(hosts: readonly GatewayHostConfig[]): number {
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
export const RULES: readonly Rule[] = [
  poolSizeMatchesHosts,
  portRangesEndBelow65536,
  poolFitsPortRange,
  portRangesDisjoint,
  portRangesAvoidFixedPorts,
  fixedPortsDistinct,
  flatNamingNeedsWildcard,
];

export function tlsConfigOf(v: FieldValues): TlsConfig {
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
