import type { Pool, QueryResultRow } from 'pg';
import { Coalescer } from './batcher';
import { AllocatorError } from './errors';
import type { GatewaySpec } from './inventory';
import { quoteSchema } from './migrate';
import {
  abandonSql,
  beginReleaseSql,
  claimSql,
  FREE_STATES,
  GatewayState,
  GatewayStates,
  markAllocatedSql,
  markReadySql,
  PoolTables,
  REMOVABLE_STATES,
  retireSql,
  returnToPoolSql,
  stateSql,
  statesSql,
  takeOverSql,
  updateEndpointSql,
} from './gateway-states';
import { inTransaction } from './pg-transaction';

export type { GatewayState } from './gateway-states';

/** Where a gateway goes when its allocation ends: the pool, or quarantine until it calls /gateway/ready. */
export type PoolReturn = typeof GatewayStates.ready | typeof GatewayStates.registered;

const ALLOCATED = stateSql(GatewayStates.allocated);

export interface GatewayRow extends GatewaySpec {
  state: GatewayState;
  organizationId: string | null;
  allocationId: string | null;
  stateSince: Date;
  leaseExpiresAt: Date | null;
  lastHeartbeatAt: Date | null;
  lastError: string | null;
  /** True when the row is transitional and its owner's lease has run out (the owner is presumed dead). */
  leaseExpired: boolean;
}

interface DbRow extends QueryResultRow {
  name: string;
  host: string;
  http_port: number;
  vpn_port: number;
  state: GatewayState;
  organization_id: string | null;
  allocation_id: string | null;
  state_since: Date;
  lease_expires_at: Date | null;
  last_heartbeat_at: Date | null;
  last_error: string | null;
  lease_expired: boolean;
}

const COLUMNS = `g.name, g.host, g.http_port, g.vpn_port, g.state, g.organization_id, g.allocation_id::text AS allocation_id,
  g.state_since, g.lease_expires_at, g.last_heartbeat_at, g.last_error,
  (g.lease_expires_at IS NOT NULL AND g.lease_expires_at < now()) AS lease_expired`;

function toRow(r: DbRow): GatewayRow {
  return {
    name: r.name,
    host: r.host,
    httpPort: r.http_port,
    vpnPort: r.vpn_port,
    state: r.state,
    organizationId: r.organization_id,
    allocationId: r.allocation_id,
    stateSince: r.state_since,
    leaseExpiresAt: r.lease_expires_at,
    lastHeartbeatAt: r.last_heartbeat_at,
    lastError: r.last_error,
    leaseExpired: r.lease_expired,
  };
}

/** Extra conditions of a release, checked in the same statement (reapStale's fence against a gateway that came back). */
export interface ReleaseCondition {
  allocationId?: string;
  silentForMs?: number;
}

export type ClaimOutcome = { kind: 'claimed'; row: GatewayRow } | { kind: 'exhausted' } | { kind: 'org-taken' };

export interface RegisterResult {
  added: string[];
  updated: string[];
  unchanged: string[];
  retired: string[];
  /** Gateways absent from the inventory that could not be retired yet because they are held. */
  retireDeferred: string[];
  /** Gateways absent from the inventory whose endpoint a listed one took: retired ones, and free ones with prune (rows deleted). */
  removed: string[];
}

interface ClaimRequest {
  orgId: string;
  tokenHash: Buffer;
  leaseMs: number;
}

interface FencedRow {
  name: string;
  allocationId: string;
}

/**
 * Every SQL statement of the pool. Each statement is one round trip, counted in
 * `roundTrips` (the bench reports it).
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
  private readonly t: string;
  private readonly retired: string;
  private readonly tables: PoolTables;
  roundTrips = 0;
  private readonly finds = new Coalescer<string, GatewayRow | undefined>((orgs) => this.findMany(orgs));
  private readonly claims = new Coalescer<ClaimRequest, ClaimOutcome>((reqs) => this.claimMany(reqs));
  private readonly marks = new Coalescer<FencedRow, boolean>((items) => this.markAllocatedMany(items));
  private readonly returns = new Coalescer<FencedRow & { to: PoolReturn }, boolean>((items) => this.returnToPoolMany(items));
  private readonly releases = new Coalescer<{ orgId: string; leaseMs: number }, GatewayRow | undefined>((items) => this.beginReleaseMany(items));

  constructor(
    private readonly pool: Pool,
    schema: string,
  ) {
    this.t = `${quoteSchema(schema)}.gateways`;
    this.retired = `${quoteSchema(schema)}.retired_tokens`;
    this.tables = { gateways: this.t, allocationSeq: `${quoteSchema(schema)}.allocation_seq`, retiredTokens: this.retired };
  }

  private async query<R extends QueryResultRow>(sql: string, params: unknown[] = []): Promise<R[]> {
    this.roundTrips += 1;
    return (await this.pool.query<R>(sql, params)).rows;
  }

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

  /**
   * The allocated gateway holding this token. Presenting the token is the
   * gateway's sign of life (push, pull, config, heartbeat, stop all
   * authenticate here), so the lookup refreshes `last_heartbeat_at` in the same
   * statement: no extra round trip per call, and the reaper's silence re-check
   * (in the release statement) sees it.
   */
  async findByTokenHash(hash: Buffer): Promise<GatewayRow | undefined> {
    const rows = await this.query<DbRow>(
      `UPDATE ${this.t} g SET last_heartbeat_at = now() WHERE g.token_hash = $1 AND g.state = ${ALLOCATED} RETURNING ${COLUMNS}`,
      [hash],
    );
    return rows[0] ? toRow(rows[0]) : undefined;
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

  /** Rotates the allocation token of an allocated gateway (the old one stops working at once). */
  async rotateToken(orgId: string, tokenHash: Buffer, allocationId?: string): Promise<GatewayRow | undefined> {
    const rows = await this.query<DbRow>(
      // The handshake (/gateway/config) that rotates the token is the gateway's first sign of life.
      `UPDATE ${this.t} g SET token_hash = $2, last_heartbeat_at = now() WHERE g.organization_id = $1 AND g.state = ${ALLOCATED}
         AND ($3::bigint IS NULL OR g.allocation_id = $3::bigint) RETURNING ${COLUMNS}`,
      [orgId, tokenHash, allocationId ?? null],
    );
    return rows[0] ? toRow(rows[0]) : undefined;
  }

  /** Stores each gateway's registration token hash; returns the names that are unknown. */
  async setRegistrationHashes(hashes: Array<{ name: string; hash: Buffer }>): Promise<string[]> {
    const rows = await this.query<{ name: string }>(
      `UPDATE ${this.t} g SET registration_token_hash = v.hash
       FROM unnest($1::text[], $2::bytea[]) AS v(name, hash) WHERE g.name = v.name RETURNING g.name`,
      [hashes.map((h) => h.name), hashes.map((h) => h.hash)],
    );
    const known = new Set(rows.map((r) => r.name));
    return hashes.map((h) => h.name).filter((n) => !known.has(n));
  }

  async registrationHash(name: string): Promise<{ state: GatewayState; hash: Buffer | null } | undefined> {
    const rows = await this.query<{ state: GatewayState; registration_token_hash: Buffer | null }>(
      `SELECT state, registration_token_hash FROM ${this.t} WHERE name = $1`,
      [name],
    );
    return rows[0] ? { state: rows[0].state, hash: rows[0].registration_token_hash } : undefined;
  }

  async findRetiredToken(hash: Buffer): Promise<{ gateway: string; organizationId: string; retiredAt: Date } | undefined> {
    const rows = await this.query<{ gateway: string; organization_id: string; retired_at: Date }>(
      `SELECT gateway, organization_id, retired_at FROM ${this.retired} WHERE token_hash = $1`,
      [hash],
    );
    return rows[0] ? { gateway: rows[0].gateway, organizationId: rows[0].organization_id, retiredAt: rows[0].retired_at } : undefined;
  }

  async forgetRetiredTokens(olderThanMs: number): Promise<number> {
    const rows = await this.query(
      `DELETE FROM ${this.retired} WHERE retired_at < now() - make_interval(secs => $1::double precision / 1000) RETURNING 1`,
      [olderThanMs],
    );
    return rows.length;
  }

  /**
   * Gateways not in the inventory whose endpoint (host:httpPort) a declared one
   * takes. A retired one declares and holds nothing: it is removed. A free one
   * is removed too when pruning (the stack no longer declares it). Anything else
   * (held, or free without prune) is an `INVENTORY_CONFLICT`, thrown before
   * anything is written.
   */
  private settleEndpointConflicts(specs: GatewaySpec[], before: Map<string, GatewayRow>, prune: boolean): string[] {
    const declared = new Set(specs.map((s) => s.name));
    const byEndpoint = new Map<string, GatewayRow>();
    for (const row of before.values()) if (!declared.has(row.name)) byEndpoint.set(`${row.host}:${row.httpPort}`, row);
    const removable: string[] = [];
    const conflicts: Array<{ declared: string; endpoint: string; holder: GatewayRow }> = [];
    for (const s of specs) {
      const endpoint = `${s.host}:${s.httpPort}`;
      const holder = byEndpoint.get(endpoint);
      if (!holder) continue;
      if (holder.state === GatewayStates.retired || (prune && FREE_STATES.includes(holder.state))) removable.push(holder.name);
      else conflicts.push({ declared: s.name, endpoint, holder });
    }
    if (conflicts.length > 0) throw inventoryConflict(conflicts, prune);
    return removable;
  }

  /**
   * Upserts the inventory in one transaction. Host/port changes apply to held
   * gateways too (reconcile() rewrites their routes). With `prune`, gateways
   * missing from the inventory are retired when free; held ones are reported.
   */
  async register(specs: GatewaySpec[], prune: boolean): Promise<RegisterResult> {
    this.roundTrips += 1;
    try {
      return await this.registerOnce(specs, prune);
    } catch (err) {
      // A concurrent registration can still win the race for an endpoint between our check and COMMIT.
      const pgErr = err as { code?: string; constraint?: string };
      if (pgErr.code === '23505' && pgErr.constraint === 'endpoint_unique') {
        throw new AllocatorError('INVENTORY_CONFLICT', `gateway inventory conflicts with gateways registered concurrently (${(err as Error).message}); nothing was changed: list the pool (gateway-pool list) and register again`, {}, err);
      }
      throw err;
    }
  }

  private async registerOnce(specs: GatewaySpec[], prune: boolean): Promise<RegisterResult> {
    return inTransaction(this.pool, async (client) => {
      const before = new Map(
        (await client.query<DbRow>(`SELECT ${COLUMNS} FROM ${this.t} g FOR UPDATE`)).rows.map((r) => [r.name, toRow(r)]),
      );
      const result: RegisterResult = { added: [], updated: [], unchanged: [], retired: [], retireDeferred: [], removed: [] };
      // Checked before any write: endpoint_unique would otherwise fail the COMMIT (deferred) as a
      // "database failure", although it is a permanent conflict only the operator can settle.
      const removable = this.settleEndpointConflicts(specs, before, prune);
      for (const name of removable) {
        await client.query(`DELETE FROM ${this.t} WHERE name = $1 AND state IN ${statesSql(REMOVABLE_STATES)}`, [name]);
        result.removed.push(name);
      }
      for (const s of specs) {
        const old = before.get(s.name);
        if (!old) {
          await client.query(
            `INSERT INTO ${this.t} (name, host, http_port, vpn_port) VALUES ($1, $2, $3, $4)`,
            [s.name, s.host, s.httpPort, s.vpnPort],
          );
          result.added.push(s.name);
        } else if (old.host !== s.host || old.httpPort !== s.httpPort || old.vpnPort !== s.vpnPort || old.state === GatewayStates.retired) {
          await client.query(updateEndpointSql(this.tables), [s.name, s.host, s.httpPort, s.vpnPort]);
          result.updated.push(s.name);
        } else {
          result.unchanged.push(s.name);
        }
      }
      if (prune) {
        const wanted = new Set(specs.map((s) => s.name));
        for (const old of before.values()) {
          if (wanted.has(old.name) || old.state === GatewayStates.retired || removable.includes(old.name)) continue;
          if (FREE_STATES.includes(old.state)) {
            await client.query(retireSql(this.tables), [old.name]);
            result.retired.push(old.name);
          } else {
            result.retireDeferred.push(old.name);
          }
        }
      }
      return result;
    });
  }
}

/** The `INVENTORY_CONFLICT` answer, naming every conflict and the fix. */
function inventoryConflict(conflicts: Array<{ declared: string; endpoint: string; holder: GatewayRow }>, prune: boolean): AllocatorError {
  const held = conflicts.filter((c) => !REMOVABLE_STATES.includes(c.holder.state));
  const list = conflicts
    .slice(0, 20)
    .map((c) => `${c.declared} declares ${c.endpoint}, registered to ${c.holder.name} (${c.holder.state}${c.holder.organizationId ? `, organization ${c.holder.organizationId}` : ''}), which this inventory does not list`)
    .join('; ');
  const fix = prune
    ? `release the organization(s) of ${held.map((c) => c.holder.name).join(', ')} (or wait for their gateways to stop), then register again with prune`
    : 'if this stack replaced those gateways (renamed environment or pool), register with prune (`gateway-pool sync --prune`): free gateways it no longer declares are removed, held ones must be released first; ' +
      'if another environment uses the same database schema, give each environment its own schema (`schema` option / ALLOCATOR_SCHEMA)';
  return new AllocatorError('INVENTORY_CONFLICT', `gateway inventory conflicts with registered gateways: ${list}. Nothing was changed. Fix: ${fix}`, {
    conflicts: conflicts.map((c) => ({ declared: c.declared, endpoint: c.endpoint, registeredTo: c.holder.name, state: c.holder.state, organizationId: c.holder.organizationId })),
  });
}

/** Items answered by a batched fenced UPDATE: true for those whose (name, allocation_id) it changed. */
function matchFenced(items: FencedRow[], rows: Array<{ name: string; allocation_id: string }>): boolean[] {
  const done = new Set(rows.map((r) => `${r.name}\u0000${r.allocation_id}`));
  return items.map((i) => done.has(`${i.name}\u0000${i.allocationId}`));
}

/** Runs `fn` once per distinct key (a batch rarely mixes keys) and puts the answers back in item order. */
async function groupedBy<I, K, O>(items: I[], key: (i: I) => K, fn: (group: I[], k: K) => Promise<O[]>): Promise<O[]> {
  const groups = new Map<K, number[]>();
  items.forEach((item, idx) => {
    const k = key(item);
    const g = groups.get(k);
    if (g) g.push(idx);
    else groups.set(k, [idx]);
  });
  const out = new Array<O>(items.length);
  for (const [k, idxs] of groups) {
    const answers = await fn(idxs.map((i) => items[i]), k);
    idxs.forEach((i, j) => (out[i] = answers[j]));
  }
  return out;
}

/** PostgreSQL broke a deadlock by failing this statement (it changed nothing). */
export function isDeadlock(err: unknown): boolean {
  return (err as { code?: string } | null)?.code === '40P01';
}

export function isUniqueViolation(err: unknown, constraint?: string): boolean {
  const e = err as { code?: string; constraint?: string } | null;
  return !!e && e.code === '23505' && (constraint === undefined || e.constraint === constraint);
}

