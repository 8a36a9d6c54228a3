/**
 * What every pool store shares: the schema's tables, the one query function
 * (each call is one round trip, counted in `roundTrips`; the bench reports
 * it), and the mapping of a `gateways` row to a GatewayRow.
 */
import type { Pool, QueryResultRow } from 'pg';
import type { GatewaySpec } from './inventory';
import type { GatewayState, PoolTables } from './gateway-states';
import { quoteSchema } from './migrate';

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

/** A `gateways` row as selected with COLUMNS. */
export interface DbRow extends QueryResultRow {
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

/** The select list of a DbRow (table alias `g`). */
export const COLUMNS = `g.name, g.host, g.http_port, g.vpn_port, g.state, g.organization_id, g.allocation_id::text AS allocation_id,
  g.state_since, g.lease_expires_at, g.last_heartbeat_at, g.last_error,
  (g.lease_expires_at IS NOT NULL AND g.lease_expires_at < now()) AS lease_expired`;

export function toRow(r: DbRow): GatewayRow {
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

/** The tables of one schema and the counted query function every pool store runs its statements with. */
export class PoolSql {
  readonly tables: PoolTables;
  roundTrips = 0;

  constructor(
    readonly pool: Pool,
    schema: string,
  ) {
    const s = quoteSchema(schema);
    this.tables = { gateways: `${s}.gateways`, allocationSeq: `${s}.allocation_seq`, retiredTokens: `${s}.retired_tokens` };
  }

  async query<R extends QueryResultRow>(sql: string, params: unknown[] = []): Promise<R[]> {
    this.roundTrips += 1;
    return (await this.pool.query<R>(sql, params)).rows;
  }
}
