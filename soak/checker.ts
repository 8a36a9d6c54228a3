/**
 * The invariant checker. It reads the three places state lives — PostgreSQL
 * (the truth), the stage-1 nginx route files (checked through real HTTPS
 * requests) and PowerDNS (checked through the API and real `dig` queries) —
 * and compares them.
 *
 * During the run a sample must be consistent although allocations keep
 * going: it reads routes while holding the allocator's own nginx advisory
 * lock, and DNS while holding its zone lock (every route/record write of
 * every allocator process happens inside those locks). Within a lock the
 * effects are frozen, and the pool rows cannot move in a way that would make
 * an effect legitimately disagree with them: a gateway leaves an organization
 * only after its effects are withdrawn, which needs the lock we hold. So any
 * disagreement seen under the lock is a real violation, not a race of the
 * checker. (The lock keys mirror runtime/dns-publisher.ts and
 * runtime/nginx-lock.ts; if they changed, samples would show false
 * violations, never hide real ones.)
 */
import { promises as fs } from 'fs';
import * as http from 'http';
import * as path from 'path';
import type { Pool, PoolClient } from 'pg';
import { orgIdOfRouteFile, renderRoute, routeOwnerLine } from '../runtime/nginx-config';
import { Stage1Nginx, curlThroughStage1, dig } from '../test/helpers/stage1-nginx';
import { inTransaction } from '../runtime/pg-transaction';

export interface Violation {
  at: string;
  kind: string;
  detail: string;
}

export interface GatewayInfo {
  name: string;
  host: string;
  httpPort: number;
}

export interface PoolRow {
  name: string;
  state: string;
  organization_id: string | null;
  allocation_id: string | null;
}

export interface CheckerOptions {
  pg: Pool;
  schema: string;
  envName: string;
  domain: string;
  zone: string;
  publicIp: string;
  inventory: GatewayInfo[];
  nginx: Stage1Nginx;
  pdns: { apiUrl: string; apiKey: string; dnsPort: number };
  orgs: string[];
}

const HELD = new Set(['allocating', 'allocated', 'releasing']);
const VALID = new Set(['registered', 'ready', 'allocating', 'allocated', 'releasing']);

interface OwnedRRset {
  orgId: string;
  name: string;
  records: string[];
}

function pick<T>(items: T[], n: number): T[] {
  const copy = [...items];
  for (let i = copy.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [copy[i], copy[j]] = [copy[j], copy[i]];
  }
  return copy.slice(0, n);
}

/** A check that could not run (service down during a fault); counted, not a violation. */
class Skip extends Error {}

export class Checker {
  readonly violations: Violation[] = [];
  samples = 0;
  readonly skipped: Record<string, number> = {};
  probes = { https: 0, dig: 0 };
  private readonly byName: Map<string, GatewayInfo>;
  private readonly routesDir: string;

  constructor(private readonly o: CheckerOptions) {
    this.byName = new Map(o.inventory.map((g) => [g.name, g]));
    this.routesDir = path.join(o.nginx.confDir, 'routes');
  }

  private violation(kind: string, detail: string): void {
    this.violations.push({ at: new Date().toISOString(), kind, detail });
  }

  /** Keyed by part and first words of the reason, so the report shows what was down how often. */
  private skip(what: string, err: unknown): void {
    const reason = (err instanceof Error ? err.message : String(err)).split('\n')[0].replace(/[0-9a-f-]{36}|\d+/g, '#').slice(0, 60);
    const key = `${what}: ${reason}`;
    this.skipped[key] = (this.skipped[key] ?? 0) + 1;
  }

  private async rows(c: Pool | PoolClient): Promise<PoolRow[]> {
    return (
      await c.query<PoolRow>(
        `SELECT name, state, organization_id::text AS organization_id, allocation_id::text AS allocation_id FROM "${this.o.schema}".gateways ORDER BY name`,
      )
    ).rows;
  }

  /** The pool's own invariants: every gateway present, valid states, one gateway per organization and vice versa. */
  checkRows(rows: PoolRow[], final: boolean): void {
    const names = new Set(rows.map((r) => r.name));
    const missing = this.o.inventory.filter((g) => !names.has(g.name)).map((g) => g.name);
    if (missing.length > 0 || rows.length !== this.o.inventory.length) {
      this.violation('gateway-lost', `pool has ${rows.length} rows, expected ${this.o.inventory.length}; missing ${missing.slice(0, 5).join(', ')}`);
    }
    const orgCount = new Map<string, string[]>();
    for (const r of rows) {
      if (!VALID.has(r.state)) this.violation('gateway-lost', `${r.name} is in state ${r.state}`);
      if (HELD.has(r.state) !== (r.organization_id !== null)) this.violation('bad-row', `${r.name}: state ${r.state} with organization ${r.organization_id}`);
      if (final && (r.state === 'allocating' || r.state === 'releasing')) this.violation('final-transitional', `${r.name} still ${r.state} after reconcile`);
      if (r.organization_id) orgCount.set(r.organization_id, [...(orgCount.get(r.organization_id) ?? []), r.name]);
    }
    for (const [org, gws] of orgCount) if (gws.length > 1) this.violation('org-two-gateways', `organization ${org} holds ${gws.join(', ')}`);
  }

  /** Under the lock key the allocator uses for this zone or confDir. */
  private underLock<T>(key: string, fn: (c: PoolClient) => Promise<T>): Promise<T> {
    // Bounded: a sample must not queue behind a hung writer for long.
    return inTransaction(this.o.pg, fn, { lockKey: key, lockTimeoutMs: 10_000 });
  }

  private async routeFiles(): Promise<{ owned: Map<string, string>; stray: string[] }> {
    const owned = new Map<string, string>();
    const stray: string[] = [];
    let names: string[] = [];
    try {
      names = await fs.readdir(this.routesDir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    for (const name of names) {
      const orgId = orgIdOfRouteFile(name);
      if (!orgId) {
        stray.push(name);
        continue;
      }
      const content = await fs.readFile(path.join(this.routesDir, name), 'utf8').catch(() => undefined);
      if (content !== undefined && content.startsWith(`${routeOwnerLine(this.o.envName, orgId)} `)) owned.set(orgId, content);
      else stray.push(name);
    }
    return { owned, stray };
  }

  private expectedRoute(r: PoolRow): string {
    const g = this.byName.get(r.name);
    if (!g) throw new Error(`unknown gateway ${r.name}`);
    return renderRoute(this.o.envName, r.organization_id as string, r.name, g.host, g.httpPort);
  }

  /** HTTPS through stage-1: 200 from the expected gateway, or 404 when none is expected. */
  private async probeHttps(org: string, expectHost: string | null, label: string): Promise<void> {
    this.probes.https += 1;
    let res: { status: number; body: string };
    try {
      res = await curlThroughStage1(this.o.nginx, `org-${org}.${this.o.domain}`);
    } catch (err) {
      this.violation(`${label}-https-failed`, `HTTPS to org-${org} failed: ${(err as Error).message.slice(0, 200)}`);
      return;
    }
    if (expectHost === null) {
      if (res.status !== 404) this.violation(`${label}-route-not-removed`, `org-${org} holds no gateway but HTTPS answered ${res.status} ${res.body.slice(0, 100)}`);
      return;
    }
    let addr: unknown;
    try {
      addr = (JSON.parse(res.body) as { gatewayAddress?: unknown }).gatewayAddress;
    } catch {
      addr = undefined;
    }
    if (res.status !== 200 || addr !== expectHost) {
      this.violation(`${label}-dead-route`, `org-${org} should reach ${expectHost}, HTTPS answered ${res.status} from ${String(addr)}: ${res.body.slice(0, 100)}`);
    }
  }

  /**
   * Routes vs pool: an owned route file must belong to an organization that
   * holds that very gateway; an allocated organization must have its route.
   * With the nginx lock held, also asks nginx itself (HTTPS) for a few orgs.
   */
  private checkRoutes(rows: PoolRow[], owned: Map<string, string>, label: string): void {
    const holder = new Map(rows.filter((r) => r.organization_id).map((r) => [r.organization_id as string, r]));
    for (const [org, content] of owned) {
      const r = holder.get(org);
      if (!r) this.violation(`${label}-route-orphan`, `route file for ${org} (${content.split('\n')[0].replace(/^.*gateway=/, 'gateway=')}) but the organization holds no gateway`);
      else if (content !== this.expectedRoute(r)) this.violation(`${label}-route-wrong-gateway`, `route of ${org} is ${JSON.stringify(content.split('\n')[1])} but it holds ${r.name}`);
    }
    for (const r of rows) {
      if (r.state === 'allocated' && !owned.has(r.organization_id as string)) this.violation(`${label}-route-missing`, `${r.organization_id} is allocated to ${r.name} but has no route file`);
    }
  }

  private async listDns(): Promise<OwnedRRset[]> {
    const body = await new Promise<string>((resolve, reject) => {
      const url = new URL(`${this.o.pdns.apiUrl}/api/v1/servers/localhost/zones/${this.o.zone}.`);
      const req = http.get(url, { headers: { 'X-API-Key': this.o.pdns.apiKey }, timeout: 3000 }, (res) => {
        let b = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (b += c));
        res.on('end', () => (res.statusCode === 200 ? resolve(b) : reject(new Skip(`PowerDNS answered ${res.statusCode}`))));
      });
      req.on('timeout', () => req.destroy(new Skip('PowerDNS API timeout')));
      req.on('error', (e) => reject(e instanceof Skip ? e : new Skip(e.message)));
    });
    const zone = JSON.parse(body) as { rrsets: Array<{ name: string; type: string; records: Array<{ content: string }>; comments: Array<{ content: string; account: string }> }> };
    const out: OwnedRRset[] = [];
    for (const rr of zone.rrsets) {
      const m = /^(?:\*\.)?org-([0-9a-f-]{36})\./.exec(rr.name);
      if (!m || rr.type !== 'A') continue;
      if (!rr.comments.some((c) => c.content === `owner=demiurge-allocator env=${this.o.envName} org=${m[1]}`)) continue;
      out.push({ orgId: m[1], name: rr.name, records: rr.records.map((r) => r.content) });
    }
    return out;
  }

  /** DNS vs pool: owned records only for organizations that hold a gateway; both names for every allocated one. */
  private checkDns(rows: PoolRow[], owned: OwnedRRset[], label: string): Map<string, OwnedRRset[]> {
    const holder = new Map(rows.filter((r) => r.organization_id).map((r) => [r.organization_id as string, r]));
    const byOrg = new Map<string, OwnedRRset[]>();
    for (const rr of owned) byOrg.set(rr.orgId, [...(byOrg.get(rr.orgId) ?? []), rr]);
    for (const [org, sets] of byOrg) {
      if (!holder.has(org)) this.violation(`${label}-dns-orphan`, `owned records ${sets.map((s) => s.name).join(', ')} but ${org} holds no gateway`);
    }
    for (const r of rows) {
      if (r.state !== 'allocated') continue;
      const sets = byOrg.get(r.organization_id as string) ?? [];
      const ok = sets.length === 2 && sets.every((s) => s.records.length === 1 && s.records[0] === this.o.publicIp);
      if (!ok) this.violation(`${label}-dns-missing`, `${r.organization_id} is allocated to ${r.name} but its records are ${JSON.stringify(sets.map((s) => [s.name, s.records]))}`);
    }
    return byOrg;
  }

  private async probeDig(org: string, expected: boolean, label: string): Promise<void> {
    for (const name of [`org-${org}.${this.o.domain}`, `uc-soak.org-${org}.${this.o.domain}`]) {
      this.probes.dig += 1;
      let ans: string[] | 'NXDOMAIN';
      try {
        ans = await dig(this.o.pdns.dnsPort, name);
      } catch (err) {
        if (label === 'final') this.violation('final-dig-failed', `dig ${name}: ${(err as Error).message.split('\n')[0]}`);
        else this.skip('dig', err);
        return;
      }
      const good = expected ? Array.isArray(ans) && ans.length === 1 && ans[0] === this.o.publicIp : ans === 'NXDOMAIN';
      if (!good) this.violation(`${label}-dig-mismatch`, `dig ${name} answered ${JSON.stringify(ans)}, expected ${expected ? this.o.publicIp : 'NXDOMAIN'}`);
    }
  }

  /** One sample during the run. Parts whose service is down are skipped (and counted). */
  async sample(): Promise<void> {
    this.samples += 1;
    try {
      this.checkRows(await this.rows(this.o.pg), false);
    } catch (err) {
      this.skip('sql', err);
      return;
    }
    try {
      await this.underLock(`demiurge-nginx:${this.o.nginx.confDir}`, async (c) => {
        const { owned } = await this.routeFiles();
        const rows = await this.rows(c);
        this.checkRoutes(rows, owned, 'sample');
        // nginx itself, while the files cannot change: one routed and one unrouted organization.
        const routed = pick(rows.filter((r) => r.organization_id && owned.has(r.organization_id)), 1);
        for (const r of routed) await this.probeHttps(r.organization_id as string, this.byName.get(r.name)?.host ?? '?', 'sample');
        const free = pick(this.o.orgs.filter((o) => !owned.has(o)), 1);
        for (const o of free) await this.probeHttps(o, null, 'sample');
      });
    } catch (err) {
      this.skip('routes', err);
    }
    try {
      await this.underLock(`demiurge-dns-zone:${this.o.zone}.`, async (c) => {
        const owned = await this.listDns();
        const rows = await this.rows(c);
        const byOrg = this.checkDns(rows, owned, 'sample');
        const withDns = pick([...byOrg.keys()].filter((o) => byOrg.get(o)?.length === 2), 1);
        for (const o of withDns) await this.probeDig(o, true, 'sample');
        const without = pick(this.o.orgs.filter((o) => !byOrg.has(o)), 1);
        for (const o of without) await this.probeDig(o, false, 'sample');
      });
    } catch (err) {
      this.skip('dns', err);
    }
  }

  /**
   * The end state, after faults stopped, workers exited and reconcile() ran:
   * every organization checked by dig and HTTPS, every owned effect accounted for.
   */
  async final(): Promise<{ allocated: number; ready: number; registered: number; strayFiles: string[]; byState: Record<string, number> }> {
    const rows = await this.rows(this.o.pg);
    this.checkRows(rows, true);
    const byState: Record<string, number> = {};
    for (const r of rows) byState[r.state] = (byState[r.state] ?? 0) + 1;
    const { owned, stray } = await this.routeFiles();
    this.checkRoutes(rows, owned, 'final');
    const dns = await this.listDns();
    const byOrg = this.checkDns(rows, dns, 'final');
    for (const s of stray) this.violation('final-stray-file', `unexpected file in ${this.routesDir}: ${s}`);
    const holder = new Map(rows.filter((r) => r.state === 'allocated').map((r) => [r.organization_id as string, r]));
    const everyOrg = [...new Set([...this.o.orgs, ...owned.keys(), ...byOrg.keys()])];
    // Bounded parallelism: these are real processes (curl, dig).
    let next = 0;
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (next < everyOrg.length) {
          const org = everyOrg[next++];
          const r = holder.get(org);
          await this.probeDig(org, !!r, 'final');
          await this.probeHttps(org, r ? (this.byName.get(r.name)?.host ?? '?') : null, 'final');
        }
      }),
    );
    return { allocated: byState.allocated ?? 0, ready: byState.ready ?? 0, registered: byState.registered ?? 0, strayFiles: stray, byState };
  }
}
