import { execFile } from 'child_process';
import { promises as fs } from 'fs';
import * as http from 'http';
import * as path from 'path';
import type { Pool, PoolClient } from 'pg';
import { Batcher } from './batcher';
import type { ActionCondition, Guard } from './dns-publisher';
import { AllocatorError } from './errors';
import {
  ORGS_CONF,
  ROUTES_JS,
  ROUTES_SUBDIR,
  configVersion,
  orgIdOfRouteFile,
  renderOrgsConf,
  renderRoute,
  renderRoutesJs,
  routeFileName,
  routeOwnerLine,
} from './nginx-config';

export interface NginxOptions {
  /** Directory the allocator owns, included by the stage-1 nginx.conf's http block (`include <confDir>/*.conf`). */
  confDir: string;
  tls: { certPath: string; keyPath: string };
  /** `listen` parameters of the organization server; default `443 ssl`. */
  listen?: string;
  /** Validates the whole configuration; default `nginx -t -q`. */
  testCommand?: string[];
  /** Makes nginx load it; default `nginx -s reload`. */
  reloadCommand?: string[];
  /** Loopback address of the allocator's status server in nginx; default 127.0.0.1:8099. */
  statusListen?: string;
  /** Timeout of the test and reload commands; default 20 s. */
  commandTimeoutMs?: number;
  /** How long to wait for nginx to serve a route or a reloaded base configuration; default 15 s. */
  liveTimeoutMs?: number;
}

export interface RouteChange {
  orgId: string;
  /** Checked inside the config lock, as for DNS actions. */
  onlyIf?: ActionCondition;
  /** undefined removes the route. */
  target?: { gatewayName: string; host: string; port: number };
}

export interface OwnedRoute {
  orgId: string;
  content: string;
}

interface LookupAnswer {
  version: string;
  routes: Record<string, string>;
}

function run(cmd: string[], timeoutMs: number): Promise<{ ok: boolean; output: string }> {
  return new Promise((resolve) => {
    execFile(cmd[0], cmd.slice(1), { timeout: timeoutMs, maxBuffer: 1024 * 1024 }, (err, stdout, stderr) => {
      resolve({ ok: !err, output: `${stdout}${stderr}`.trim() || (err ? err.message : '') });
    });
  });
}

async function writeAtomic(file: string, content: string): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  await fs.writeFile(tmp, content, { mode: 0o644 });
  await fs.rename(tmp, file);
}

async function readOrUndefined(file: string): Promise<string | undefined> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

async function restore(file: string, previous: string | undefined): Promise<void> {
  if (previous === undefined) await fs.rm(file, { force: true });
  else await writeAtomic(file, previous);
}

function lastLines(output: string): string {
  return output.split('\n').slice(-3).join(' | ').slice(0, 600);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Keeps the stage-1 nginx's organization routes. A route is one file, written
 * atomically and read by njs on each request, so it is live without a reload;
 * before answering, the allocator asks nginx's own workers (status server) that
 * they route it. Writes are batched and serialized across processes by a
 * PostgreSQL advisory lock, which also makes reconcile()'s conditional changes
 * atomic with allocations. The base configuration is written once, checked with
 * `nginx -t` (and restored if rejected), then reloaded.
 */
export class NginxRoutes {
  private readonly batcher: Batcher<RouteChange>;
  private readonly routesDir: string;
  private readonly statusListen: string;
  private readonly testCommand: string[];
  private readonly reloadCommand: string[];
  private readonly commandTimeoutMs: number;
  private readonly liveTimeoutMs: number;
  private readonly baseConf: string;
  private readonly baseJs: string;
  readonly version: string;
  reloads = 0;
  tests = 0;
  /** Total ms spent writing routes and confirming them live (bench). */
  routeMs = 0;

  constructor(
    private readonly opts: NginxOptions,
    private readonly pool: Pool,
    private readonly envName: string,
    domain: string,
    private readonly guard: Guard,
  ) {
    this.routesDir = path.join(opts.confDir, ROUTES_SUBDIR);
    this.statusListen = opts.statusListen ?? '127.0.0.1:8099';
    this.testCommand = opts.testCommand ?? ['nginx', '-t', '-q'];
    this.reloadCommand = opts.reloadCommand ?? ['nginx', '-s', 'reload'];
    this.commandTimeoutMs = opts.commandTimeoutMs ?? 20_000;
    this.liveTimeoutMs = opts.liveTimeoutMs ?? 15_000;
    const render = {
      confDir: opts.confDir,
      domain,
      listen: opts.listen ?? '443 ssl',
      certPath: opts.tls.certPath,
      keyPath: opts.tls.keyPath,
      statusListen: this.statusListen,
    };
    this.baseConf = renderOrgsConf(render);
    // The version covers both files, so a change to either is confirmed after reload.
    this.version = configVersion(this.baseConf + renderRoutesJs(render, ''));
    this.baseJs = renderRoutesJs(render, this.version);
    this.batcher = new Batcher((changes) => this.apply(changes));
  }

  set(change: RouteChange): Promise<void> {
    return this.batcher.submit(change);
  }

  idle(): Promise<void> {
    return this.batcher.idle();
  }

  /**
   * Makes sure nginx runs this allocator's base configuration: writes it if it
   * differs, validates with `nginx -t` (restoring the previous files if
   * rejected), reloads, and waits until the workers report its version.
   * Returns true if it had to change anything.
   */
  async ensureBaseConfig(): Promise<boolean> {
    await fs.mkdir(this.routesDir, { recursive: true });
    const confFile = path.join(this.opts.confDir, ORGS_CONF);
    const jsFile = path.join(this.opts.confDir, ROUTES_JS);
    const live = await this.lookup([]);
    if (live?.version === this.version && (await readOrUndefined(confFile)) === this.baseConf && (await readOrUndefined(jsFile)) === this.baseJs) return false;
    await this.withLock(async () => {
      const previous = [
        { file: confFile, content: await readOrUndefined(confFile) },
        { file: jsFile, content: await readOrUndefined(jsFile) },
      ];
      await writeAtomic(jsFile, this.baseJs);
      await writeAtomic(confFile, this.baseConf);
      try {
        this.tests += 1;
        const test = await run(this.testCommand, this.commandTimeoutMs);
        if (!test.ok) throw new AllocatorError('NGINX_FAILED', `nginx -t rejected the configuration: ${lastLines(test.output)}`, { stage: 'test', notApplied: true });
        this.reloads += 1;
        const reload = await run(this.reloadCommand, this.commandTimeoutMs);
        if (!reload.ok) throw new AllocatorError('NGINX_FAILED', `nginx reload failed: ${lastLines(reload.output)}`, { stage: 'reload', notApplied: true });
      } catch (err) {
        // The running nginx never loaded the rejected files: put the previous ones back.
        for (const p of previous) await restore(p.file, p.content).catch(() => undefined);
        throw err;
      }
    });
    await this.waitFor(async () => (await this.lookup([]))?.version === this.version, () => `nginx did not load base configuration ${this.version}`);
    // nginx's master keeps old workers accepting for ~100 ms after new ones start; let them go.
    await sleep(150);
    return true;
  }

  /** Route files this allocator owns for this environment. */
  async listOwned(): Promise<OwnedRoute[]> {
    let names: string[];
    try {
      names = await fs.readdir(this.routesDir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const owned: OwnedRoute[] = [];
    for (const name of names) {
      const orgId = orgIdOfRouteFile(name);
      if (!orgId) continue;
      const content = await readOrUndefined(path.join(this.routesDir, name));
      if (content !== undefined && content.startsWith(`${routeOwnerLine(this.envName, orgId)} `)) owned.push({ orgId, content });
    }
    return owned;
  }

  renderFor(change: RouteChange): string | undefined {
    const t = change.target;
    return t ? renderRoute(this.envName, change.orgId, t.gatewayName, t.host, t.port) : undefined;
  }

  /** Applies changes now, as one batch (reconcile). */
  applyNow(changes: RouteChange[]): Promise<void> {
    return this.apply(changes);
  }

  /** Asks nginx's workers how they route the given organizations; undefined if nginx does not answer. */
  lookup(orgIds: string[]): Promise<LookupAnswer | undefined> {
    const i = this.statusListen.lastIndexOf(':');
    const host = this.statusListen.slice(0, i);
    const port = Number(this.statusListen.slice(i + 1));
    return new Promise((resolve) => {
      const req = http.get({ host, port, path: `/__demiurge/routes?ids=${orgIds.join(',')}`, agent: false, timeout: 2000 }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => {
          try {
            resolve(res.statusCode === 200 ? (JSON.parse(body) as LookupAnswer) : undefined);
          } catch {
            resolve(undefined);
          }
        });
      });
      req.on('error', () => resolve(undefined));
      req.on('timeout', () => req.destroy());
    });
  }

  private async apply(changes: RouteChange[]): Promise<void> {
    const started = Date.now();
    // Last change per organization wins: one organization's changes come from its single owner, in order.
    const latest = new Map<string, RouteChange>();
    for (const c of changes) latest.set(c.orgId, c);
    const effective = await this.withLock(async (lock) => {
      const conditional = [...latest.values()].flatMap((c) => (c.onlyIf ? [{ orgId: c.orgId, onlyIf: c.onlyIf }] : []));
      const holds = conditional.length > 0 ? await this.guard(async (sql, params) => (await lock.query(sql, params)).rows, conditional) : new Set<string>();
      const todo = [...latest.values()].filter((c) => !c.onlyIf || holds.has(c.orgId));
      await fs.mkdir(this.routesDir, { recursive: true });
      for (const c of todo) {
        const file = path.join(this.routesDir, routeFileName(c.orgId));
        const content = this.renderFor(c);
        if (content === undefined) await fs.rm(file, { force: true });
        else await writeAtomic(file, content);
      }
      return todo;
    });
    // Removals need no confirmation (a stopped nginx routes nothing); additions must be served.
    const added = effective.filter((c) => c.target);
    if (added.length > 0) {
      const want = new Map(added.map((c) => [c.orgId, `${c.target?.host}:${c.target?.port}`]));
      let last: LookupAnswer | undefined;
      await this.waitFor(
        async () => {
          last = await this.lookup([...want.keys()]);
          return !!last && [...want].every(([id, target]) => last?.routes[id] === target);
        },
        () => `nginx does not serve the new route(s): status server ${this.statusListen} ${last ? `answers ${JSON.stringify(last.routes).slice(0, 200)}` : 'does not answer'}`,
      );
    }
    this.routeMs += Date.now() - started;
  }

  private async waitFor(check: () => Promise<boolean>, failure: () => string): Promise<void> {
    const deadline = Date.now() + this.liveTimeoutMs;
    while (!(await check())) {
      if (Date.now() > deadline) throw new AllocatorError('NGINX_FAILED', failure(), { stage: 'live' });
      await sleep(10);
    }
  }

  private async withLock<T>(fn: (client: PoolClient) => Promise<T>): Promise<T> {
    const lock = await this.pool.connect().catch((err: unknown) => {
      throw new AllocatorError('DATABASE_FAILED', `cannot take the nginx config lock: ${(err as Error).message}`, { notApplied: true }, err);
    });
    let broken = false;
    try {
      await lock.query('BEGIN');
      await lock.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [`demiurge-nginx:${this.opts.confDir}`]);
      const result = await fn(lock);
      await lock.query('COMMIT');
      return result;
    } catch (err) {
      await lock.query('ROLLBACK').catch(() => {
        broken = true;
      });
      if (err instanceof AllocatorError) throw err;
      throw new AllocatorError('NGINX_FAILED', `route update failed: ${(err as Error).message}`, {}, err);
    } finally {
      lock.release(broken);
    }
  }
}
