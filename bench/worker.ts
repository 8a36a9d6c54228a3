/**
 * The measured process: one GatewayAllocator, driven by bench/run.ts over IPC.
 *
 * It runs as plain JavaScript (run.ts transpiles runtime/ and this file into a
 * temporary directory first) so that its peak RSS is the allocator's, not
 * ts-node's. Besides the allocator it holds only what must sit right next to
 * it: the HTTPS client that checks each allocation through stage-1 the moment
 * `allocate` resolves (a check made later, from another process, could miss a
 * route that went live a few milliseconds after the answer), and a light
 * instrumentation of the runtime's stages for the "where the time goes" table.
 */
import * as dgram from 'dgram';
import { promises as fsp } from 'fs';
import * as fs from 'fs';
import * as https from 'https';
import { Session } from 'inspector';
import { performance } from 'perf_hooks';
import { Pool, PoolClient } from 'pg';
import { GatewayAllocator } from '../runtime/allocator';
import { DnsPublisher } from '../runtime/dns-publisher';
import { RouteFiles } from '../runtime/nginx-route-files';
import { NginxRoutes } from '../runtime/nginx-routes';
import { PoolStore } from '../runtime/pool-store';
import { PowerDnsClient } from '../runtime/powerdns-client';
import { PowerDnsTables } from '../runtime/powerdns-tables';
import { Stage1Status } from '../runtime/stage1-status';
import type { BurstResult, ProfileSummary, Request, Response, StageTotals, WorkerInit } from './protocol';

const stages = new Map<string, StageTotals>();
let sqlStatements = 0;

function record(stage: string, ms: number): void {
  const s = stages.get(stage) ?? { count: 0, ms: 0 };
  s.count += 1;
  s.ms += ms;
  stages.set(stage, s);
}

type AsyncMethod = (...args: unknown[]) => Promise<unknown>;

/** Wraps an async method on a prototype so every call adds its wall time to a stage. */
function instrument(proto: object, method: string, stage: string): void {
  const target = proto as Record<string, AsyncMethod>;
  const original = target[method];
  if (typeof original !== 'function') throw new Error(`cannot instrument ${stage}: ${method} is not a method`);
  target[method] = function (this: unknown, ...args: unknown[]): Promise<unknown> {
    const t0 = performance.now();
    return original.apply(this, args).finally(() => record(stage, performance.now() - t0));
  };
}

// The path of one operation: each call's wall time, queueing for its batch included.
instrument(PoolStore.prototype, 'findByOrganization', 'path: find by organization (queue + statement)');
instrument(PoolStore.prototype, 'claim', 'path: claim (queue + statement)');
instrument(PoolStore.prototype, 'markAllocated', 'path: mark allocated (queue + statement)');
instrument(PoolStore.prototype, 'beginRelease', 'path: begin release (queue + statement)');
instrument(PoolStore.prototype, 'returnToPool', 'path: return to pool (queue + statement)');
instrument(DnsPublisher.prototype, 'publish', 'path: DNS publish (queue + batch)');
instrument(DnsPublisher.prototype, 'withdraw', 'path: DNS withdraw (queue + batch)');
instrument(NginxRoutes.prototype, 'set', 'path: route write/remove (queue + batch + live check)');
// Batches and what they are made of.
instrument(PowerDnsClient.prototype, 'patch', 'dns: PowerDNS PATCH');
instrument(PowerDnsTables.prototype, 'write', 'dns: records write (PowerDNS tables, one statement)');
instrument(PowerDnsClient.prototype, 'flushCache', 'dns: cache purge (PowerDNS API)');
instrument(DnsPublisher.prototype, 'apply', 'dns: batch (lock + write + commit)');
instrument(RouteFiles.prototype, 'apply', 'nginx: batch (lock + route files + live check)');
instrument(Stage1Status.prototype, 'lookup', 'nginx: status-server live check');
instrument(fsp, 'writeFile', 'fs: writeFile');
instrument(fsp, 'rename', 'fs: rename');
instrument(fsp, 'rm', 'fs: rm');

/** Which statement a SQL text is, for the per-statement count. */
function sqlKind(text: string): string {
  const t = text.trimStart();
  if (/^BEGIN/i.test(t)) return 'sql: BEGIN';
  if (/^COMMIT/i.test(t)) return 'sql: COMMIT';
  if (/^ROLLBACK/i.test(t)) return 'sql: ROLLBACK';
  if (/pg_advisory_xact_lock/.test(t)) return 'sql: advisory lock (wait + take)';
  if (/WITH (candidate|req) AS/.test(t)) return 'sql: claim';
  if (/SET state = 'allocated'/.test(t)) return 'sql: mark allocated';
  if (/SET state = 'releasing'/.test(t)) return 'sql: begin release';
  if (/SET state = (\$3|'ready'), organization_id = NULL/.test(t)) return 'sql: return to pool';
  if (/FROM \S+ g WHERE g\.organization_id = (ANY\(\$1::uuid\[\]\)|\$1)$/.test(t.trimEnd())) return 'sql: find by organization';
  if (/organization_id::text AS org/.test(t)) return 'sql: guard (conditions under lock)';
  if (/^WITH zone AS/.test(t)) return 'sql: PowerDNS records (pdns database)';
  return 'sql: other';
}

/** Counts and times every statement any pooled client sends: the allocator's true SQL round trips. */
function instrumentPool(pool: Pool): void {
  pool.on('connect', (client: PoolClient) => {
    const original = client.query.bind(client) as (...args: unknown[]) => unknown;
    (client as unknown as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]): unknown => {
      sqlStatements += 1;
      const first = args[0];
      const text = typeof first === 'string' ? first : ((first as { text?: string } | undefined)?.text ?? '');
      const kind = sqlKind(text);
      const t0 = performance.now();
      const last = args[args.length - 1];
      if (typeof last === 'function') {
        const cb = last as (...a: unknown[]) => void;
        args[args.length - 1] = (...a: unknown[]): void => {
          record(kind, performance.now() - t0);
          cb(...a);
        };
        return original(...args);
      }
      const out = original(...args);
      if (out && typeof (out as Promise<unknown>).then === 'function') {
        return (out as Promise<unknown>).finally(() => record(kind, performance.now() - t0));
      }
      return out;
    };
  });
}

let allocator: GatewayAllocator | undefined;
let pool: Pool | undefined;
let pdnsPool: Pool | undefined;
let init: WorkerInit | undefined;
let agent: https.Agent | undefined;
let session: Session | undefined;

function need<T>(v: T | undefined, what: string): T {
  if (v === undefined) throw new Error(`worker not initialised (${what})`);
  return v;
}

/**
 * One HTTPS request through stage-1 for the organization, over a kept-alive
 * TLS connection (the server is chosen by the Host header, exactly as for a
 * browser; reusing connections keeps the check from costing a TLS handshake
 * per allocation). Live means: answered by the organization's own gateway.
 */
function checkLive(org: string, expectedHost: string): Promise<{ ok: boolean; status: number; detail: string }> {
  const cfg = need(init, 'check').check;
  const fqdn = `org-${org}.${need(init, 'domain').domain}`;
  const once = (): Promise<{ ok: boolean; status: number; detail: string; retry: boolean }> =>
    new Promise((resolve) => {
      const req = https.request(
        { host: '127.0.0.1', port: cfg.port, servername: cfg.servername, method: 'GET', path: '/bench-check', headers: { host: fqdn }, agent },
        (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (body += c));
          res.on('end', () => {
            let seen: { gatewayAddress?: string; host?: string } = {};
            try {
              seen = JSON.parse(body) as typeof seen;
            } catch {
              /* not the stand-in gateway's answer */
            }
            const ok = res.statusCode === 200 && seen.gatewayAddress === expectedHost && seen.host === fqdn;
            resolve({ ok, status: res.statusCode ?? 0, detail: ok ? '' : body.slice(0, 120), retry: false });
          });
        },
      );
      req.on('error', (err) => {
        // A kept-alive connection nginx closed just before we reused it: not a routing answer, ask again.
        resolve({ ok: false, status: 0, detail: err.message, retry: req.reusedSocket });
      });
      req.end();
    });
  return once().then((r) => (r.retry ? once() : r));
}

/** One DNS query (A, no recursion) to PowerDNS over UDP: the answer's rcode and A records. */
function dnsQueryA(port: number, name: string): Promise<{ rcode: number; addresses: string[] }> {
  return new Promise((resolve, reject) => {
    const id = Math.floor(Math.random() * 0xffff);
    const labels = name.split('.').filter(Boolean);
    const qname = Buffer.concat([...labels.map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l, 'ascii')])), Buffer.from([0])]);
    const header = Buffer.alloc(12);
    header.writeUInt16BE(id, 0);
    header.writeUInt16BE(1, 4); // one question
    const query = Buffer.concat([header, qname, Buffer.from([0, 1, 0, 1])]); // A, IN
    const socket = dgram.createSocket('udp4');
    const timer = setTimeout(() => {
      socket.close();
      reject(new Error(`no DNS answer for ${name}`));
    }, 3000);
    socket.on('message', (msg) => {
      if (msg.readUInt16BE(0) !== id) return;
      clearTimeout(timer);
      socket.close();
      const rcode = msg.readUInt16BE(2) & 0x0f;
      const ancount = msg.readUInt16BE(6);
      let off = 12;
      const skipName = (): void => {
        for (;;) {
          const len = msg[off];
          if ((len & 0xc0) === 0xc0) {
            off += 2;
            return;
          }
          off += 1 + len;
          if (len === 0) return;
        }
      };
      skipName();
      off += 4; // qtype, qclass
      const addresses: string[] = [];
      for (let i = 0; i < ancount; i++) {
        skipName();
        const type = msg.readUInt16BE(off);
        const rdlength = msg.readUInt16BE(off + 8);
        off += 10;
        if (type === 1 && rdlength === 4) addresses.push([...msg.subarray(off, off + 4)].join('.'));
        off += rdlength;
      }
      resolve({ rcode, addresses });
    });
    socket.on('error', (err) => {
      clearTimeout(timer);
      socket.close();
      reject(err);
    });
    socket.send(query, port, '127.0.0.1');
  });
}

let allocationsSeen = 0;

async function burst(kind: 'allocate' | 'release', orgs: string[], concurrency: number, check: boolean): Promise<BurstResult> {
  const a = need(allocator, 'burst');
  const m0 = a.metrics();
  const sql0 = sqlStatements;
  stages.clear();
  const cpu0 = process.cpuUsage();
  const latencies: number[] = [];
  const errors: BurstResult['errors'] = [];
  const checks: Array<Promise<void>> = [];
  const notLive: BurstResult['notLive'] = [];
  const dnsMissing: BurstResult['dnsMissing'] = [];
  let dnsChecked = 0;
  let checked = 0;
  let next = 0;
  const started = performance.now();
  const lane = async (): Promise<void> => {
    while (next < orgs.length) {
      const org = orgs[next++];
      const t0 = performance.now();
      try {
        if (kind === 'allocate') {
          const g = await a.allocate(org);
          latencies.push(performance.now() - t0);
          // Issued in the same tick allocate resolved, before anything else runs.
          if (check) {
            checked += 1;
            checks.push(checkLive(org, g.host).then((r) => void (r.ok || notLive.push({ org, status: r.status, detail: r.detail }))));
            const cfg = need(init, 'check').check;
            allocationsSeen += 1;
            if (cfg.dnsSampleEvery > 0 && allocationsSeen % cfg.dnsSampleEvery === 0) {
              dnsChecked += 1;
              const name = `org-${org}.${need(init, 'domain').domain}`;
              checks.push(
                dnsQueryA(cfg.dnsPort, name).then(
                  (d) => void ((d.rcode === 0 && d.addresses.includes(cfg.publicIp)) || dnsMissing.push({ org, detail: `rcode ${d.rcode}, A ${d.addresses.join(',') || 'none'}` })),
                  (err: Error) => void dnsMissing.push({ org, detail: err.message }),
                ),
              );
            }
          }
        } else {
          await a.release(org);
          latencies.push(performance.now() - t0);
        }
      } catch (err) {
        const e = err as { code?: string; message?: string };
        errors.push({ org, code: e.code ?? 'UNKNOWN', message: String(e.message ?? err).slice(0, 300) });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, concurrency) }, lane));
  const elapsedMs = performance.now() - started;
  await Promise.all(checks);
  const cpu = process.cpuUsage(cpu0);
  const m1 = a.metrics();
  return {
    kind,
    concurrency,
    ops: orgs.length,
    latencies,
    elapsedMs,
    errors,
    checked,
    notLive,
    dnsChecked,
    dnsMissing,
    metrics: {
      sqlRoundTrips: m1.sqlRoundTrips - m0.sqlRoundTrips,
      dnsPatches: m1.dnsPatches - m0.dnsPatches,
      dnsTableWrites: m1.dnsTableWrites - m0.dnsTableWrites,
      dnsCacheFlushes: m1.dnsCacheFlushes - m0.dnsCacheFlushes,
      nginxTests: m1.nginxTests - m0.nginxTests,
      nginxReloads: m1.nginxReloads - m0.nginxReloads,
      nginxRouteMs: m1.nginxRouteMs - m0.nginxRouteMs,
    },
    sqlStatements: sqlStatements - sql0,
    stages: Object.fromEntries(stages),
    cpuMs: (cpu.user + cpu.system) / 1000,
  };
}

function post<T>(s: Session, method: string, params?: object): Promise<T> {
  return new Promise((resolve, reject) => s.post(method, params ?? {}, (err, res) => (err ? reject(err) : resolve(res as T))));
}

interface CpuProfile {
  nodes: Array<{ id: number; callFrame: { functionName: string; url: string; lineNumber: number }; hitCount?: number }>;
  startTime: number;
  endTime: number;
  samples?: number[];
}

/** Where sampled CPU time went, grouped by the code's origin. */
function summarize(p: CpuProfile): ProfileSummary {
  const totalMs = (p.endTime - p.startTime) / 1000;
  const hits = p.nodes.reduce((s, n) => s + (n.hitCount ?? 0), 0) || 1;
  const msPerHit = totalMs / hits;
  const group = (url: string, fn: string): string => {
    if (fn === '(idle)') return 'idle (waiting on PostgreSQL, PowerDNS, nginx)';
    if (fn === '(garbage collector)') return 'garbage collector';
    if (fn === '(program)') return 'V8/native (outside JS)';
    if (url.includes('/runtime/')) return 'allocator (runtime/)';
    if (url.includes('/node_modules/pg')) return 'pg driver';
    if (url.includes('/bench/')) return 'bench harness (HTTPS checks, instrumentation)';
    if (url.startsWith('node:')) return 'Node core (net, tls, http, fs, timers)';
    if (url === '') return 'native bindings (socket writes, file I/O)';
    return 'other';
  };
  const byFn = new Map<string, { where: string; ms: number }>();
  const byGroup = new Map<string, number>();
  for (const n of p.nodes) {
    const ms = (n.hitCount ?? 0) * msPerHit;
    if (ms === 0) continue;
    const { functionName, url, lineNumber } = n.callFrame;
    const g = group(url, functionName);
    byGroup.set(g, (byGroup.get(g) ?? 0) + ms);
    const short = url.replace(/^.*\/(node_modules\/|runtime\/|bench\/)/, '$1');
    const key = `${functionName || '(anonymous)'} ${short ? `${short}:${lineNumber + 1}` : ''}`.trim();
    const e = byFn.get(key) ?? { where: g, ms: 0 };
    e.ms += ms;
    byFn.set(key, e);
  }
  const pct = (ms: number): number => Math.round((1000 * ms) / totalMs) / 10;
  return {
    totalMs,
    top: [...byFn]
      .filter(([k]) => !k.startsWith('(idle)'))
      .sort((x, y) => y[1].ms - x[1].ms)
      .slice(0, 12)
      .map(([fn, e]) => ({ fn, where: e.where, selfMs: Math.round(e.ms), pct: pct(e.ms) })),
    byGroup: [...byGroup].sort((x, y) => y[1] - x[1]).map(([g, ms]) => ({ group: g, selfMs: Math.round(ms), pct: pct(ms) })),
  };
}

async function handle(req: Request): Promise<Response> {
  switch (req.type) {
    case 'init': {
      init = req.init;
      pool = new Pool({ connectionString: init.pgUrl, max: init.pgMax });
      pool.on('error', () => undefined);
      instrumentPool(pool);
      agent = new https.Agent({ keepAlive: true, maxSockets: 64, ca: fs.readFileSync(init.check.caFile) });
      if (init.pdnsDbUrl) {
        pdnsPool = new Pool({ connectionString: init.pdnsDbUrl, max: 4 });
        pdnsPool.on('error', () => undefined);
        instrumentPool(pdnsPool);
      }
      allocator = new GatewayAllocator({
        envName: init.envName,
        domain: init.domain,
        publicIp: '127.0.0.1',
        pg: pool,
        powerdns: pdnsPool ? { ...init.powerdns, database: pdnsPool } : init.powerdns,
        nginx: init.nginx,
        schema: init.schema,
        logger: null,
      });
      await allocator.migrate();
      // Writes the base config (one reload at start), so no measured phase pays it.
      await allocator.reconcile();
      return { id: req.id, ok: true, type: 'init' };
    }
    case 'register': {
      const a = need(allocator, 'register');
      await a.registerGateways(req.inventory);
      for (let i = 0; i < req.inventory.length; i += 1000) await a.markReady(req.inventory.slice(i, i + 1000).map((g) => g.name));
      return { id: req.id, ok: true, type: 'register' };
    }
    case 'burst':
      return { id: req.id, ok: true, type: 'burst', result: await burst(req.kind, req.orgs, req.concurrency, req.check) };
    case 'profile': {
      if (req.action === 'start') {
        session = new Session();
        session.connect();
        await post(session, 'Profiler.enable');
        await post(session, 'Profiler.setSamplingInterval', { interval: 500 });
        await post(session, 'Profiler.start');
        return { id: req.id, ok: true, type: 'profile' };
      }
      const s = need(session, 'profile');
      const { profile } = await post<{ profile: CpuProfile }>(s, 'Profiler.stop');
      s.disconnect();
      session = undefined;
      return { id: req.id, ok: true, type: 'profile', profile: summarize(profile) };
    }
    case 'close':
      await allocator?.close();
      await pool?.end();
      await pdnsPool?.end();
      agent?.destroy();
      return { id: req.id, ok: true, type: 'close' };
  }
}

process.on('message', (msg: Request) => {
  handle(msg).then(
    (res) => process.send?.(res),
    (err: unknown) => process.send?.({ id: msg.id, ok: false, error: err instanceof Error ? `${err.name}: ${err.message}` : String(err) } satisfies Response),
  );
});
process.on('disconnect', () => process.exit(0));
