/**
 * What PowerDNS spends per PATCH, measured with the allocator idle: the zone's
 * settings (runtime/powerdns-client.ts ZONE_WRITE_SETTINGS) against PowerDNS's
 * defaults, and per way of writing an organization's records.
 */
import { randomUUID } from 'crypto';
import { performance } from 'perf_hooks';
import axios from 'axios';
import { ZONE_WRITE_SETTINGS } from '../runtime/powerdns-client';
import type { TestServices } from '../test/helpers/services-env';
import { cpuMs, postgresPids } from './system';

export const ZONE_DESCRIPTION =
  'Native, no DNSSEC, created as the environment creates it (`api_rectify: false`, `soa_edit_api: ""`: one A rrset per name, no delegations or empty non-terminals, no secondaries; a rectify would change nothing but costs a full-zone listing, and a SOA edit a SOA rewrite, on every PATCH)';

/** Zone settings a measurement runs under. */
export type ZoneSettings = { api_rectify: boolean; soa_edit_api: string };
export const PDNS_DEFAULTS: ZoneSettings = { api_rectify: true, soa_edit_api: 'DEFAULT' };
export const SOA_EDIT_ONLY: ZoneSettings = { api_rectify: false, soa_edit_api: 'DEFAULT' };

const headers = (s: TestServices): { headers: Record<string, string>; validateStatus: () => boolean } => ({ headers: { 'X-API-Key': s.pdnsApiKey }, validateStatus: () => true });
const zoneUrl = (s: TestServices, domain: string): string => `${s.pdnsApiUrl}/api/v1/servers/localhost/zones/${domain}.`;

/** The bench's zone, created as the environment's zone is (see ZONE_DESCRIPTION). */
export async function createBenchZone(s: TestServices, domain: string): Promise<void> {
  const res = await axios.post(`${s.pdnsApiUrl}/api/v1/servers/localhost/zones`, { name: `${domain}.`, kind: 'Native', nameservers: [`ns1.${domain}.`], ...ZONE_WRITE_SETTINGS }, headers(s));
  if (res.status !== 201) throw new Error(`zone create ${domain}: ${res.status} ${JSON.stringify(res.data)}`);
}

async function withZoneSettings<T>(s: TestServices, domain: string, settings: ZoneSettings, f: () => Promise<T>): Promise<T> {
  const put = async (v: object): Promise<void> => {
    const r = await axios.put(zoneUrl(s, domain), v, headers(s));
    if (r.status !== 204) throw new Error(`zone ${domain}: setting ${JSON.stringify(v)} answered ${r.status}`);
  };
  await put(settings);
  try {
    return await f();
  } finally {
    await put(ZONE_WRITE_SETTINGS);
  }
}

function rrsets(domain: string, orgs: string[], present: boolean, wildcard = true): unknown[] {
  return orgs.flatMap((org) =>
    [`org-${org}.${domain}.`, ...(wildcard ? [`*.org-${org}.${domain}.`] : [])].map((name) =>
      present
        ? { name, type: 'A', ttl: 60, changetype: 'REPLACE', records: [{ content: '127.0.0.1', disabled: false }], comments: [{ content: `bench probe ${org}`, account: 'bench' }] }
        : { name, type: 'A', changetype: 'DELETE' },
    ),
  );
}

/** Wall time of PATCHes publishing one organization (both names, with the ownership comment) at the zone's current size. */
export async function measurePatch(s: TestServices, domain: string, settings: ZoneSettings | null, samples: number): Promise<number[]> {
  const run = async (): Promise<number[]> => {
    const out: number[] = [];
    for (let i = 0; i < samples; i++) {
      const org = randomUUID();
      const t = performance.now();
      const r = await axios.patch(zoneUrl(s, domain), { rrsets: rrsets(domain, [org], true) }, headers(s));
      out.push(performance.now() - t);
      if (r.status !== 204) throw new Error(`probe PATCH answered ${r.status}`);
      await axios.patch(zoneUrl(s, domain), { rrsets: rrsets(domain, [org], false) }, headers(s));
    }
    return out;
  };
  return settings ? withZoneSettings(s, domain, settings, run) : run();
}

export interface DnsWriteCost {
  variant: string;
  rrsetsPerOrg: number;
  publishMs: number;
  withdrawMs: number;
  postgresCpuMsPerOrg: number;
  powerdnsCpuMsPerOrg: number;
}

const VARIANTS: Array<{ variant: string; wildcard: boolean; settings: ZoneSettings | null }> = [
  { variant: 'as the allocator writes them (org-<uuid> and *.org-<uuid>, each with the ownership comment), zone as the environment creates it', wildcard: true, settings: null },
  { variant: 'the same, zone with SOA-EDIT-API `DEFAULT` (PowerDNS default: every PATCH rewrites the SOA)', wildcard: true, settings: SOA_EDIT_ONLY },
  { variant: 'the same, PowerDNS defaults (SOA-EDIT-API `DEFAULT` and API rectify on)', wildcard: true, settings: PDNS_DEFAULTS },
  { variant: 'one rrset per organization (org-<uuid> only, with the comment; the `flat` naming scheme), zone as the environment creates it', wildcard: false, settings: null },
];

/**
 * What PowerDNS and its PostgreSQL spend to publish and withdraw a batch of 64
 * organizations, per variant (CPU read from /proc; PostgreSQL: the whole
 * cluster, including the short-lived session PowerDNS opens per request).
 */
export async function measureDnsWrites(s: TestServices, domain: string, pdnsPid: number | undefined): Promise<DnsWriteCost[]> {
  const pgCpu = (): number => {
    const p = postgresPids();
    return cpuMs(p, p.slice(0, 1));
  };
  const out: DnsWriteCost[] = [];
  for (const { variant, wildcard, settings } of VARIANTS) {
    const orgs = Array.from({ length: 64 }, () => randomUUID());
    const one = async (): Promise<DnsWriteCost> => {
      const g0 = pgCpu();
      const p0 = pdnsPid ? cpuMs([pdnsPid]) : Number.NaN;
      let t = performance.now();
      const pub = await axios.patch(zoneUrl(s, domain), { rrsets: rrsets(domain, orgs, true, wildcard) }, headers(s));
      const publishMs = performance.now() - t;
      t = performance.now();
      const del = await axios.patch(zoneUrl(s, domain), { rrsets: rrsets(domain, orgs, false, wildcard) }, headers(s));
      const withdrawMs = performance.now() - t;
      if (pub.status !== 204 || del.status !== 204) throw new Error(`DNS cost PATCH answered ${pub.status}/${del.status}`);
      // PowerDNS's per-request session ends after its answer: let PostgreSQL reap it so its CPU is counted.
      await new Promise((r) => setTimeout(r, 100));
      return {
        variant,
        rrsetsPerOrg: wildcard ? 2 : 1,
        publishMs,
        withdrawMs,
        postgresCpuMsPerOrg: (pgCpu() - g0) / orgs.length,
        powerdnsCpuMsPerOrg: pdnsPid ? (cpuMs([pdnsPid]) - p0) / orgs.length : Number.NaN,
      };
    };
    out.push(settings ? await withZoneSettings(s, domain, settings, one) : await one());
  }
  return out;
}
