import { execFile } from 'child_process';
import { promises as fs } from 'fs';
import * as http from 'http';
import * as path from 'path';
import type { Pool, PoolClient } from 'pg';
import { Batcher } from './batcher';
import type { ActionCondition, Guard } from './dns-publisher';
import { AllocatorError } from './errors';
import type { UserContainerNaming } from './naming';
import { inTransaction, TransactionConnectError } from './pg-transaction';
import {
  CERTS_SUBDIR,
  ORGS_CONF,
  ROUTES_JS,
  ROUTES_SUBDIR,
  certOwnerLine,
  renderCertFile,
  configVersion,
  orgCertFileName,
  orgIdOfCertFile,
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
  /**
   * uid/gid the nginx workers run as (nginx.conf `user`). Only used with
   * per-organization certificates: their bundles hold private keys, so they
   * are mode 0600 and owned by the workers, which load them per handshake.
   * Default: read from /proc/<pid>/status of the worker that answers the
   * status server (allocator and nginx on one host, as in the dev container).
   */
  workerUser?: { uid: number; gid: number };
}

/** Optional features of the organization server, decided by the allocator's options. */
export interface Stage1Features {
  naming?: UserContainerNaming;
  /** Choose the certificate per handshake from `<confDir>/certs/` (nested naming with an OrgCertificates manager). */
  orgCertificates?: boolean;
}

export interface CertFileChange {
  orgId: string;
  /** Checked inside the config lock, as for routes. */
  onlyIf?: ActionCondition;
  /** Private key + chain (OrgCertificate.bundlePem); undefined removes the file. */
  bundlePem?: string;
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
  /** With per-org certificates: whether the answering worker can read each org's bundle and the base certificate and key. */
  certs?: Record<string, boolean>;
  base?: boolean;
  pid?: number;
}

function run(cmd: string[], timeoutMs: number): Promise<{ ok: boolean; output: string }> {
  return new Promise((resolve) => {
    execFile(cmd[0], cmd.slice(1), { timeout: timeoutMs, maxBuffer: 1024 * 1024 }, (err, stdout, stderr) => {
      resolve({ ok: !err, output: `${stdout}${stderr}`.trim() || (err ? err.message : '') });
    });
  });
}

async function writeAtomic(file: string, content: string, mode = 0o644, owner?: { uid: number; gid: number }): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  try {
    await fs.writeFile(tmp, content, { mode });
    // writeFile's mode is subject to the umask; a key bundle must be exactly 0600.
    await fs.chmod(tmp, mode);
    if (owner) await fs.chown(tmp, owner.uid, owner.gid);
    await fs.rename(tmp, file);
  } catch (err) {
    await fs.rm(tmp, { force: true }).catch(() => undefined);
    throw err;
  }
}

/** uid/gid of an nginx worker process, if `pid` is one in our PID namespace. */
async function nginxWorkerIds(pid: number): Promise<{ uid: number; gid: number } | undefined> {
  try {
    const cmdline = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8');
    if (!cmdline.startsWith('nginx: worker process')) return undefined;
    const status = await fs.readFile(`/proc/${pid}/status`, 'utf8');
    const uid = /^Uid:\s+(\d+)/m.exec(status)?.[1];
    const gid = /^Gid:\s+(\d+)/m.exec(status)?.[1];
    return uid !== undefined && gid !== undefined ? { uid: Number(uid), gid: Number(gid) } : undefined;
  } catch {
    return undefined;
  }
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

/** Organization ids per status-server request (37 bytes each; nginx's request line limit is 8 KiB). */
const LOOKUP_CHUNK = 100;

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
  private readonly certBatcher: Batcher<CertFileChange>;
  private readonly routesDir: string;
  /** Per-organization certificate bundles; undefined when the org server uses the base certificate only. */
  readonly certDir: string | undefined;
  private workerIds: Promise<{ uid: number; gid: number } | undefined> | undefined;
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
    features: Stage1Features = {},
  ) {
    this.routesDir = path.join(opts.confDir, ROUTES_SUBDIR);
    this.certDir = features.orgCertificates ? path.join(opts.confDir, CERTS_SUBDIR) : undefined;
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
      naming: features.naming,
      orgCertDir: this.certDir,
    };
    this.baseConf = renderOrgsConf(render);
    // The version covers both files, so a change to either is confirmed after reload.
    this.version = configVersion(this.baseConf + renderRoutesJs(render, ''));
    this.baseJs = renderRoutesJs(render, this.version);
    this.batcher = new Batcher((changes) => this.apply(changes));
    this.certBatcher = new Batcher((changes) => this.applyCerts(changes));
  }

  set(change: RouteChange): Promise<void> {
    return this.batcher.submit(change);
  }

  idle(): Promise<void> {
    return Promise.all([this.batcher.idle(), this.certBatcher.idle()]).then(() => undefined);
  }

  /** Writes (or with no bundle, removes) an organization's certificate bundle; a write resolves once nginx's workers can read it. */
  setCertificate(change: CertFileChange): Promise<void> {
    if (!this.certDir) return Promise.resolve();
    return this.certBatcher.submit(change);
  }

  /** Applies certificate changes now, as one batch (reconcile). */
  applyCertificatesNow(changes: CertFileChange[]): Promise<void> {
    return this.certDir && changes.length > 0 ? this.applyCerts(changes) : Promise.resolve();
  }

  /** What the allocator writes for a bundle (owner line first; PEM readers skip text before -----BEGIN). */
  renderCertFile(orgId: string, bundlePem: string): string {
    return renderCertFile(this.envName, orgId, bundlePem);
  }

  /** True when the organization's bundle file holds exactly this bundle (a repeated allocate need not rewrite it). */
  async certificateFileMatches(orgId: string, bundlePem: string): Promise<boolean> {
    if (!this.certDir) return true;
    return (await readOrUndefined(path.join(this.certDir, orgCertFileName(orgId))).catch(() => undefined)) === this.renderCertFile(orgId, bundlePem);
  }

  /** Certificate bundles this allocator owns for this environment, with their content. */
  async listOwnedCertificates(): Promise<OwnedRoute[]> {
    if (!this.certDir) return [];
    let names: string[];
    try {
      names = await fs.readdir(this.certDir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const owned: OwnedRoute[] = [];
    for (const name of names) {
      const orgId = orgIdOfCertFile(name);
      if (!orgId) continue;
      const content = await readOrUndefined(path.join(this.certDir, name));
      if (content !== undefined && content.startsWith(`${certOwnerLine(this.envName, orgId)}\n`)) owned.push({ orgId, content });
    }
    return owned;
  }

  /**
   * With per-org certificates nginx loads the base certificate in the workers
   * at every handshake, not in the root master at reload: an unreadable base
   * key would fail every TLS handshake of the org server. Throws NGINX_FAILED
   * naming the fix; a no-op without per-org certificates.
   */
  async checkBaseCertificateReadable(): Promise<void> {
    if (!this.certDir) return;
    const live = await this.lookup([]);
    if (live && live.base === false) {
      throw new AllocatorError(
        'NGINX_FAILED',
        `nginx workers cannot read the base certificate ${this.opts.tls.certPath} / key ${this.opts.tls.keyPath}: with per-organization certificates nginx loads certificates in the workers per handshake, so the key must be readable by the worker user (e.g. chown www-data, mode 0600)`,
        { stage: 'tls' },
      );
    }
  }

  /**
   * Makes sure nginx runs this allocator's base configuration: writes it if it
   * differs, validates with `nginx -t` (restoring the previous files if
   * rejected), reloads, and waits until the workers report its version.
   * Returns true if it had to change anything.
   */
  async ensureBaseConfig(): Promise<boolean> {
    await fs.mkdir(this.routesDir, { recursive: true });
    // Workers open bundles by name (no listing needed); the bundles themselves are 0600.
    if (this.certDir && (await fs.mkdir(this.certDir, { recursive: true })) !== undefined) await fs.chmod(this.certDir, 0o711);
    const confFile = path.join(this.opts.confDir, ORGS_CONF);
    const jsFile = path.join(this.opts.confDir, ROUTES_JS);
    const live = await this.lookup([]);
    if (live?.version === this.version && (await readOrUndefined(confFile)) === this.baseConf && (await readOrUndefined(jsFile)) === this.baseJs) {
      await this.checkBaseCertificateReadable();
      return false;
    }
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
    await this.checkBaseCertificateReadable();
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

  private renderFor(change: RouteChange): string | undefined {
    const t = change.target;
    return t ? renderRoute(this.envName, change.orgId, t.gatewayName, t.host, t.port) : undefined;
  }

  /** Applies changes now, as one batch (reconcile). */
  applyNow(changes: RouteChange[]): Promise<void> {
    return this.apply(changes);
  }

  /** Asks nginx's workers how they route the given organizations; undefined if nginx does not answer. */
  async lookup(orgIds: string[]): Promise<LookupAnswer | undefined> {
    if (orgIds.length <= LOOKUP_CHUNK) return this.lookupOnce(orgIds);
    // nginx answers 414 to a request line over 8 KiB (~215 ids): ask in chunks, in parallel.
    const chunks: string[][] = [];
    for (let i = 0; i < orgIds.length; i += LOOKUP_CHUNK) chunks.push(orgIds.slice(i, i + LOOKUP_CHUNK));
    const answers = await Promise.all(chunks.map((c) => this.lookupOnce(c)));
    if (answers.some((a) => a === undefined)) return undefined;
    const [first, ...rest] = answers as LookupAnswer[];
    return rest.reduce<LookupAnswer>(
      (acc, a) => ({ ...acc, routes: { ...acc.routes, ...a.routes }, ...(a.certs ? { certs: { ...acc.certs, ...a.certs } } : {}) }),
      { ...first, routes: { ...first.routes } },
    );
  }

  private lookupOnce(orgIds: string[]): Promise<LookupAnswer | undefined> {
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
      // One file per organization (a batch holds one change per org): written in parallel, all before the lock is released.
      await Promise.all(
        todo.map(async (c) => {
          const file = path.join(this.routesDir, routeFileName(c.orgId));
          const content = this.renderFor(c);
          if (content === undefined) await fs.rm(file, { force: true });
          else await writeAtomic(file, content);
        }),
      );
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

  /** The uid/gid bundles must belong to so the workers (not only the root master) can read them; undefined: leave as written. */
  private bundleOwner(): Promise<{ uid: number; gid: number } | undefined> {
    if (!this.workerIds) {
      this.workerIds = (async () => {
        const ids = this.opts.workerUser ?? (await this.detectWorkerIds());
        const me = process.getuid?.();
        // Only root can give a file away; a non-root allocator's files are readable by workers running as itself.
        return ids && me === 0 && ids.uid !== 0 ? ids : undefined;
      })();
      this.workerIds.then((ids) => {
        if (!ids && !this.opts.workerUser) this.workerIds = undefined; // retry detection next time
      }, () => (this.workerIds = undefined));
    }
    return this.workerIds;
  }

  private async detectWorkerIds(): Promise<{ uid: number; gid: number } | undefined> {
    const live = await this.lookup([]);
    return live?.pid ? nginxWorkerIds(live.pid) : undefined;
  }

  private async applyCerts(changes: CertFileChange[]): Promise<void> {
    const certDir = this.certDir;
    if (!certDir) return;
    const latest = new Map<string, CertFileChange>();
    for (const c of changes) latest.set(c.orgId, c);
    const owner = [...latest.values()].some((c) => c.bundlePem !== undefined) ? await this.bundleOwner() : undefined;
    const effective = await this.withLock(async (lock) => {
      const conditional = [...latest.values()].flatMap((c) => (c.onlyIf ? [{ orgId: c.orgId, onlyIf: c.onlyIf }] : []));
      const holds = conditional.length > 0 ? await this.guard(async (sql, params) => (await lock.query(sql, params)).rows, conditional) : new Set<string>();
      const todo = [...latest.values()].filter((c) => !c.onlyIf || holds.has(c.orgId));
      await fs.mkdir(certDir, { recursive: true });
      for (const c of todo) {
        const file = path.join(certDir, orgCertFileName(c.orgId));
        if (c.bundlePem === undefined) await fs.rm(file, { force: true });
        else await writeAtomic(file, this.renderCertFile(c.orgId, c.bundlePem), 0o600, owner);
      }
      return todo;
    });
    // A written bundle counts only once the workers can read it (a root-owned 0600 key would fail every handshake).
    const written = effective.filter((c) => c.bundlePem !== undefined).map((c) => c.orgId);
    if (written.length > 0) {
      let last: LookupAnswer | undefined;
      await this.waitFor(
        async () => {
          last = await this.lookup(written);
          return !!last && written.every((id) => last?.certs?.[id] === true);
        },
        () =>
          `nginx workers cannot read the certificate bundle(s) of ${written.slice(0, 5).join(', ')} in ${certDir}: ${
            last ? `status server answers ${JSON.stringify(last.certs ?? {}).slice(0, 200)}; run the allocator as root or as the worker user, or set nginx.workerUser` : 'status server does not answer'
          }`,
        // The file is in place before the first check, so a worker that still cannot read it soon never will.
        Math.min(this.liveTimeoutMs, 5_000),
      );
    }
  }

  private async waitFor(check: () => Promise<boolean>, failure: () => string, timeoutMs = this.liveTimeoutMs): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(await check())) {
      if (Date.now() > deadline) throw new AllocatorError('NGINX_FAILED', failure(), { stage: 'live' });
      await sleep(10);
    }
  }

  private async withLock<T>(fn: (client: PoolClient) => Promise<T>): Promise<T> {
    try {
      return await inTransaction(this.pool, fn, { lockKey: `demiurge-nginx:${this.opts.confDir}` });
    } catch (err) {
      if (err instanceof AllocatorError) throw err;
      if (err instanceof TransactionConnectError) {
        throw new AllocatorError('DATABASE_FAILED', `cannot take the nginx config lock: ${err.message}`, { notApplied: true }, err);
      }
      throw new AllocatorError('NGINX_FAILED', `route update failed: ${(err as Error).message}`, {}, err);
    }
  }
}
