/**
 * Stage-1 route files: one per organization, written atomically and read by
 * njs on each request, so a route is live without a reload. A written route
 * counts once nginx's own workers report serving it (status server).
 */
import { promises as fs } from 'fs';
import * as path from 'path';
import type { Pool } from 'pg';
import type { AllocatorError } from './errors';
import { FencedBatchWriter, type ActionCondition, type Guard, type OwnedEntry } from './fenced-batch-writer';
import { orgIdOfRouteFile, renderRoute, routeFileName, routeOwnerLine } from './nginx-config';
import { nginxLockFailure, nginxLockKey } from './nginx-lock';
import { readOwnedFiles, removeAbandonedTempFiles, writeAtomic } from './owned-files';
import type { LookupAnswer, Stage1Status } from './stage1-status';

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
  }

  /** Route files this allocator owns for this environment. */
  listOwned(): Promise<OwnedRoute[]> {
    return readOwnedFiles(this.dir, orgIdOfRouteFile, (orgId) => `${routeOwnerLine(this.envName, orgId)} `);
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
        if (t === undefined) await fs.rm(file, { force: true });
        else await writeAtomic(file, renderRoute(this.envName, c.orgId, t.gatewayName, t.host, t.port));
      }),
    );
  }

  /** Removals need no confirmation (a stopped nginx routes nothing); additions must be served. */
  protected async confirm(written: RouteChange[]): Promise<void> {
    const want = new Map(written.flatMap((c) => (c.target ? [[c.orgId, `${c.target.host}:${c.target.port}`] as const] : [])));
    if (want.size === 0) return;
    let last: LookupAnswer | undefined;
    await this.status.waitFor(
      async () => {
        last = await this.status.lookup([...want.keys()]);
        return !!last && [...want].every(([id, target]) => last?.routes[id] === target);
      },
      () => `nginx does not serve the new route(s): status server ${this.status.listen} ${last ? `answers ${JSON.stringify(last.routes).slice(0, 200)}` : 'does not answer'}`,
    );
  }

  protected failure(err: unknown): AllocatorError {
    return nginxLockFailure(err);
  }
}
