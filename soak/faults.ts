/**
 * The fault injector: what breaks, and when.
 *
 * Faults are tied to the operations' progress rather than to the clock: fault
 * n of a kind is due once a random point of the op budget has been passed, so
 * every kind is spread over the whole run and reaches its count whatever the
 * machine's speed. Faults of one service never overlap (a PowerDNS restart
 * during a PowerDNS stop tests nothing), faults of different services may (at
 * most `maxConcurrent` at once), like a bad day in production.
 */
import { execFile } from 'child_process';
import { promises as fs } from 'fs';
import * as path from 'path';
import type { Pool } from 'pg';

export type FaultKind = 'pdns-restart' | 'pdns-stop' | 'nginx-broken' | 'pg-restart' | 'pg-terminate' | 'worker-kill';

export const FAULT_KINDS: readonly FaultKind[] = ['pdns-restart', 'pdns-stop', 'nginx-broken', 'pg-restart', 'pg-terminate', 'worker-kill'];

/** Faults that hit the same service are serialised. */
const SERVICE: Record<FaultKind, string> = {
  'pdns-restart': 'pdns',
  'pdns-stop': 'pdns',
  'nginx-broken': 'nginx',
  'pg-restart': 'pg',
  'pg-terminate': 'pg',
  'worker-kill': 'worker',
};

export interface FaultRecord {
  kind: FaultKind;
  n: number;
  startedAt: string;
  endedAt: string;
  ms: number;
  /** Whether the fault demonstrably took effect (service really down, nginx -t really failing, a worker killed mid-operation…). */
  effective: boolean;
  detail: string;
  /** Ops completed (all workers) when it started. */
  atOp: number;
}

export interface FaultEnv {
  servicesScript: string;
  pgCluster: { version: string; name: string };
  pdnsApiUrl: string;
  pdnsApiKey: string;
  pdnsPidFile: string;
  /** Pool on the soak database, as the allocator's role (pg_terminate_backend of its own sessions needs no superuser). */
  pg: Pool;
  nginx: { confDir: string; testCommand: string[]; pidFile: string };
  /** Holding times of pdns-stop and nginx-broken, ms. */
  downMs: [number, number];
  /** SIGKILLs a worker while it runs an operation and starts its replacement; returns what it interrupted. */
  killWorker: () => Promise<{ effective: boolean; detail: string }>;
}

interface CmdResult {
  ok: boolean;
  output: string;
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env, timeoutMs = 60_000): Promise<CmdResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { env, timeout: timeoutMs, maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      resolve({ ok: !err, output: `${stdout}${stderr}`.trim().slice(-400) || (err ? err.message : '') });
    });
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export const BROKEN_FILE = 'zz-soak-broken-by-hand.conf';

export class FaultInjector {
  private readonly env: NodeJS.ProcessEnv;

  constructor(private readonly f: FaultEnv) {
    this.env = { ...process.env, SERVICES_PROFILE: 'soak' };
  }

  private services(cmd: string): Promise<CmdResult> {
    return run('bash', [this.f.servicesScript, cmd], this.env);
  }

  private async pdnsApiUp(): Promise<boolean> {
    return (await run('curl', ['-fsS', '-m', '2', '-H', `X-API-Key: ${this.f.pdnsApiKey}`, `${this.f.pdnsApiUrl}/api/v1/servers/localhost`])).ok;
  }

  private async pdnsPid(): Promise<string> {
    return (await fs.readFile(this.f.pdnsPidFile, 'utf8').catch(() => '')).trim();
  }

  /** Runs one fault to its end (service back up); never throws. */
  async inject(kind: FaultKind): Promise<{ effective: boolean; detail: string }> {
    try {
      switch (kind) {
        case 'pdns-restart': {
          const before = await this.pdnsPid();
          const stop = await this.services('pdns-stop');
          // PowerDNS cannot start while its PostgreSQL restarts (gpgsql fails at launch); a supervisor would retry.
          const start = await this.ensure(() => this.services('pdns-start'));
          const after = await this.pdnsPid();
          return {
            effective: stop.ok && start.ok && before !== '' && after !== '' && before !== after,
            detail: start.ok ? `pid ${before} -> ${after}` : `restart failed: ${start.output}`,
          };
        }
        case 'pdns-stop': {
          const stop = await this.services('pdns-stop');
          const down = !(await this.pdnsApiUp());
          const hold = this.holdMs();
          await sleep(hold);
          const start = await this.ensure(() => this.services('pdns-start'));
          return { effective: stop.ok && down, detail: `down ${hold} ms${start.ok ? '' : `; restart failed: ${start.output}`}` };
        }
        case 'nginx-broken':
          return await this.nginxBroken();
        case 'pg-restart': {
          // fast: clean shutdown that kills every session; immediate: a crash (WAL recovery on start), like a failover.
          const mode = Math.random() < 0.5 ? 'fast' : 'immediate';
          const r = await this.ensure(() => run('pg_ctlcluster', [this.f.pgCluster.version, this.f.pgCluster.name, 'restart', '-m', mode]));
          return { effective: r.ok, detail: `restart -m ${mode}${r.ok ? '' : `: ${r.output}`}` };
        }
        case 'pg-terminate': {
          // Wait (briefly) until some session is in the middle of a statement or transaction: that is the interesting moment.
          const deadline = Date.now() + 5000;
          let busy = 0;
          while (Date.now() < deadline) {
            const b = await this.f.pg.query<{ n: string }>(
              `SELECT count(*)::text AS n FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND state <> 'idle'`,
            );
            busy = Number(b.rows[0]?.n ?? 0);
            if (busy > 0) break;
            await sleep(5);
          }
          const r = await this.f.pg.query<{ n: string }>(
            `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))::text AS n FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'`,
          );
          const n = Number(r.rows[0]?.n ?? 0);
          return { effective: n > 0, detail: `${n} sessions terminated (${busy} busy)` };
        }
        case 'worker-kill':
          return await this.f.killWorker();
      }
    } catch (err) {
      return { effective: false, detail: `injector error: ${(err as Error).message}` };
    }
  }

  private holdMs(): number {
    const [lo, hi] = this.f.downMs;
    return Math.round(lo + Math.random() * (hi - lo));
  }

  /** Retries a start/restart that fails (e.g. the host is loaded): a fault must end with the service back. */
  private async ensure(fn: () => Promise<CmdResult>): Promise<CmdResult> {
    let r = await fn();
    for (let i = 0; i < 5 && !r.ok; i++) {
      await sleep(1000);
      r = await fn();
    }
    return r;
  }

  /**
   * Someone drops a broken file into the include directory and reloads nginx
   * by hand (SIGHUP to the master: it rejects the new configuration and keeps
   * serving the old one). Half the time they also edit the allocator's own
   * base configuration, so the next allocator process that starts must rewrite
   * it, and its `nginx -t` fails while the broken file is there.
   */
  private async nginxBroken(): Promise<{ effective: boolean; detail: string }> {
    const broken = path.join(this.f.nginx.confDir, BROKEN_FILE);
    await fs.writeFile(broken, `# broken by hand at ${new Date().toISOString()}\nthis is not nginx syntax\n`);
    const hold = this.holdMs();
    let detail = '';
    try {
      const t = await run(this.f.nginx.testCommand[0], this.f.nginx.testCommand.slice(1));
      const tampered = Math.random() < 0.5;
      if (tampered) {
        await fs.appendFile(path.join(this.f.nginx.confDir, 'demiurge-orgs.conf'), `# edited by hand at ${new Date().toISOString()}\n`);
      }
      const pid = Number((await fs.readFile(this.f.nginx.pidFile, 'utf8')).trim());
      process.kill(pid, 'SIGHUP');
      detail = `nginx -t ${t.ok ? 'PASSED (fault ineffective)' : 'fails'}; SIGHUP sent${tampered ? '; base config edited by hand' : ''}; held ${hold} ms`;
      await sleep(hold);
      return { effective: !t.ok, detail };
    } finally {
      await fs.rm(broken, { force: true });
    }
  }
}

interface KindPlan {
  kind: FaultKind;
  thresholds: number[];
  next: number;
  running: boolean;
}

/**
 * Fires `perKind` faults of every kind at random points of the op budget.
 * `lagging()` tells the orchestrator to hold operations back while a fault is
 * overdue, so the faults really happen during the operations and the op count
 * stays close to the budget.
 */
export class FaultScheduler {
  private readonly plans: KindPlan[];
  private readonly busy = new Set<string>();
  private active = 0;
  private stopped = false;
  private loops: Array<Promise<void>> = [];
  readonly records: FaultRecord[] = [];
  private readonly spacing: number;

  constructor(
    kinds: readonly FaultKind[],
    perKind: number,
    totalOps: number,
    private readonly opsDone: () => number,
    private readonly injector: FaultInjector,
    private readonly onFault: (r: FaultRecord) => void,
    private readonly maxConcurrent = 2,
  ) {
    this.spacing = totalOps / Math.max(1, perKind);
    this.plans = kinds.map((kind) => {
      // Stratified random points between 3 % and 95 % of the budget: random intervals, even coverage.
      const span = 0.92 * totalOps;
      const thresholds = Array.from({ length: perKind }, (_, i) => Math.floor(0.03 * totalOps + ((i + Math.random()) / perKind) * span));
      return { kind, thresholds, next: 0, running: false };
    });
  }

  start(): void {
    this.loops = this.plans.map((p) => this.loop(p));
  }

  /** True while some fault is overdue by more than half its spacing: the orchestrator slows operations down. */
  lagging(): boolean {
    const done = this.opsDone();
    return this.plans.some((p) => p.next < p.thresholds.length && done > p.thresholds[p.next] + this.spacing / 2);
  }

  remaining(): number {
    return this.plans.reduce((n, p) => n + (p.thresholds.length - p.next), 0);
  }

  countByKind(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const p of this.plans) out[p.kind] = p.next;
    return out;
  }

  activeFaults(): FaultKind[] {
    return this.plans.filter((p) => p.running).map((p) => p.kind);
  }

  /** Stops firing new faults; waits for the running ones to end (services back up). */
  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all(this.loops);
  }

  private async loop(p: KindPlan): Promise<void> {
    const service = SERVICE[p.kind];
    while (p.next < p.thresholds.length && !this.stopped) {
      if (this.opsDone() < p.thresholds[p.next] || this.busy.has(service) || this.active >= this.maxConcurrent) {
        await sleep(20);
        continue;
      }
      this.busy.add(service);
      this.active += 1;
      p.running = true;
      const atOp = this.opsDone();
      const t0 = Date.now();
      const startedAt = new Date(t0).toISOString();
      const outcome = await this.injector.inject(p.kind);
      const rec: FaultRecord = { kind: p.kind, n: p.next + 1, startedAt, endedAt: new Date().toISOString(), ms: Date.now() - t0, atOp, ...outcome };
      p.next += 1;
      p.running = false;
      this.records.push(rec);
      this.onFault(rec);
      this.active -= 1;
      this.busy.delete(service);
      // A short breath so the next fault of this service does not land on a service still warming up.
      await sleep(200 + Math.random() * 300);
    }
  }
}
