/**
 * One soak worker: an API-server-like process holding a GatewayAllocator and
 * an OrgDataStore, running random operations on many organizations in
 * `lanes` concurrent loops until the orchestrator says stop. It may be
 * SIGKILLed at any moment; everything the orchestrator must know about an
 * unfinished push is sent (and written to the pipe) before the push starts.
 *
 * It uses the library API directly (no HTTP router): the soak exercises the
 * allocator's and the store's own failure handling.
 */
import { Pool } from 'pg';
import { GatewayAllocator } from '../runtime/allocator';
import { isAllocatorError } from '../runtime/errors';
import { OrgDataStore } from '../runtime/org-data-store';
import type { OpError, OpKind, OpResult, OrchestratorMessage, WorkerInit, WorkerMessage } from './protocol';
import { makeSnapshot, snapshotHash } from './snapshot';

/** Small seeded PRNG (mulberry32): the op mix is reproducible per worker slot and generation. */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function send(msg: WorkerMessage): Promise<void> {
  return new Promise((resolve) => {
    if (!process.send || !process.connected) return resolve();
    // The callback fires once the message is in the pipe: it survives our own SIGKILL.
    process.send(msg, undefined, {}, () => resolve());
  });
}

function toOpError(err: unknown): OpError {
  if (isAllocatorError(err)) return { code: err.code, retryable: err.retryable, message: err.message.slice(0, 300) };
  const e = err instanceof Error ? err : new Error(String(err));
  return { code: null, retryable: null, message: `${e.name}: ${e.message}`.slice(0, 300) + (e.stack ? `\n${e.stack.split('\n').slice(1, 6).join('\n')}` : '') };
}

class Worker {
  private readonly rand: () => number;
  private readonly pool: Pool;
  private readonly allocator: GatewayAllocator;
  private readonly store: OrgDataStore;
  /** What this process believes it holds: org → gateway (and the allocation token it was given or rotated). */
  private readonly held = new Map<string, { gateway: string; token: string | null }>();
  private readonly pushedOrgs: string[] = [];
  private stopping = false;
  private slowFactor = 1;
  private seq = 0;
  private readonly opKinds: OpKind[];
  private readonly cumulative: number[];

  constructor(private readonly init: WorkerInit) {
    this.rand = prng(init.seed * 7919 + init.slot * 104729 + init.generation);
    this.pool = new Pool({ connectionString: init.pgUrl, max: init.pgMax });
    // A terminated idle connection (pg_terminate_backend, restart) must not kill the process.
    this.pool.on('error', () => undefined);
    this.allocator = new GatewayAllocator({
      envName: init.envName,
      domain: init.domain,
      publicIp: init.publicIp,
      pg: this.pool,
      powerdns: init.powerdns,
      nginx: init.nginx,
      schema: init.schema,
      leaseMs: init.leaseMs,
      waitTimeoutMs: init.waitTimeoutMs,
      // Default logger: JSON lines on stderr, which the orchestrator keeps per worker for post-mortems.
    });
    this.store = new OrgDataStore({ pg: this.pool, schema: init.schema });
    this.opKinds = (Object.keys(init.weights) as OpKind[]).filter((k) => init.weights[k] > 0);
    let acc = 0;
    this.cumulative = this.opKinds.map((k) => (acc += init.weights[k]));
  }

  onMessage(msg: OrchestratorMessage): void {
    if (msg.t === 'slow') this.slowFactor = msg.factor;
    if (msg.t === 'stop') this.stopping = true;
  }

  async run(): Promise<void> {
    await Promise.all(Array.from({ length: this.init.lanes }, () => this.lane()));
    await this.allocator.close().catch(() => undefined);
    await this.pool.end().catch(() => undefined);
    const m = this.allocator.metrics();
    await send({ t: 'done', metrics: { sqlRoundTrips: m.sqlRoundTrips, dnsPatches: m.dnsPatches, nginxTests: m.nginxTests, nginxReloads: m.nginxReloads } });
  }

  private pick<T>(items: T[]): T {
    return items[Math.floor(this.rand() * items.length)];
  }

  private pickOp(): OpKind {
    const x = this.rand() * this.cumulative[this.cumulative.length - 1];
    return this.opKinds[this.cumulative.findIndex((c) => x < c)];
  }

  /** Mostly organizations this process believes it holds (so release/push/heartbeat do real work), sometimes any. */
  private pickOrg(preferHeld: boolean): string {
    if (preferHeld && this.held.size > 0 && this.rand() < 0.85) return this.pick([...this.held.keys()]);
    return this.pick(this.init.orgs);
  }

  private async lane(): Promise<void> {
    // Lanes start staggered, not as one burst.
    await sleep(this.rand() * this.init.thinkMs);
    while (!this.stopping) {
      const op = this.pickOp();
      const org = op === 'reconcile' || op === 'reap' ? null : op === 'pull' && this.pushedOrgs.length > 0 && this.rand() < 0.7 ? this.pick(this.pushedOrgs) : this.pickOrg(op !== 'allocate');
      const id = `${this.init.slot}.${this.init.generation}.${++this.seq}`;
      const started = Date.now();
      void send({ t: 'op-start', id, op, org, at: started });
      const watchdog = setTimeout(() => void send({ t: 'hang', id, op, org, ms: Date.now() - started }), this.init.hangMs);
      try {
        const result = await this.execute(id, op, org);
        clearTimeout(watchdog);
        await send({ t: 'op-end', id, op, org, at: Date.now(), ms: Date.now() - started, ok: true, result });
      } catch (err) {
        clearTimeout(watchdog);
        if (isAllocatorError(err, 'NOT_ALLOCATED') && org) this.held.delete(org);
        await send({ t: 'op-end', id, op, org, at: Date.now(), ms: Date.now() - started, ok: false, error: toOpError(err) });
        if (isAllocatorError(err) && err.retryable) {
          const [lo, hi] = this.init.backoffMs;
          await sleep(lo + this.rand() * (hi - lo));
        }
      }
      await sleep(this.rand() * 2 * this.init.thinkMs * this.slowFactor);
    }
  }

  private async execute(id: string, op: OpKind, org: string | null): Promise<OpResult> {
    switch (op) {
      case 'allocate': {
        const a = await this.allocator.allocate(org as string);
        const prev = this.held.get(a.organizationId);
        this.held.set(a.organizationId, { gateway: a.name, token: a.token ?? (prev?.gateway === a.name ? prev.token : null) });
        return { kind: 'allocate', gateway: a.name, created: a.created };
      }
      case 'release': {
        this.held.delete(org as string);
        const r = await this.allocator.release(org as string);
        return { kind: 'release', gateway: r.name };
      }
      case 'push':
        return this.push(id, org as string);
      case 'pull': {
        const startedAt = Date.now();
        const p = await this.store.pull(org as string);
        return { kind: 'pull', version: p.version, hash: p.data === null ? null : snapshotHash(p.data), startedAt };
      }
      case 'heartbeat': {
        let gateway = this.held.get(org as string)?.gateway;
        if (!gateway) {
          const a = await this.allocator.getAllocation(org as string);
          if (!a) return { kind: 'heartbeat-skipped', reason: 'organization holds no gateway' };
          gateway = a.name;
          this.held.set(a.organizationId, { gateway, token: null });
        }
        await this.allocator.heartbeat(gateway);
        return { kind: 'heartbeat', gateway };
      }
      case 'reconcile': {
        const r = await this.allocator.reconcile();
        return {
          kind: 'reconcile',
          recovered: r.recovered.length,
          repaired: r.dnsRepaired.length + r.routesRepaired.length,
          orphansRemoved: r.dnsOrphansRemoved.length + r.routeOrphansRemoved.length + r.tempFilesRemoved.length,
          inFlight: r.inFlight.length,
          errors: r.errors.map((e) => ({ code: e.code, message: e.message.slice(0, 200) })),
        };
      }
      case 'reap': {
        const r = await this.allocator.reapStale(this.init.reapSilenceMs);
        return { kind: 'reap', released: r.released.length, errors: r.errors.map((e) => ({ code: e.code, message: e.message.slice(0, 200) })) };
      }
    }
  }

  /**
   * The gateway's push as the API server sees it: the gateway presents its
   * allocation token, the server resolves it (verifyToken) and stores the
   * snapshot only if that gateway still holds the organization.
   */
  private async push(id: string, org: string): Promise<OpResult> {
    const mine = this.held.get(org);
    let token = mine?.token ?? null;
    let who = token ? await this.allocator.verifyToken(token) : undefined;
    if (!who || who.organizationId !== org) {
      // Our token is gone (never had it, another process rotated it, or the org was released): get a fresh one.
      token = await this.allocator.rotateToken(org);
      who = await this.allocator.verifyToken(token);
      if (!who || who.organizationId !== org) return { kind: 'push-skipped', reason: 'token rejected right after rotation (released meanwhile)' };
    }
    this.held.set(org, { gateway: who.gateway, token });
    const seq = ++this.seq;
    const bytes = this.rand() < 0.05 ? Math.floor(this.rand() * this.init.maxSnapshotBytes) : Math.floor(this.rand() * 8192);
    const data = makeSnapshot({ org, writer: `${this.init.slot}.${this.init.generation}`, seq }, bytes, this.rand);
    const hash = snapshotHash(data);
    await send({ t: 'push-intent', id, org, hash, bytes, at: Date.now() });
    // Fenced on the allocation the token belongs to: a gateway released and re-allocated meanwhile cannot write.
    const res = await this.store.push(org, data, { gateway: who.gateway, allocationId: who.allocationId });
    if (!this.pushedOrgs.includes(org)) this.pushedOrgs.push(org);
    return { kind: 'push', version: res.version, hash, bytes: res.bytes, storeSha256: res.sha256 };
  }
}

let worker: Worker | undefined;

process.on('message', (msg: OrchestratorMessage) => {
  if (msg.t === 'init' && !worker) {
    worker = new Worker(msg.init);
    void send({ t: 'ready', slot: msg.init.slot, generation: msg.init.generation, pid: process.pid });
    worker.run().then(
      () => process.exit(0),
      async (err: unknown) => {
        await send({ t: 'crash', message: String(err instanceof Error ? err.stack : err) });
        process.exit(1);
      },
    );
    return;
  }
  worker?.onMessage(msg);
});

// Anything escaping the allocator's own handling is a finding: report it, then die like a real server would.
for (const ev of ['uncaughtException', 'unhandledRejection'] as const) {
  process.on(ev, (err: unknown) => {
    void send({ t: 'crash', message: `${ev}: ${String(err instanceof Error ? err.stack : err)}` }).then(() => process.exit(1));
  });
}
// The orchestrator going away ends the worker too.
process.on('disconnect', () => process.exit(0));
