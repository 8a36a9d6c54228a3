import * as http from 'http';
import * as https from 'https';
import { AllocatorError } from './errors';
import { HttpRequestError, requestJson } from './json-http';
import { absolute } from './naming';

/**
 * How every environment zone is configured for the allocator's PATCHes (the program's
 * zone command, the test and bench zones): the PowerDNS defaults make every PATCH do
 * work this zone does not need.
 * - `api_rectify: false`: a rectify rewrites ordername/auth of every record of the zone
 *   after each PATCH, O(zone size); the zone is not DNSSEC-signed and holds no
 *   delegations or empty non-terminals, and API-written records already carry auth=1.
 *   Turn it back on before the zone is ever signed.
 * - `soa_edit_api: ''`: with the default `DEFAULT`, every PATCH also reads, bumps and
 *   rewrites the SOA (its serial) in the same transaction. Serials only matter to
 *   secondaries fed by AXFR/NOTIFY; the zone is `Native` (no secondaries: replication,
 *   if any, is the database's) and resolvers never look at the serial. Set it back to
 *   `DEFAULT` if a secondary is ever added.
 * docs/bench.md ("What PowerDNS spends per PATCH") has the measurements.
 */
export const ZONE_WRITE_SETTINGS: { readonly api_rectify: false; readonly soa_edit_api: '' } = { api_rectify: false, soa_edit_api: '' };

export interface PowerDnsOptions {
  /** e.g. http://127.0.0.1:8081 (no /api/v1 suffix). */
  apiUrl: string;
  apiKey: string;
  serverId?: string;
  /** Zone name, with or without the trailing dot. */
  zone: string;
  /** Per-request timeout; default 5000 ms. */
  timeoutMs?: number;
}

export interface RRsetComment {
  content: string;
  account: string;
}

export interface RRsetChange {
  name: string;
  type: string;
  changetype: 'REPLACE' | 'DELETE';
  ttl?: number;
  records?: Array<{ content: string; disabled: boolean }>;
  comments?: RRsetComment[];
}

export interface RRset {
  name: string;
  type: string;
  ttl: number;
  records: Array<{ content: string; disabled: boolean }>;
  comments: RRsetComment[];
}

/** A thin, typed PowerDNS HTTP API client. Every failure becomes DNS_FAILED with PowerDNS's own reason, never the key. */
export class PowerDnsClient {
  private readonly baseUrl: string;
  private readonly headers: Record<string, string>;
  private readonly timeoutMs: number;
  private readonly agent: http.Agent;
  private readonly zonePath: string;
  private readonly flushPath: string;
  readonly zone: string;
  patchCalls = 0;
  flushCalls = 0;

  constructor(opts: PowerDnsOptions) {
    this.zone = absolute(opts.zone);
    const serverId = opts.serverId ?? 'localhost';
    this.zonePath = `/api/v1/servers/${encodeURIComponent(serverId)}/zones/${encodeURIComponent(this.zone)}`;
    this.flushPath = `/api/v1/servers/${encodeURIComponent(serverId)}/cache/flush?domain=${encodeURIComponent(this.zone)}`;
    this.baseUrl = opts.apiUrl.replace(/\/+$/, '');
    this.headers = { 'X-API-Key': opts.apiKey };
    this.timeoutMs = opts.timeoutMs ?? 5000;
    this.agent = this.baseUrl.startsWith('https:') ? new https.Agent({ keepAlive: true, maxSockets: 8 }) : new http.Agent({ keepAlive: true, maxSockets: 8 });
  }

  async patch(rrsets: RRsetChange[]): Promise<void> {
    if (rrsets.length === 0) return;
    this.patchCalls += 1;
    await this.request('PATCH', this.zonePath, { rrsets });
  }

  /**
   * Purges this server's packet and query caches (negative answers included) of every name in
   * the zone — what PowerDNS does itself after each PATCH. Needed after records are written to
   * its tables directly (powerdns-tables.ts), which its caches cannot see.
   */
  async flushCache(): Promise<void> {
    this.flushCalls += 1;
    await this.request('PUT', this.flushPath);
  }

  async listRRsets(): Promise<RRset[]> {
    const zone = await this.request<{ rrsets?: RRset[] }>('GET', this.zonePath);
    return zone.rrsets ?? [];
  }

  private async request<T>(method: 'GET' | 'PATCH' | 'PUT', url: string, data?: unknown): Promise<T> {
    let status: number;
    let body: unknown;
    try {
      // Status handling is ours: PowerDNS answers 204 on success and JSON errors otherwise.
      const res = await requestJson({ method, url: `${this.baseUrl}${url}`, headers: this.headers, body: data, timeoutMs: this.timeoutMs, agent: this.agent });
      status = res.status;
      body = res.body;
    } catch (err) {
      const reason = err instanceof HttpRequestError ? err.code : String(err);
      // A refused or unresolvable connection never reached PowerDNS; a timeout might have.
      const notApplied = ['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH'].includes(reason);
      throw new AllocatorError('DNS_FAILED', `PowerDNS API unreachable (${method} ${this.zone}): ${reason}`, { reason, notApplied });
    }
    if (status >= 200 && status < 300) return body as T;
    const apiError =
      typeof body === 'object' && body !== null && 'error' in body ? String((body as { error: unknown }).error) : String(body).slice(0, 200);
    // PowerDNS applies a PATCH in one backend transaction: an error answer means nothing changed (a flush changes no record).
    throw new AllocatorError('DNS_FAILED', `PowerDNS API ${method} ${this.zone} answered ${status}: ${apiError}`, { status, apiError, notApplied: true });
  }
}
