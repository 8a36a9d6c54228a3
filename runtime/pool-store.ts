import type { Pool, QueryResultRow } from 'pg';
import { Coalescer } from './batcher';
import { AllocatorError } from './errors';
import type { GatewaySpec } from './inventory';
import { quoteSchema } from './migrate';
import { inTransaction } from './pg-transaction';

export type GatewayState = 'registered' | 'ready' | 'allocating' | 'allocated' | 'releasing' | 'retired';

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
  private readonly seq: string;
  private readonly retired: string;
  roundTrips = 0;
  private readonly finds = new Coalescer<string, GatewayRow | undefined>((orgs) => this.findMany(orgs));
  private readonly claims = new Coalescer<ClaimRequest, ClaimOutcome>((reqs) => this.claimMany(reqs));
  private readonly marks = new Coalescer<FencedRow, boolean>((items) => this.markAllocatedMany(items));
  private readonly returns = new Coalescer<FencedRow & { to: 'ready' | 'registered' }, boolean>((items) => this.returnToPoolMany(items));
  private readonly releases = new Coalescer<{ orgId: string; leaseMs: number }, GatewayRow | undefined>((items) => this.beginReleaseMany(items));

  constructor(
    private readonly pool: Pool,
    schema: string,
  ) {
    this.t = `${quoteSchema(schema)}.gateways`;
    this.seq = `${quoteSchema(schema)}.allocation_seq`;
    this.retired = `${quoteSchema(schema)}.retired_tokens`;
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
      `UPDATE ${this.t} g SET last_heartbeat_at = now() WHERE g.token_hash = $1 AND g.state = 'allocated' RETURNING ${COLUMNS}`,
      [hash],
    );
    return rows[0] ? toRow(rows[0]) : undefined;
  }

  async list(): Promise<GatewayRow[]> {
    return (await this.query<DbRow>(`SELECT ${COLUMNS} FROM ${this.t} g ORDER BY length(g.name), g.name`)).map(toRow);
  }

  async countReady(): Promise<number> {
    const rows = await this.query<{ n: string }>(`SELECT count(*)::text AS n FROM ${this.t} WHERE state = 'ready'`);
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
   * Claims for a batch of organizations in one statement: the N longest-ready
   * unlocked gateways, paired in order with the organizations in arrival order;
   * organizations left without a gateway are 'exhausted', as a single claim
   * finding no row would be.
   */
  private async claimMany(reqs: ClaimRequest[]): Promise<ClaimOutcome[]> {
    if (reqs.length === 1) return [await this.claimOne(reqs[0])];
    return groupedBy(reqs, (r) => r.leaseMs, async (group, leaseMs) => {
      try {
        const rows = await this.query<DbRow>(
          `WITH req AS (
             SELECT r.org, r.token_hash, r.ord FROM unnest($1::uuid[], $2::bytea[]) WITH ORDINALITY AS r(org, token_hash, ord)
           ), candidate AS (
             SELECT name, state_since FROM ${this.t} WHERE state = 'ready'
             ORDER BY state_since, name FOR UPDATE SKIP LOCKED LIMIT $4
           ), numbered AS (
             SELECT name, row_number() OVER (ORDER BY state_since, name) AS ord FROM candidate
           )
           UPDATE ${this.t} g SET state = 'allocating', organization_id = req.org,
             allocation_id = nextval('${this.seq}'),
             token_hash = req.token_hash, state_since = now(), lease_expires_at = now() + make_interval(secs => $3::double precision / 1000),
             last_error = NULL, last_heartbeat_at = NULL
           FROM numbered JOIN req ON req.ord = numbered.ord
           WHERE g.name = numbered.name
           RETURNING ${COLUMNS}`,
          [group.map((r) => r.orgId), group.map((r) => r.tokenHash), leaseMs, group.length],
        );
        const byOrg = new Map(rows.map((r) => [r.organization_id as string, r]));
        return group.map((r): ClaimOutcome => {
          const row = byOrg.get(r.orgId);
          return row ? { kind: 'claimed', row: toRow(row) } : { kind: 'exhausted' };
        });
      } catch (err) {
        // One organization of the batch is held or being claimed elsewhere (or a deadlock was
        // broken): the statement changed nothing, so settle each claim on its own.
        if (isUniqueViolation(err, 'gateways_organization_id_key') || isDeadlock(err)) return Promise.all(group.map((r) => this.claimOne(r)));
        throw err;
      }
    });
  }

  private async claimOne({ orgId, tokenHash, leaseMs }: ClaimRequest): Promise<ClaimOutcome> {
    try {
      const rows = await this.query<DbRow>(
        `WITH candidate AS (
           SELECT name FROM ${this.t} WHERE state = 'ready'
           ORDER BY state_since, name FOR UPDATE SKIP LOCKED LIMIT 1
         )
         UPDATE ${this.t} g SET state = 'allocating', organization_id = $1,
           allocation_id = nextval('${this.seq}'),
           token_hash = $2, state_since = now(), lease_expires_at = now() + make_interval(secs => $3::double precision / 1000),
           last_error = NULL, last_heartbeat_at = NULL
         FROM candidate WHERE g.name = candidate.name
         RETURNING ${COLUMNS}`,
        [orgId, tokenHash, leaseMs],
      );
      return rows[0] ? { kind: 'claimed', row: toRow(rows[0]) } : { kind: 'exhausted' };
    } catch (err) {
      if (isUniqueViolation(err, 'gateways_organization_id_key')) return { kind: 'org-taken' };
      throw err;
    }
  }

  /** allocating → allocated, only if our claim still stands (fencing on allocation_id). */
  markAllocated(name: string, allocationId: string): Promise<boolean> {
    return this.marks.submit({ name, allocationId });
  }

  private async markAllocatedMany(items: FencedRow[]): Promise<boolean[]> {
    if (items.length === 1) return [await this.markAllocatedOne(items[0].name, items[0].allocationId)];
    try {
      const rows = await this.query<{ name: string; allocation_id: string }>(
        `WITH locked AS (
           SELECT g.name FROM ${this.t} g
           JOIN unnest($1::text[], $2::bigint[]) AS v(name, allocation_id) ON v.name = g.name AND v.allocation_id = g.allocation_id
           WHERE g.state = 'allocating' ORDER BY g.name FOR UPDATE OF g
         )
         UPDATE ${this.t} g SET state = 'allocated', state_since = now(), lease_expires_at = NULL, last_heartbeat_at = now()
         FROM locked WHERE g.name = locked.name AND g.state = 'allocating'
         RETURNING g.name, g.allocation_id::text AS allocation_id`,
        [items.map((i) => i.name), items.map((i) => i.allocationId)],
      );
      return matchFenced(items, rows);
    } catch (err) {
      if (isDeadlock(err)) return Promise.all(items.map((i) => this.markAllocatedOne(i.name, i.allocationId)));
      throw err;
    }
  }

  private async markAllocatedOne(name: string, allocationId: string): Promise<boolean> {
    const rows = await this.query(
      `UPDATE ${this.t} SET state = 'allocated', state_since = now(), lease_expires_at = NULL, last_heartbeat_at = now()
       WHERE name = $1 AND allocation_id = $2 AND state = 'allocating' RETURNING name`,
      [name, allocationId],
    );
    return rows.length === 1;
  }

  /**
   * allocating|releasing → ready for a given claim: the gateway goes back to the pool.
   * `registered` instead quarantines it until it calls /gateway/ready again.
   */
  returnToPool(name: string, allocationId: string, to: 'ready' | 'registered' = 'ready'): Promise<boolean> {
    return this.returns.submit({ name, allocationId, to });
  }

  private async returnToPoolMany(items: Array<FencedRow & { to: 'ready' | 'registered' }>): Promise<boolean[]> {
    if (items.length === 1) return [await this.returnToPoolOne(items[0].name, items[0].allocationId, items[0].to)];
    return groupedBy(items, (i) => i.to, async (group, to) => {
      try {
        const rows = await this.query<{ name: string; allocation_id: string }>(
          `WITH locked AS (
             SELECT g.name FROM ${this.t} g
             JOIN unnest($1::text[], $2::bigint[]) AS v(name, allocation_id) ON v.name = g.name AND v.allocation_id = g.allocation_id
             WHERE g.state IN ('allocating', 'releasing') ORDER BY g.name FOR UPDATE OF g
           )
           UPDATE ${this.t} g SET state = $3, organization_id = NULL, token_hash = NULL, state_since = now(),
             lease_expires_at = NULL, last_error = NULL
           FROM locked WHERE g.name = locked.name AND g.state IN ('allocating', 'releasing')
           RETURNING g.name, g.allocation_id::text AS allocation_id`,
          [group.map((i) => i.name), group.map((i) => i.allocationId), to],
        );
        return matchFenced(group, rows);
      } catch (err) {
        if (isDeadlock(err)) return Promise.all(group.map((i) => this.returnToPoolOne(i.name, i.allocationId, i.to)));
        throw err;
      }
    });
  }

  private async returnToPoolOne(name: string, allocationId: string, to: 'ready' | 'registered'): Promise<boolean> {
    const rows = await this.query(
      `UPDATE ${this.t} SET state = $3, organization_id = NULL, token_hash = NULL, state_since = now(),
         lease_expires_at = NULL, last_error = NULL
       WHERE name = $1 AND allocation_id = $2 AND state IN ('allocating', 'releasing') RETURNING name`,
      [name, allocationId, to],
    );
    return rows.length === 1;
  }

  /** Records why effects failed and ends the lease so reconcile() may take over at once. */
  async abandon(name: string, allocationId: string, error: string): Promise<void> {
    await this.query(
      `UPDATE ${this.t} SET last_error = $3, lease_expires_at = now() - interval '1 millisecond'
       WHERE name = $1 AND allocation_id = $2 AND state IN ('allocating', 'releasing')`,
      [name, allocationId, error.slice(0, 500)],
    );
  }

  /**
   * allocated → releasing for an organization; returns the row, or undefined if it
   * holds no allocated gateway (or `onlyIf` no longer holds). The allocation's
   * token is retired in the same statement so a late second stop is recognised.
   */
  beginRelease(orgId: string, leaseMs: number, onlyIf: ReleaseCondition = {}): Promise<GatewayRow | undefined> {
    // Conditional releases (reapStale) are rare and keep their own statement.
    if (onlyIf.allocationId !== undefined || onlyIf.silentForMs !== undefined) return this.beginReleaseOne(orgId, leaseMs, onlyIf);
    return this.releases.submit({ orgId, leaseMs });
  }

  private async beginReleaseMany(items: Array<{ orgId: string; leaseMs: number }>): Promise<Array<GatewayRow | undefined>> {
    if (items.length === 1) return [await this.beginReleaseOne(items[0].orgId, items[0].leaseMs, {})];
    return groupedBy(items, (i) => i.leaseMs, async (group, leaseMs) => {
      try {
        const rows = await this.query<DbRow>(
          `WITH old AS (
             SELECT g.name, g.token_hash, g.organization_id FROM ${this.t} g
             WHERE g.organization_id = ANY($1::uuid[]) AND g.state = 'allocated'
             ORDER BY g.name FOR UPDATE
           ), upd AS (
             UPDATE ${this.t} g SET state = 'releasing', token_hash = NULL, state_since = now(),
               lease_expires_at = now() + make_interval(secs => $2::double precision / 1000)
             FROM old WHERE g.name = old.name RETURNING ${COLUMNS}
           ), retired AS (
             INSERT INTO ${this.retired} (token_hash, gateway, organization_id)
             SELECT old.token_hash, old.name, old.organization_id FROM old WHERE old.token_hash IS NOT NULL
             ON CONFLICT (token_hash) DO NOTHING
           )
           SELECT * FROM upd`,
          [[...new Set(group.map((i) => i.orgId))], leaseMs],
        );
        const byOrg = new Map(rows.map((r) => [r.organization_id as string, r]));
        // Two calls for one organization in one batch: the first begins the release, the
        // second finds it already releasing, exactly as two single statements would.
        return group.map((i) => {
          const r = byOrg.get(i.orgId);
          byOrg.delete(i.orgId);
          return r ? toRow(r) : undefined;
        });
      } catch (err) {
        if (isDeadlock(err)) {
          const out: Array<GatewayRow | undefined> = [];
          for (const i of group) out.push(await this.beginReleaseOne(i.orgId, i.leaseMs, {}));
          return out;
        }
        throw err;
      }
    });
  }

  private async beginReleaseOne(orgId: string, leaseMs: number, onlyIf: ReleaseCondition): Promise<GatewayRow | undefined> {
    const rows = await this.query<DbRow>(
      `WITH old AS (
         SELECT g.name, g.token_hash FROM ${this.t} g
         WHERE g.organization_id = $1 AND g.state = 'allocated'
           AND ($3::bigint IS NULL OR g.allocation_id = $3::bigint)
           AND ($4::double precision IS NULL
                OR coalesce(g.last_heartbeat_at, g.state_since) < now() - make_interval(secs => $4::double precision / 1000))
         FOR UPDATE
       ), upd AS (
         UPDATE ${this.t} g SET state = 'releasing', token_hash = NULL, state_since = now(),
           lease_expires_at = now() + make_interval(secs => $2::double precision / 1000)
         FROM old WHERE g.name = old.name RETURNING ${COLUMNS}
       ), retired AS (
         INSERT INTO ${this.retired} (token_hash, gateway, organization_id)
         SELECT old.token_hash, old.name, $1::uuid FROM old WHERE old.token_hash IS NOT NULL
         ON CONFLICT (token_hash) DO NOTHING
       )
       SELECT * FROM upd`,
      [orgId, leaseMs, onlyIf.allocationId ?? null, onlyIf.silentForMs ?? null],
    );
    return rows[0] ? toRow(rows[0]) : undefined;
  }

  /** Takes over a transitional row whose owner's lease expired (or that we were told to force). */
  async takeOver(name: string, allocationId: string, leaseMs: number, force: boolean): Promise<GatewayRow | undefined> {
    // A new allocation_id voids the dead owner's fencing token: if it was only slow, its
    // late effects (guarded by `claim`) and its markAllocated/returnToPool match nothing.
    const rows = await this.query<DbRow>(
      `UPDATE ${this.t} g SET lease_expires_at = now() + make_interval(secs => $3::double precision / 1000),
         allocation_id = nextval('${this.seq}')
       WHERE g.name = $1 AND g.allocation_id = $2 AND g.state IN ('allocating', 'releasing')
         AND ($4 OR g.lease_expires_at < now())
       RETURNING ${COLUMNS}`,
      [name, allocationId, leaseMs, force],
    );
    return rows[0] ? toRow(rows[0]) : undefined;
  }

  async markReady(names: string[]): Promise<{ changed: string[]; states: Map<string, GatewayState> }> {
    const rows = await this.query<{ name: string; state: GatewayState; changed: boolean }>(
      `WITH upd AS (
         UPDATE ${this.t} SET state = 'ready', state_since = now()
         WHERE name = ANY($1::text[]) AND state = 'registered' RETURNING name
       )
       SELECT g.name, CASE WHEN upd.name IS NULL THEN g.state ELSE 'ready' END AS state, upd.name IS NOT NULL AS changed
       FROM ${this.t} g LEFT JOIN upd ON upd.name = g.name WHERE g.name = ANY($1::text[])`,
      [names],
    );
    return {
      changed: rows.filter((r) => r.changed).map((r) => r.name),
      states: new Map(rows.map((r) => [r.name, r.state])),
    };
  }

  async heartbeat(name: string): Promise<boolean> {
    const rows = await this.query(
      `UPDATE ${this.t} SET last_heartbeat_at = now() WHERE name = $1 AND state = 'allocated' RETURNING name`,
      [name],
    );
    return rows.length === 1;
  }

  /** Allocated gateways silent for longer than maxSilenceMs. */
  async findSilent(maxSilenceMs: number): Promise<GatewayRow[]> {
    const rows = await this.query<DbRow>(
      `SELECT ${COLUMNS} FROM ${this.t} g WHERE g.state = 'allocated'
         AND coalesce(g.last_heartbeat_at, g.state_since) < now() - make_interval(secs => $1::double precision / 1000)`,
      [maxSilenceMs],
    );
    return rows.map(toRow);
  }

  /** Rotates the allocation token of an allocated gateway (the old one stops working at once). */
  async rotateToken(orgId: string, tokenHash: Buffer, allocationId?: string): Promise<GatewayRow | undefined> {
    const rows = await this.query<DbRow>(
      // The handshake (/gateway/config) that rotates the token is the gateway's first sign of life.
      `UPDATE ${this.t} g SET token_hash = $2, last_heartbeat_at = now() WHERE g.organization_id = $1 AND g.state = 'allocated'
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
      if (holder.state === 'retired' || (prune && (holder.state === 'ready' || holder.state === 'registered'))) removable.push(holder.name);
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
        await client.query(`DELETE FROM ${this.t} WHERE name = $1 AND state IN ('retired', 'ready', 'registered')`, [name]);
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
        } else if (old.host !== s.host || old.httpPort !== s.httpPort || old.vpnPort !== s.vpnPort || old.state === 'retired') {
          await client.query(
            `UPDATE ${this.t} SET host = $2, http_port = $3, vpn_port = $4,
               state = CASE WHEN state = 'retired' THEN 'registered' ELSE state END
             WHERE name = $1`,
            [s.name, s.host, s.httpPort, s.vpnPort],
          );
          result.updated.push(s.name);
        } else {
          result.unchanged.push(s.name);
        }
      }
      if (prune) {
        const wanted = new Set(specs.map((s) => s.name));
        for (const old of before.values()) {
          if (wanted.has(old.name) || old.state === 'retired' || removable.includes(old.name)) continue;
          if (old.state === 'ready' || old.state === 'registered') {
            await client.query(`UPDATE ${this.t} SET state = 'retired', state_since = now() WHERE name = $1`, [old.name]);
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
  const held = conflicts.filter((c) => !['retired', 'ready', 'registered'].includes(c.holder.state));
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

