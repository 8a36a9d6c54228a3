import { execFile } from 'child_process';
import { promises as fs } from 'fs';
import * as http from 'http';
import * as path from 'path';
import type { Pool } from 'pg';
import { Batcher } from './batcher';
import type { ActionCondition, Guard } from './dns-publisher';
import { AllocatorError, asAllocatorError } from './errors';
import {
  GENERATION_FILE,
  ORGS_CONF,
  ROUTES_SUBDIR,
  orgIdOfRouteFile,
  parseGeneration,
  renderGeneration,
  renderOrgsConf,
  renderRoute,
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
  /** Loopback address of the generation status server; default 127.0.0.1:8099. */
  statusListen?: string;
  /** Timeout of the test and reload commands; default 20 s. */
  commandTimeoutMs?: number;
  /** How long to wait for reloaded workers to serve the new generation; default 15 s. */
  liveTimeoutMs?: number;
}

export interface RouteChange {
  orgId: string;
  /** Checked inside the config lock, as for DNS actions. */
  onlyIf?: ActionCondition;
  /** undefined removes the route. */
  target?: { gatewayName: string; host: string; port: number };
}

/** What one batch may change: an organization's route, or the allocator's base config. */
type ConfigChange = { kind: 'route'; change: RouteChange } | { kind: 'base'; content: string };

export interface OwnedRoute {
  orgId: string;
  content: string;
}

interface ExecResult {
  ok: boolean;
  output: string;
}

function run(cmd: string[], timeoutMs: number): Promise<ExecResult> {
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

/** Keeps the stage-1 nginx's organization routes: atomic files, `nginx -t` before every reload, coalesced reloads. */
export class NginxRoutes {
  private readonly batcher: Batcher<ConfigChange>;
  private readonly routesDir: string;
  private readonly generationFile: string;
  private readonly statusListen: string;
  private readonly testCommand: string[];
  private readonly reloadCommand: string[];
  private readonly commandTimeoutMs: number;
  private readonly liveTimeoutMs: number;
  reloads = 0;
  tests = 0;
  /** Total ms spent in test + reload + waiting live (bench). */
  reloadMs = 0;

  constructor(
    private readonly opts: NginxOptions,
    private readonly pool: Pool,
    private readonly envName: string,
    private readonly domain: string,
    private readonly guard: Guard,
  ) {
    this.routesDir = path.join(opts.confDir, ROUTES_SUBDIR);
    this.generationFile = path.join(opts.confDir, GENERATION_FILE);
    this.statusListen = opts.statusListen ?? '127.0.0.1:8099';
    this.testCommand = opts.testCommand ?? ['nginx', '-t', '-q'];
    this.reloadCommand = opts.reloadCommand ?? ['nginx', '-s', 'reload'];
    this.commandTimeoutMs = opts.commandTimeoutMs ?? 20_000;
    this.liveTimeoutMs = opts.liveTimeoutMs ?? 15_000;
    this.batcher = new Batcher((changes) => this.apply(changes));
  }

  set(change: RouteChange): Promise<void> {
    return this.batcher.submit({ kind: 'route', change });
  }

  idle(): Promise<void> {
    return this.batcher.idle();
  }

  /** Writes the organization server and status server if they differ from what is on disk, then reloads. */
  async ensureBaseConfig(): Promise<boolean> {
    const conf = renderOrgsConf({
      confDir: this.opts.confDir,
      domain: this.domain,
      envName: this.envName,
      listen: this.opts.listen ?? '443 ssl',
      certPath: this.opts.tls.certPath,
      keyPath: this.opts.tls.keyPath,
      statusListen: this.statusListen,
    });
    const file = path.join(this.opts.confDir, ORGS_CONF);
    await fs.mkdir(this.routesDir, { recursive: true });
    if ((await readOrUndefined(file)) === conf && (await readOrUndefined(this.generationFile)) !== undefined) return false;
    await this.batcher.submit({ kind: 'base', content: conf });
    return true;
  }

  /** Applies changes now, as one batch (reconcile). */
  applyNow(changes: RouteChange[]): Promise<void> {
    return this.apply(changes.map((change) => ({ kind: 'route' as const, change })));
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

  async liveGeneration(): Promise<number | undefined> {
    const [host, port] = splitHostPort(this.statusListen);
    return new Promise((resolve) => {
      const req = http.get({ host, port, path: '/__demiurge/generation', agent: false, timeout: 1000 }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve(res.statusCode === 200 && /^\d+\n?$/.test(body) ? Number(body.trim()) : undefined));
      });
      req.on('error', () => resolve(undefined));
      req.on('timeout', () => req.destroy());
    });
  }

  /**
   * One batch: under the confDir's cross-process lock, write every file, bump
   * the generation, `nginx -t` (restoring everything on failure), reload; then
   * wait until freshly-accepted connections see the new generation.
   */
  private async apply(changes: ConfigChange[]): Promise<void> {
    const started = Date.now();
    const lock = await this.pool.connect().catch((err: unknown) => {
      throw new AllocatorError('DATABASE_FAILED', `cannot take the nginx config lock: ${(err as Error).message}`, { notApplied: true }, err);
    });
    let generation: number;
    let lockBroken = false;
    try {
      await lock.query('BEGIN');
      await lock.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [`demiurge-nginx:${this.opts.confDir}`]);
      const conditional = changes.flatMap((c) => (c.kind === 'route' && c.change.onlyIf ? [{ orgId: c.change.orgId, onlyIf: c.change.onlyIf }] : []));
      const holds = conditional.length > 0 ? await this.guard(async (sql, params) => (await lock.query(sql, params)).rows, conditional) : new Set<string>();
      const effective = changes.filter((c) => c.kind === 'base' || !c.change.onlyIf || holds.has(c.change.orgId));
      generation = effective.length > 0 ? await this.writeTestReload(effective) : -1;
      await lock.query('COMMIT');
    } catch (err) {
      await lock.query('ROLLBACK').catch(() => {
        lockBroken = true;
      });
      if (err instanceof AllocatorError) throw err;
      throw asAllocatorError(err, 'NGINX_FAILED', 'route update failed');
    } finally {
      lock.release(lockBroken);
    }
    if (generation >= 0) await this.waitLive(generation);
    this.reloadMs += Date.now() - started;
  }

  private async writeTestReload(changes: ConfigChange[]): Promise<number> {
    const undo: Array<{ file: string; previous: string | undefined }> = [];
    const remember = async (file: string): Promise<void> => {
      if (!undo.some((u) => u.file === file)) undo.push({ file, previous: await readOrUndefined(file) });
    };
    try {
      await fs.mkdir(this.routesDir, { recursive: true });
      for (const c of changes) {
        if (c.kind === 'base') {
          const file = path.join(this.opts.confDir, ORGS_CONF);
          await remember(file);
          await writeAtomic(file, c.content);
          continue;
        }
        const file = path.join(this.routesDir, routeFileName(c.change.orgId));
        await remember(file);
        const content = this.renderFor(c.change);
        if (content === undefined) await fs.rm(file, { force: true });
        else await writeAtomic(file, content);
      }
      await remember(this.generationFile);
      const generation = (parseGeneration((await readOrUndefined(this.generationFile)) ?? '') ?? 0) + 1;
      await writeAtomic(this.generationFile, renderGeneration(generation));
      this.tests += 1;
      const test = await run(this.testCommand, this.commandTimeoutMs);
      if (!test.ok) throw new AllocatorError('NGINX_FAILED', `nginx -t rejected the configuration: ${lastLines(test.output)}`, { stage: 'test', notApplied: true });
      this.reloads += 1;
      const reload = await run(this.reloadCommand, this.commandTimeoutMs);
      if (!reload.ok) throw new AllocatorError('NGINX_FAILED', `nginx reload failed: ${lastLines(reload.output)}`, { stage: 'reload', notApplied: true });
      return generation;
    } catch (err) {
      // Put every file back as it was: the running nginx never saw the rejected config.
      for (const u of undo.reverse()) await restore(u.file, u.previous).catch(() => undefined);
      throw err;
    }
  }

  private async waitLive(generation: number): Promise<void> {
    const deadline = Date.now() + this.liveTimeoutMs;
    // Several consecutive fresh connections must see it: old workers stop accepting
    // only once they process the master's QUIT, which can lag the new workers by a moment.
    let streak = 0;
    for (;;) {
      const live = await this.liveGeneration();
      streak = live !== undefined && live >= generation ? streak + 1 : 0;
      if (streak >= 3) return;
      if (Date.now() > deadline) {
        throw new AllocatorError(
          'NGINX_FAILED',
          `nginx did not serve configuration generation ${generation} within ${this.liveTimeoutMs} ms (status at ${this.statusListen} says ${live ?? 'nothing'})`,
          { stage: 'live' },
        );
      }
      if (streak === 0) await new Promise((r) => setTimeout(r, 5));
    }
  }
}

function splitHostPort(listen: string): [string, number] {
  const i = listen.lastIndexOf(':');
  return [listen.slice(0, i), Number(listen.slice(i + 1))];
}

function lastLines(output: string): string {
  return output.split('\n').slice(-3).join(' | ').slice(0, 600);
}
