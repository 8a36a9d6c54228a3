/**
 * Tokens in PostgreSQL: the allocation token of an allocated gateway (hash in
 * its row: lookup, rotation), the per-gateway registration token hashes, and
 * the tokens of ended allocations kept to recognise a late second stop.
 */
import { GatewayStates, stateSql, type GatewayState } from './gateway-states';
import { COLUMNS, type DbRow, type GatewayRow, type PoolSql, toRow } from './pool-sql';

const ALLOCATED = stateSql(GatewayStates.allocated);

export class TokenStore {
  constructor(private readonly sql: PoolSql) {}

  /**
   * The allocated gateway holding this token. Presenting the token is the
   * gateway's sign of life (push, pull, config, heartbeat, stop all
   * authenticate here), so the lookup refreshes `last_heartbeat_at` in the same
   * statement: no extra round trip per call, and the reaper's silence re-check
   * (in the release statement) sees it.
   */
  async findByTokenHash(hash: Buffer): Promise<GatewayRow | undefined> {
    const rows = await this.sql.query<DbRow>(
      `UPDATE ${this.sql.tables.gateways} g SET last_heartbeat_at = now() WHERE g.token_hash = $1 AND g.state = ${ALLOCATED} RETURNING ${COLUMNS}`,
      [hash],
    );
    return rows[0] ? toRow(rows[0]) : undefined;
  }

  /** Rotates the allocation token of an allocated gateway (the old one stops working at once). */
  async rotateToken(orgId: string, tokenHash: Buffer, allocationId?: string): Promise<GatewayRow | undefined> {
    const rows = await this.sql.query<DbRow>(
      // The handshake (/gateway/config) that rotates the token is the gateway's first sign of life.
      `UPDATE ${this.sql.tables.gateways} g SET token_hash = $2, last_heartbeat_at = now() WHERE g.organization_id = $1 AND g.state = ${ALLOCATED}
         AND ($3::bigint IS NULL OR g.allocation_id = $3::bigint) RETURNING ${COLUMNS}`,
      [orgId, tokenHash, allocationId ?? null],
    );
    return rows[0] ? toRow(rows[0]) : undefined;
  }

  /** Stores each gateway's registration token hash; returns the names that are unknown. */
  async setRegistrationHashes(hashes: Array<{ name: string; hash: Buffer }>): Promise<string[]> {
    const rows = await this.sql.query<{ name: string }>(
      `UPDATE ${this.sql.tables.gateways} g SET registration_token_hash = v.hash
       FROM unnest($1::text[], $2::bytea[]) AS v(name, hash) WHERE g.name = v.name RETURNING g.name`,
      [hashes.map((h) => h.name), hashes.map((h) => h.hash)],
    );
    const known = new Set(rows.map((r) => r.name));
    return hashes.map((h) => h.name).filter((n) => !known.has(n));
  }

  async registrationHash(name: string): Promise<{ state: GatewayState; hash: Buffer | null } | undefined> {
    const rows = await this.sql.query<{ state: GatewayState; registration_token_hash: Buffer | null }>(
      `SELECT state, registration_token_hash FROM ${this.sql.tables.gateways} WHERE name = $1`,
      [name],
    );
    return rows[0] ? { state: rows[0].state, hash: rows[0].registration_token_hash } : undefined;
  }

  async findRetiredToken(hash: Buffer): Promise<{ gateway: string; organizationId: string; retiredAt: Date } | undefined> {
    const rows = await this.sql.query<{ gateway: string; organization_id: string; retired_at: Date }>(
      `SELECT gateway, organization_id, retired_at FROM ${this.sql.tables.retiredTokens} WHERE token_hash = $1`,
      [hash],
    );
    return rows[0] ? { gateway: rows[0].gateway, organizationId: rows[0].organization_id, retiredAt: rows[0].retired_at } : undefined;
  }

  async forgetRetiredTokens(olderThanMs: number): Promise<number> {
    const rows = await this.sql.query(
      `DELETE FROM ${this.sql.tables.retiredTokens} WHERE retired_at < now() - make_interval(secs => $1::double precision / 1000) RETURNING 1`,
      [olderThanMs],
    );
    return rows.length;
  }
}
