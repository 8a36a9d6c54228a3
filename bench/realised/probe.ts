/**
 * The cold-start probe: what a user-side service does to start an organization and wait until it
 * serves, with times. Two ways to wait, both measuring the same thing ("first 200 from that
 * organization's own gateway, naming it with state serving, through stage 1 over CA-verified TLS"):
 *   cold: a new TLS connection for the operator call and for every poll, polls back to back (the
 *         first rows' probe: a TLS handshake per poll on a 2-core machine taxes the path it measures);
 *   warm: the operator call on a kept-alive connection to ganymede (a user-side service keeps its API
 *         connection), polls on one kept-alive connection to the organization's name (its certificate
 *         verified on the first), one every POLL_INTERVAL_MS (adds half of it on average).
 */
import * as https from 'https';
import { ganymedeFqdn, orgFqdn } from '../../runtime/naming';
import type { Deployment } from '../../test/e2e/realise/deployment';

export type ProbeMode = 'cold' | 'warm';

/** Gap between two polls of the warm probe (its average cost: half of it). */
export const POLL_INTERVAL_MS = 5;
/** How long an organization may take from its start to serving before the probe counts it as failed. */
export const COLD_START_BOUND_MS = 30_000;

export interface ProbeTimes {
  organizationId: string;
  /** Wall clock (ms since the epoch, the containers' clock too) when the operator call was sent. */
  sentAt: number;
  /** When the operator start answered 200. */
  startAnsweredAt: number;
  /** When the first 200 naming the organization with state serving arrived; null if none within the bound. */
  servingAt: number | null;
  polls: number;
  /** From sentAt to servingAt (hrtime), ms. */
  ms: number | null;
}

interface Answer { status: number; body: string }

function request(d: Deployment, agent: https.Agent | false, ca: Buffer | undefined, name: string, method: string, urlPath: string, headers: Record<string, string>, body?: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: d.httpsHost, port: d.httpsPort, servername: name, path: urlPath, method, ca, agent, timeout: 5000,
      headers: { host: name, ...headers, ...(body === undefined ? {} : { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) }) },
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${name}${urlPath}: no answer within 5 s`)));
    req.on('error', reject);
    req.end(body);
  });
}

/** One probe per worker: its kept-alive connection to ganymede outlives the organizations it starts. */
export class ColdStartProbe {
  private readonly apiAgent: https.Agent | false;

  constructor(private readonly d: Deployment, private readonly token: string, private readonly ca: Buffer | undefined, readonly mode: ProbeMode) {
    this.apiAgent = mode === 'warm' ? new https.Agent({ keepAlive: true, maxSockets: 1 }) : false;
  }

  async operator(method: 'GET' | 'POST', urlPath: string): Promise<{ status: number; json: Record<string, unknown> }> {
    const r = await request(this.d, this.apiAgent, this.ca, ganymedeFqdn(this.d.outputs.domain), method, `/operator${urlPath}`, { authorization: `Bearer ${this.token}` }, method === 'POST' ? '{}' : undefined);
    return { status: r.status, json: JSON.parse(r.body) as Record<string, unknown> };
  }

  /** Starts `org` and waits (at most boundMs) for the first 200 from its gateway that names it serving. */
  async start(org: string, boundMs: number): Promise<ProbeTimes> {
    const fqdn = orgFqdn(org, this.d.outputs.domain);
    const sentAt = Date.now();
    const t0 = process.hrtime.bigint();
    const started = await this.operator('POST', `/organizations/${org}/start`);
    if (started.status !== 200) throw new Error(`start ${org}: ${started.status} ${String(started.json.code)}: ${String(started.json.message)}`);
    const startAnsweredAt = Date.now();
    const orgAgent = this.mode === 'warm' ? new https.Agent({ keepAlive: true, maxSockets: 1 }) : false;
    const deadline = Date.now() + boundMs;
    let polls = 0;
    try {
      while (Date.now() < deadline) {
        polls += 1;
        const r = await request(this.d, orgAgent, this.ca, fqdn, 'GET', '/_app/status', {}).catch(() => undefined);
        if (r && r.status === 200) {
          const s = JSON.parse(r.body) as { state?: string; organization_id?: string | null };
          if (s.organization_id === org && s.state === 'serving') {
            return { organizationId: org, sentAt, startAnsweredAt, servingAt: Date.now(), polls, ms: Number(process.hrtime.bigint() - t0) / 1e6 };
          }
        }
        if (this.mode === 'warm') await new Promise((res) => setTimeout(res, POLL_INTERVAL_MS));
      }
      return { organizationId: org, sentAt, startAnsweredAt, servingAt: null, polls, ms: null };
    } finally {
      if (orgAgent) orgAgent.destroy();
    }
  }

  close(): void {
    if (this.apiAgent) this.apiAgent.destroy();
  }
}
