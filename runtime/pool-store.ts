import type { Pool, QueryResultRow } from 'pg';
import { Coalescer } from './batcher';
import {
  abandonSql,
  beginReleaseSql,
  claimSql,
  GatewayState,
  GatewayStates,
  markAllocatedSql,
  markReadySql,
  PoolTables,
  returnToPoolSql,
  stateSql,
  takeOverSql,
} from './gateway-states';
import { InventoryStore } from './inventory-store';
import { type FencedRow, groupedBy, isDeadlock, isUniqueViolation, matchFenced } from './pool-batching';
import { COLUMNS, type DbRow, type GatewayRow, PoolSql, toRow } from './pool-sql';
import { TokenStore } from './token-store';

export type { GatewayState } from './gateway-states';
export type { RegisterResult } from './inventory-store';
export type { GatewayRow } from './pool-sql';

/** Where a gateway goes when its allocation ends: the pool, or quarantine until it calls /gateway/ready. */
export type PoolReturn = typeof GatewayStates.ready | typeof GatewayStates.registered;

const ALLOCATED = stateSql(GatewayStates.allocated);

/** Extra conditions of a release, checked in the same statement (reapStale's fence against a gateway that came back). */
export interface ReleaseCondition {
  allocationId?: string;
  silentForMs?: number;
}

export type ClaimOutcome = { kind: 'claimed'; row: GatewayRow } | { kind: 'exhausted' } | { kind: 'org-taken' };

interface ClaimRequest {
  orgId: string;
  tokenHash: Buffer;
  leaseMs: number;
}

/**
 * The pool's store: the gateway rows and their state transitions here (the
 * statements are runtime/gateway-states.ts's), the inventory
 * (inventory-store.ts) and the tokens (token-store.ts) behind it. Each
 * statement is one round trip, counted in `roundTrips` (the bench reports it).
 *
 * The statements on the allocate/release path (find, claim, mark allocated,
 * begin release, return to pool) are coalesced: concurrent calls of one kind
 * are answered by ONE statement over arrays (see Coalescer), so a burst of N
 * allocations costs a handful of statements and commits instead of 3N. Each
 * batched statement keeps the semantics of the single one for every item (same
 * fencing on allocation_id, same state conditions), locks its rows in name
 * order (two batches can never deadlock each other), and on a conflict that
 * only one item can cause (an organization claimed elsewhere) or a deadlock
 * reported by PostgreSQL, the batch's items are retried one statement each.
 */
export class PoolStore {
  private readonly sql: PoolSql;
  private readonly t: string;
  private readonly tables: PoolTables;
  /** Registration of the inventory (register): used directly by the allocator. */
  readonly inventory: InventoryStore;
  /** Allocation and registration tokens, retired tokens: used directly by the allocator's token module and the reaper. */
  readonly tokens: TokenStore;
  private readonly finds = new Coalescer<string, GatewayRow | undefined>((orgs) => this.findMany(orgs));
  private readonly claims = new Coalescer<ClaimRequest, ClaimOutcome>((reqs) => this.claimMany(reqs));
  private readonly marks = new Coalescer<FencedRow, boolean>((items) => this.markAllocatedMany(items));
  private readonly returns = new Coalescer<FencedRow & { to: PoolReturn }, boolean>((items) => this.returnToPoolMany(items));
  private readonly releases = new Coalescer<{ orgId: string; leaseMs: number }, GatewayRow | undefined>((items) => this.beginReleaseMany(items));

  constructor(pool: Pool, schema: string) {
    this.sql = new PoolSql(pool, schema);
    this.tables = this.sql.tables;
    this.t = this.tables.gateways;
    this.inventory = new InventoryStore(this.sql);
    this.tokens = new TokenStore(this.sql);
  }

  /** SQL round trips of every pool statement so far (the bench reports it). */
  get roundTrips(): number {
    return this.sql.roundTrips;
  }

  private query<R extends QueryResultRow>(sql: string, params: unknown[] = []): Promise<R[]> {
    return this.sql.query<R>(sql, params);
  }

  // ------------------------------------------------------------ rows and state transitions

  findByOrganization(orgId: string): Promise<GatewayRow | undefined> {
    return this.finds.submit(orgId);
  }

  private async findMany(orgs: string[]): Promise<Array<GatewayRow | undefined>> {
    const rows = await this.query<DbRow>(`SELECT ${COLUMNS} FROM ${this.t} g WHERE g.organization_id = ANY($1::uuid[])`, [[...new Set(orgs)]]);
    const byOrg = new Map(rows.map((r) => [r.organization_id as string, r]));
    return orgs.map((o) => {
      const r = byOrg.get(o);
      return r ? toRow(r) : undefined;
    });
  }

  async list(): Promise<GatewayRow[]> {
    return (await this.query<DbRow>(`SELECT ${COLUMNS} FROM ${this.t} g ORDER BY length(g.name), g.name`)).map(toRow);
  }

  async countReady(): Promise<number> {
    const rows = await this.query<{ n: string }>(`SELECT count(*)::text AS n FROM ${this.t} WHERE state = ${stateSql(GatewayStates.ready)}`);
    return Number(rows[0].n);
  }

  /**
   * Claims the longest-ready gateway for an organization in one statement.
   * SKIP LOCKED lets concurrent claims take different rows without waiting;
   * the UNIQUE(organization_id) constraint turns a second claim for the same
   * organization into 'org-taken' instead of a second gateway.
   */
  claim(orgId: string, tokenHash: Buffer, leaseMs: number): Promise<ClaimOutcome> {
    return this.claims.submit({ orgId, tokenHash, leaseMs });
  }

  /**
   * Claims for a batch of organizations in one statement (claimSql); organizations
   * left without a gateway are 'exhausted', as a single claim finding no row would be.
   */
  private async claimMany(reqs: ClaimRequest[]): Promise<ClaimOutcome[]> {
    return groupedBy(reqs, (r) => r.leaseMs, async (group, leaseMs) => {
      try {
        const rows = await this.query<DbRow>(claimSql(this.tables, COLUMNS), [group.map((r) => r.orgId), group.map((r) => r.tokenHash), leaseMs, group.length]);
        const byOrg = new Map(rows.map((r) => [r.organization_id as string, r]));
        return group.map((r): ClaimOutcome => {
          const row = byOrg.get(r.orgId);
          return row ? { kind: 'claimed', row: toRow(row) } : { kind: 'exhausted' };
        });
      } catch (err) {
        const taken = isUniqueViolation(err, 'gateways_organization_id_key');
        if (group.length === 1) {
          if (taken) return [{ kind: 'org-taken' }];
          throw err;
        }
        // One organization of the batch is held or being claimed elsewhere (or a deadlock was
        // broken): the statement changed nothing, so settle each claim on its own.
        if (taken || isDeadlock(err)) return Promise.all(group.map(async (r) => (await this.claimMany([r]))[0]));
        throw err;
      }
    });
  }

  /** allocating → allocated, only if our claim still stands (fencing on allocation_id). */
  markAllocated(name: string, allocationId: string): Promise<boolean> {
    return this.marks.submit({ name, allocationId });
  }

  private markAllocatedMany(items: FencedRow[]): Promise<boolean[]> {
    return this.fencedBatch(markAllocatedSql(this.tables), items, []);
  }

  /**
   * allocating|releasing → ready for a given claim: the gateway goes back to the pool.
   * `registered` instead quarantines it until it calls /gateway/ready again.
   */
  returnToPool(name: string, allocationId: string, to: PoolReturn = GatewayStates.ready): Promise<boolean> {
    return this.returns.submit({ name, allocationId, to });
  }

  private returnToPoolMany(items: Array<FencedRow & { to: PoolReturn }>): Promise<boolean[]> {
    return groupedBy(items, (i) => i.to, (group, to) => this.fencedBatch(returnToPoolSql(this.tables), group, [to]));
  }

  /** Runs a fenced batch statement ($1 names, $2 allocation ids, then `extra`); on a deadlock, each item alone. */
  private async fencedBatch(sql: string, items: FencedRow[], extra: unknown[]): Promise<boolean[]> {
    try {
      const rows = await this.query<{ name: string; allocation_id: string }>(sql, [items.map((i) => i.name), items.map((i) => i.allocationId), ...extra]);
      return matchFenced(items, rows);
    } catch (err) {
      if (items.length > 1 && isDeadlock(err)) return Promise.all(items.map(async (i) => (await this.fencedBatch(sql, [i], extra))[0]));
      throw err;
    }
  }

  /** Records why effects failed and ends the lease so reconcile() may take over at once. */
  async abandon(name: string, allocationId: string, error: string): Promise<void> {
    await this.query(abandonSql(this.tables), [name, allocationId, error.slice(0, 500)]);
  }

  /**
   * allocated → releasing for an organization; returns the row, or undefined if it
   * holds no allocated gateway (or `onlyIf` no longer holds). The allocation's
   * token is retired in the same statement so a late second stop is recognised.
   */
  beginRelease(orgId: string, leaseMs: number, onlyIf: ReleaseCondition = {}): Promise<GatewayRow | undefined> {
    // Conditional releases (reapStale) are rare and are not coalesced: the same statement with one element.
    if (onlyIf.allocationId !== undefined || onlyIf.silentForMs !== undefined) return this.beginReleaseRows([{ orgId, ...onlyIf }], leaseMs).then((r) => r[0]);
    return this.releases.submit({ orgId, leaseMs });
  }

  private beginReleaseMany(items: Array<{ orgId: string; leaseMs: number }>): Promise<Array<GatewayRow | undefined>> {
    return groupedBy(items, (i) => i.leaseMs, async (group, leaseMs) => {
      const orgs = [...new Set(group.map((i) => i.orgId))];
      const rows = await this.beginReleaseRows(orgs.map((orgId) => ({ orgId })), leaseMs);
      const byOrg = new Map(orgs.map((o, i) => [o, rows[i]]));
      // Two calls for one organization in one batch: the first begins the release, the
      // second finds it already releasing, exactly as two single statements would.
      return group.map((i) => {
        const r = byOrg.get(i.orgId);
        byOrg.delete(i.orgId);
        return r;
      });
    });
  }

  /** beginReleaseSql for distinct organizations; answers in item order. On a deadlock, each item alone, in order. */
  private async beginReleaseRows(items: Array<{ orgId: string } & ReleaseCondition>, leaseMs: number): Promise<Array<GatewayRow | undefined>> {
    try {
      const rows = await this.query<DbRow>(beginReleaseSql(this.tables, COLUMNS), [
        items.map((i) => i.orgId),
        leaseMs,
        items.map((i) => i.allocationId ?? null),
        items.map((i) => i.silentForMs ?? null),
      ]);
      const byOrg = new Map(rows.map((r) => [r.organization_id as string, r]));
      return items.map((i) => {
        const r = byOrg.get(i.orgId);
        return r ? toRow(r) : undefined;
      });
    } catch (err) {
      if (items.length > 1 && isDeadlock(err)) {
        const out: Array<GatewayRow | undefined> = [];
        for (const i of items) out.push((await this.beginReleaseRows([i], leaseMs))[0]);
        return out;
      }
      throw err;
    }
  }

  /** Takes over a transitional row whose owner's lease expired (or that we were told to force); see takeOverSql. */
  async takeOver(name: string, allocationId: string, leaseMs: number, force: boolean): Promise<GatewayRow | undefined> {
    const rows = await this.query<DbRow>(takeOverSql(this.tables, COLUMNS), [name, allocationId, leaseMs, force]);
    return rows[0] ? toRow(rows[0]) : undefined;
  }

  async markReady(names: string[]): Promise<{ changed: string[]; states: Map<string, GatewayState> }> {
    const rows = await this.query<{ name: string; state: GatewayState; changed: boolean }>(markReadySql(this.tables), [names]);
    return {
      changed: rows.filter((r) => r.changed).map((r) => r.name),
      states: new Map(rows.map((r) => [r.name, r.state])),
    };
  }

  async heartbeat(name: string): Promise<boolean> {
    const rows = await this.query(
      `UPDATE ${this.t} SET last_heartbeat_at = now() WHERE name = $1 AND state = ${ALLOCATED} RETURNING name`,
      [name],
    );
    return rows.length === 1;
  }

  /** Allocated gateways silent for longer than maxSilenceMs. */
  async findSilent(maxSilenceMs: number): Promise<GatewayRow[]> {
    const rows = await this.query<DbRow>(
      `SELECT ${COLUMNS} FROM ${this.t} g WHERE g.state = ${ALLOCATED}
         AND coalesce(g.last_heartbeat_at, g.state_since) < now() - make_interval(secs => $1::double precision / 1000)`,
      [maxSilenceMs],
    );
    return rows.map(toRow);
  }

}
