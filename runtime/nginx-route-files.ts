/**
 * Stage-1 route files: one per organization, written atomically; they are the
 * durable routes. A removed file's inode is reused by a later write
 * (spare-files.ts: no inode created or freed per allocation). nginx serves
 * from its shared-memory route table, which the writer has load exactly the
 * batch's files after writing them (status server, `load`), so a route is
 * live without a reload. A written route
 * counts once nginx answers that its table holds it; a removed one once nginx
 * answers after reloading its (absent) file. Design: runtime/nginx-config.ts.
 */
import { promises as fs } from 'fs';
import * as path from 'path';
import type { Pool } from 'pg';
import type { AllocatorError } from './errors';
import { FencedBatchWriter, type ActionCondition, type Guard, type OwnedEntry } from './fenced-batch-writer';
import { orgIdOfRouteFile, renderRoute, routeFileName, routeOwnerLine } from './nginx-config';
import { nginxLockFailure, nginxLockKey } from './nginx-lock';
import { readOwnedFiles, removeAbandonedTempFiles } from './owned-files';
import { SpareFiles } from './spare-files';
import { NOT_LISTENING, type LookupAnswer, type Stage1Status } from './stage1-status';

export interface RouteChange {
  orgId: string;
  /** Checked inside the config lock, as for DNS actions. */
  onlyIf?: ActionCondition;
  /** undefined removes the route. */
  target?: { gatewayName: string; host: string; port: number };
}

/** A route file this environment owns, with its text. */
export type OwnedRoute = OwnedEntry<string>;

export class RouteFiles extends FencedBatchWriter<RouteChange, string> {
  protected readonly lockKey: string;
  /** Removed routes' files, reused by later writes (no inode created or freed per allocation). */
  private readonly spares: SpareFiles;

  constructor(
    pool: Pool,
    guard: Guard,
    confDir: string,
    /** `<confDir>/routes`. */
    private readonly dir: string,
    private readonly envName: string,
    private readonly status: Stage1Status,
  ) {
    super(pool, guard);
    this.lockKey = nginxLockKey(confDir);
    this.spares = new SpareFiles(dir);
  }

  /** Route files this allocator owns for this environment. */
  listOwned(): Promise<OwnedRoute[]> {
    return readOwnedFiles(this.dir, orgIdOfRouteFile, (orgId) => `${routeOwnerLine(this.envName, orgId)} `);
  }

  /** Unlinks the spares this writer kept (spare-files.ts); called when the allocator closes, after its batches. */
  clearSpares(): Promise<void> {
    return this.spares.clear();
  }

  /** Temp files of route writes whose writer died before its rename (owned-files.ts); their names. */
  removeAbandonedTempFiles(): Promise<string[]> {
    return removeAbandonedTempFiles(this.dir, (name) => orgIdOfRouteFile(name) !== undefined);
  }

  /** One file per organization (a batch holds one change per org): written in parallel, all before the lock is released. */
  protected async write(changes: RouteChange[]): Promise<void> {
    await fs.mkdir(this.dir, { recursive: true });
    await Promise.all(
      changes.map(async (c) => {
        const file = path.join(this.dir, routeFileName(c.orgId));
        const t = c.target;
        if (t === undefined) await this.spares.remove(file);
        else await this.spares.write(file, renderRoute(this.envName, c.orgId, t.gatewayName, t.host, t.port));
      }),
    );
    // Still under the lock: nginx's table follows the files within the locked section, so whoever holds the
    // lock sees table = files (the soak's checker relies on it). Not answered here: confirm() asks again.
    if (changes.length > 0) await this.status.load(changes.map((c) => c.orgId));
  }

  /**
   * After the lock: additions must be in nginx's route table, and removals gone from it, before the batch
   * resolves (until the live timeout: NGINX_FAILED, retryable). The first check reads the table (write()
   * loaded the batch under the lock); later ones load the files again: safe outside the lock, as nginx
   * serializes loads and each reads the files as they are then, so the last load always wins (an answer to
   * a load made after the removal reflects the files, a later writer's re-addition included).
   * A removal-only batch also holds when nothing listens on the status address (connection refused):
   * nginx is stopped, or not yet bound, and its initial load runs in a worker after binding, so it reads
   * the files after this removal (runtime/nginx-route-table.ts). Any other silence (a timeout, an error
   * answer) is NOT taken as done: a running nginx that did not load the removal would keep routing the
   * organization to a gateway another organization gets next. Then the release fails with NGINX_FAILED
   * (retryable; the gateway stays `releasing`, and a retry or reconcile() finishes it).
   */
  protected async confirm(written: RouteChange[]): Promise<void> {
    if (written.length === 0) return;
    const ids = written.map((c) => c.orgId);
    const want = new Map(written.flatMap((c) => (c.target ? [[c.orgId, `${c.target.host}:${c.target.port}`] as const] : [])));
    const removed = written.filter((c) => !c.target).map((c) => c.orgId);
    let last: LookupAnswer | undefined;
    let loaded = false;
    const check = async (): Promise<boolean> => {
      const got = await (loaded ? this.status.loadOrNotListening(ids) : this.status.lookup(ids));
      const fromLoad = loaded;
      loaded = true;
      if (got === NOT_LISTENING) return want.size === 0;
      last = got;
      if (!last) return false;
      const answer = last;
      return [...want].every(([id, target]) => answer.routes[id] === target) && (fromLoad || removed.every((id) => answer.routes[id] === ''));
    };
    const failure = (): string =>
      `nginx does not confirm the route change(s) (${want.size} added, ${removed.length} removed): status server ${this.status.listen} ${last ? `answers ${JSON.stringify(last.routes).slice(0, 200)}` : 'does not answer'}`;
    await this.status.waitFor(check, failure);
  }

  protected failure(err: unknown): AllocatorError {
    return nginxLockFailure(err);
  }
}
