/**
 * The gateway state machine, in one place: the state names, the table of the
 * transitions PostgreSQL may make, the predicate "this gateway still holds
 * this organization", and every SQL statement that moves a gateway (PoolStore
 * runs them and counts their round trips; nothing else writes `state`).
 *
 *   registered → ready → allocating → allocated → releasing → ready
 *                         allocating → ready (rollback)       releasing → registered (quarantine)
 *   ready|registered|unreachable → retired (pruned) → registered (listed again)
 *   ready ⇄ unreachable (host quarantine: its Docker host stopped answering; runtime/host-health.ts)
 *
 * Every batched statement takes arrays; the single-item path runs the same
 * statement with one element, so each transition is written once.
 */

export const GatewayStates = {
  registered: 'registered',
  ready: 'ready',
  allocating: 'allocating',
  allocated: 'allocated',
  releasing: 'releasing',
  retired: 'retired',
  /** Free, but its Docker host stopped answering (runtime/host-health.ts): never claimed until the host is back. */
  unreachable: 'unreachable',
} as const;

export type GatewayState = (typeof GatewayStates)[keyof typeof GatewayStates];

export const ALL_STATES: readonly GatewayState[] = Object.values(GatewayStates);

const S = GatewayStates;

/** States an allocate/release holds under a lease; reconcile() takes them over when the lease runs out. */
export const TRANSIENT_STATES: readonly GatewayState[] = [S.allocating, S.releasing];
/** States of a gateway that holds no organization and may be retired or removed from the inventory. */
export const FREE_STATES: readonly GatewayState[] = [S.ready, S.registered, S.unreachable];
/** States whose row an inventory change may delete (an endpoint taken by a declared gateway). */
export const REMOVABLE_STATES: readonly GatewayState[] = [S.retired, S.ready, S.registered, S.unreachable];

export type TransitionName =
  | 'markReady'
  | 'claim'
  | 'markAllocated'
  | 'beginRelease'
  | 'returnToPool'
  | 'retire'
  | 'reregister'
  | 'markUnreachable'
  | 'markReachable';

/** Every state change the pool makes: from which states, to which. */
export const TRANSITIONS: Readonly<Record<TransitionName, { readonly from: readonly GatewayState[]; readonly to: readonly GatewayState[] }>> = {
  /** The gateway reported itself ready (/gateway/ready). */
  markReady: { from: [S.registered], to: [S.ready] },
  /** An allocation took the longest-ready gateway. */
  claim: { from: [S.ready], to: [S.allocating] },
  /** The allocation's effects are in place. */
  markAllocated: { from: [S.allocating], to: [S.allocated] },
  /** A release began (its token is retired in the same statement). */
  beginRelease: { from: [S.allocated], to: [S.releasing] },
  /** Rollback or end of a release: back to the pool, or quarantined until the gateway calls /gateway/ready. */
  returnToPool: { from: TRANSIENT_STATES, to: [S.ready, S.registered] },
  /** Pruned from the inventory while free. */
  retire: { from: FREE_STATES, to: [S.retired] },
  /** Listed in the inventory again. */
  reregister: { from: [S.retired], to: [S.registered] },
  /**
   * Host quarantine: its Docker host stopped answering, so a free gateway there is taken out of
   * allocation. Only `ready` ones: a gateway holding an organization is left to the reaper.
   */
  markUnreachable: { from: [S.ready], to: [S.unreachable] },
  /** The host answers again and so does the gateway: back to the pool. */
  markReachable: { from: [S.unreachable], to: [S.ready] },
};

/** True when some transition of the table moves a gateway from `from` to `to`. */
export function canTransition(from: GatewayState, to: GatewayState): boolean {
  return Object.values(TRANSITIONS).some((t) => t.from.includes(from) && t.to.includes(to));
}

/** True when a gateway in this state holds an organization (its row names one). */
export function holdsOrganization(state: GatewayState): boolean {
  return state === S.allocating || state === S.allocated || state === S.releasing;
}

/** A state as an SQL literal (the names are fixed identifiers, never input). */
export function stateSql(state: GatewayState): string {
  return `'${state}'`;
}

/** `(…)` list of states for an SQL `IN`. */
export function statesSql(states: readonly GatewayState[]): string {
  return `(${states.map(stateSql).join(', ')})`;
}

// ------------------------------------------------------------ "still holds" predicate

/**
 * The condition an effect or a write is fenced on. `allocated`: the gateway
 * still holds the organization under this allocation; `claim`: the allocation
 * is still being set up by its owner; `orphan`: no gateway holds the organization.
 */
export type ActionCondition = { kind: 'orphan' } | { kind: 'allocated'; allocationId: string } | { kind: 'claim'; allocationId: string };

/**
 * SQL: gateway row `alias` still holds its organization under allocation
 * `allocationIdSql` (allocated, same fencing id). Used by every store that
 * checks a gateway's right to act for an organization.
 */
export function stillHoldsSql(alias: string, allocationIdSql: string): string {
  return `${alias}.state = ${stateSql(S.allocated)} AND ${alias}.allocation_id = ${allocationIdSql}`;
}

/** The same predicate on a row read in JavaScript (`row` undefined: nobody holds the organization). */
export function conditionHolds(row: { state: string; allocationId: string } | undefined, c: ActionCondition): boolean {
  if (c.kind === 'orphan') return !row;
  const state = c.kind === 'allocated' ? S.allocated : S.allocating;
  return row?.state === state && row.allocationId === c.allocationId;
}

/** For each organization, whether its condition holds, read with `query` (run under the caller's lock). */
export async function conditionsHolding(
  gatewaysTable: string,
  query: (sql: string, params: unknown[]) => Promise<Array<Record<string, unknown>>>,
  orgs: Array<{ orgId: string; onlyIf: ActionCondition }>,
): Promise<Set<string>> {
  const rows = await query(
    `SELECT organization_id::text AS org, state, allocation_id::text AS allocation_id FROM ${gatewaysTable} WHERE organization_id = ANY($1::uuid[])`,
    [orgs.map((o) => o.orgId)],
  );
  const byOrg = new Map(rows.map((r) => [String(r.org), { state: String(r.state), allocationId: String(r.allocation_id) }]));
  return new Set(orgs.filter((o) => conditionHolds(byOrg.get(o.orgId), o.onlyIf)).map((o) => o.orgId));
}

// ------------------------------------------------------------ statements

/** Tables the statements work on (schema-qualified, quoted). */
export interface PoolTables {
  gateways: string;
  allocationSeq: string;
  retiredTokens: string;
}

const LEASE_FROM = (param: string): string => `now() + make_interval(secs => ${param}::double precision / 1000)`;

/**
 * ready → allocating for a batch: the N longest-ready unlocked gateways, paired
 * in order with the requests ($1 orgs, $2 token hashes; $3 lease ms, $4 N).
 * SKIP LOCKED lets concurrent claims take different rows without waiting.
 */
export function claimSql(t: PoolTables, columns: string): string {
  const tr = TRANSITIONS.claim;
  return `WITH req AS (
      SELECT r.org, r.token_hash, r.ord FROM unnest($1::uuid[], $2::bytea[]) WITH ORDINALITY AS r(org, token_hash, ord)
    ), candidate AS (
      SELECT name, state_since FROM ${t.gateways} WHERE state IN ${statesSql(tr.from)}
      ORDER BY state_since, name FOR UPDATE SKIP LOCKED LIMIT $4
    ), numbered AS (
      SELECT name, row_number() OVER (ORDER BY state_since, name) AS ord FROM candidate
    )
    UPDATE ${t.gateways} g SET state = ${stateSql(tr.to[0])}, organization_id = req.org,
      allocation_id = nextval('${t.allocationSeq}'),
      token_hash = req.token_hash, state_since = now(), lease_expires_at = ${LEASE_FROM('$3')},
      last_error = NULL, last_heartbeat_at = NULL
    FROM numbered JOIN req ON req.ord = numbered.ord
    WHERE g.name = numbered.name
    RETURNING ${columns}`;
}

/** The rows of a fenced batch ($1 names, $2 allocation ids) in one of `states`, locked in name order. */
function lockedFenced(t: PoolTables, states: readonly GatewayState[]): string {
  return `locked AS (
      SELECT g.name FROM ${t.gateways} g
      JOIN unnest($1::text[], $2::bigint[]) AS v(name, allocation_id) ON v.name = g.name AND v.allocation_id = g.allocation_id
      WHERE g.state IN ${statesSql(states)} ORDER BY g.name FOR UPDATE OF g
    )`;
}

/** allocating → allocated for a batch ($1 names, $2 allocation ids), only where the claim still stands. */
export function markAllocatedSql(t: PoolTables): string {
  const tr = TRANSITIONS.markAllocated;
  return `WITH ${lockedFenced(t, tr.from)}
    UPDATE ${t.gateways} g SET state = ${stateSql(tr.to[0])}, state_since = now(), lease_expires_at = NULL, last_heartbeat_at = now()
    FROM locked WHERE g.name = locked.name AND g.state IN ${statesSql(tr.from)}
    RETURNING g.name, g.allocation_id::text AS allocation_id`;
}

/** allocating|releasing → $3 (ready or registered) for a batch ($1 names, $2 allocation ids), fenced on the allocation. */
export function returnToPoolSql(t: PoolTables): string {
  const tr = TRANSITIONS.returnToPool;
  return `WITH ${lockedFenced(t, tr.from)}
    UPDATE ${t.gateways} g SET state = $3, organization_id = NULL, token_hash = NULL, state_since = now(),
      lease_expires_at = NULL, last_error = NULL
    FROM locked WHERE g.name = locked.name AND g.state IN ${statesSql(tr.from)}
    RETURNING g.name, g.allocation_id::text AS allocation_id`;
}

/**
 * allocated → releasing for a batch of organizations ($1; $2 lease ms), each
 * with optional conditions re-checked in the statement ($3 allocation id, $4
 * silence in ms; NULL elements: no condition). The token is retired in the
 * same statement so a late second stop is recognised.
 */
export function beginReleaseSql(t: PoolTables, columns: string): string {
  const tr = TRANSITIONS.beginRelease;
  return `WITH old AS (
      SELECT g.name, g.token_hash, g.organization_id FROM ${t.gateways} g
      JOIN unnest($1::uuid[], $3::bigint[], $4::double precision[]) AS v(org, allocation_id, silent_ms) ON v.org = g.organization_id
      WHERE g.state IN ${statesSql(tr.from)}
        AND (v.allocation_id IS NULL OR g.allocation_id = v.allocation_id)
        AND (v.silent_ms IS NULL OR coalesce(g.last_heartbeat_at, g.state_since) < now() - make_interval(secs => v.silent_ms / 1000))
      ORDER BY g.name FOR UPDATE OF g
    ), upd AS (
      UPDATE ${t.gateways} g SET state = ${stateSql(tr.to[0])}, token_hash = NULL, state_since = now(),
        lease_expires_at = ${LEASE_FROM('$2')}
      FROM old WHERE g.name = old.name RETURNING ${columns}
    ), retired AS (
      INSERT INTO ${t.retiredTokens} (token_hash, gateway, organization_id)
      SELECT old.token_hash, old.name, old.organization_id FROM old WHERE old.token_hash IS NOT NULL
      ON CONFLICT (token_hash) DO NOTHING
    )
    SELECT * FROM upd`;
}

/**
 * Takes over a transitional row ($1 name, $2 allocation id; $3 lease ms) whose
 * owner's lease expired, or any when $4 (force). A new allocation_id voids the
 * dead owner's fencing token: if it was only slow, its late effects (guarded by
 * `claim`) and its markAllocated/returnToPool match nothing.
 */
export function takeOverSql(t: PoolTables, columns: string): string {
  return `UPDATE ${t.gateways} g SET lease_expires_at = ${LEASE_FROM('$3')},
      allocation_id = nextval('${t.allocationSeq}')
    WHERE g.name = $1 AND g.allocation_id = $2 AND g.state IN ${statesSql(TRANSIENT_STATES)}
      AND ($4 OR g.lease_expires_at < now())
    RETURNING ${columns}`;
}

/** Records why effects failed ($3) and ends the lease of ($1 name, $2 allocation id) so reconcile() may take over at once. */
export function abandonSql(t: PoolTables): string {
  return `UPDATE ${t.gateways} SET last_error = $3, lease_expires_at = now() - interval '1 millisecond'
    WHERE name = $1 AND allocation_id = $2 AND state IN ${statesSql(TRANSIENT_STATES)}`;
}

/** registered → ready for $1 names; returns every named row's resulting state and whether it changed. */
export function markReadySql(t: PoolTables): string {
  const tr = TRANSITIONS.markReady;
  return `WITH upd AS (
      UPDATE ${t.gateways} SET state = ${stateSql(tr.to[0])}, state_since = now()
      WHERE name = ANY($1::text[]) AND state IN ${statesSql(tr.from)} RETURNING name
    )
    SELECT g.name, CASE WHEN upd.name IS NULL THEN g.state ELSE ${stateSql(tr.to[0])} END AS state, upd.name IS NOT NULL AS changed
    FROM ${t.gateways} g LEFT JOIN upd ON upd.name = g.name WHERE g.name = ANY($1::text[])`;
}

/** Inventory: a free gateway ($1) no longer declared is retired. */
export function retireSql(t: PoolTables): string {
  const tr = TRANSITIONS.retire;
  return `UPDATE ${t.gateways} SET state = ${stateSql(tr.to[0])}, state_since = now() WHERE name = $1 AND state IN ${statesSql(tr.from)}`;
}

/** Inventory: endpoint update of $1 ($2 host, $3 http port, $4 vpn port); a retired gateway listed again is registered. */
export function updateEndpointSql(t: PoolTables): string {
  const tr = TRANSITIONS.reregister;
  return `UPDATE ${t.gateways} SET host = $2, http_port = $3, vpn_port = $4,
      state = CASE WHEN state IN ${statesSql(tr.from)} THEN ${stateSql(tr.to[0])} ELSE state END
    WHERE name = $1`;
}

/**
 * Host quarantine in both directions for a batch ($1 names): `markUnreachable` (ready →
 * unreachable) or `markReachable` (unreachable → ready). The `from` state is re-checked in the
 * statement, so a gateway claimed (or retired) meanwhile is left alone; returns the names moved.
 */
export function hostQuarantineSql(t: PoolTables, transition: 'markUnreachable' | 'markReachable'): string {
  const tr = TRANSITIONS[transition];
  return `UPDATE ${t.gateways} SET state = ${stateSql(tr.to[0])}, state_since = now()
    WHERE name = ANY($1::text[]) AND state IN ${statesSql(tr.from)} RETURNING name`;
}
