/**
 * The gateway inventory in PostgreSQL: registering the stack's list of
 * gateways (insert, endpoint updates, retiring with prune) and the
 * INVENTORY_CONFLICT that an endpoint taken by an unlisted gateway is. The
 * state changes it makes are statements of runtime/gateway-states.ts.
 */
import { AllocatorError } from './errors';
import { FREE_STATES, GatewayStates, REMOVABLE_STATES, retireSql, statesSql, updateEndpointSql } from './gateway-states';
import type { GatewaySpec } from './inventory';
import { isUniqueViolation } from './pool-batching';
import { COLUMNS, type DbRow, type GatewayRow, type PoolSql, toRow } from './pool-sql';
import { inTransaction } from './pg-transaction';

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

type Conflict = { declared: string; endpoint: string; holder: GatewayRow };

export class InventoryStore {
  constructor(private readonly sql: PoolSql) {}

  /**
   * Upserts the inventory in one transaction. Host/port changes apply to held
   * gateways too (reconcile() rewrites their routes). With `prune`, gateways
   * missing from the inventory are retired when free; held ones are reported.
   */
  async register(specs: GatewaySpec[], prune: boolean): Promise<RegisterResult> {
    this.sql.roundTrips += 1;
    try {
      return await this.registerOnce(specs, prune);
    } catch (err) {
      // A concurrent registration can still win the race for an endpoint between our check and COMMIT.
      if (isUniqueViolation(err, 'endpoint_unique')) {
        throw new AllocatorError('INVENTORY_CONFLICT', `gateway inventory conflicts with gateways registered concurrently (${(err as Error).message}); nothing was changed: list the pool (gateway-pool list) and register again`, {}, err);
      }
      throw err;
    }
  }

  private async registerOnce(specs: GatewaySpec[], prune: boolean): Promise<RegisterResult> {
    const t = this.sql.tables;
    return inTransaction(this.sql.pool, async (client) => {
      const before = new Map((await client.query<DbRow>(`SELECT ${COLUMNS} FROM ${t.gateways} g FOR UPDATE`)).rows.map((r) => [r.name, toRow(r)]));
      const result: RegisterResult = { added: [], updated: [], unchanged: [], retired: [], retireDeferred: [], removed: [] };
      // Checked before any write: endpoint_unique would otherwise fail the COMMIT (deferred) as a
      // "database failure", although it is a permanent conflict only the operator can settle.
      const removable = settleEndpointConflicts(specs, before, prune);
      for (const name of removable) {
        await client.query(`DELETE FROM ${t.gateways} WHERE name = $1 AND state IN ${statesSql(REMOVABLE_STATES)}`, [name]);
        result.removed.push(name);
      }
      for (const s of specs) {
        const old = before.get(s.name);
        if (!old) {
          await client.query(`INSERT INTO ${t.gateways} (name, host, http_port, vpn_port) VALUES ($1, $2, $3, $4)`, [s.name, s.host, s.httpPort, s.vpnPort]);
          result.added.push(s.name);
        } else if (old.host !== s.host || old.httpPort !== s.httpPort || old.vpnPort !== s.vpnPort || old.state === GatewayStates.retired) {
          await client.query(updateEndpointSql(t), [s.name, s.host, s.httpPort, s.vpnPort]);
          result.updated.push(s.name);
        } else {
          result.unchanged.push(s.name);
        }
      }
      if (!prune) return result;
      const wanted = new Set(specs.map((s) => s.name));
      for (const old of before.values()) {
        if (wanted.has(old.name) || old.state === GatewayStates.retired || removable.includes(old.name)) continue;
        if (FREE_STATES.includes(old.state)) {
          await client.query(retireSql(t), [old.name]);
          result.retired.push(old.name);
        } else {
          result.retireDeferred.push(old.name);
        }
      }
      return result;
    });
  }
}

/**
 * Gateways not in the inventory whose endpoint (host:httpPort) a declared one
 * takes. A retired one declares and holds nothing: it is removed. A free one
 * is removed too when pruning (the stack no longer declares it). Anything else
 * (held, or free without prune) is an `INVENTORY_CONFLICT`, thrown before
 * anything is written.
 */
function settleEndpointConflicts(specs: GatewaySpec[], before: Map<string, GatewayRow>, prune: boolean): string[] {
  const declared = new Set(specs.map((s) => s.name));
  const byEndpoint = new Map<string, GatewayRow>();
  for (const row of before.values()) if (!declared.has(row.name)) byEndpoint.set(`${row.host}:${row.httpPort}`, row);
  const removable: string[] = [];
  const conflicts: Conflict[] = [];
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

/** The `INVENTORY_CONFLICT` answer, naming every conflict and the fix. */
function inventoryConflict(conflicts: Conflict[], prune: boolean): AllocatorError {
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
