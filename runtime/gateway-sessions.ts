import type { Pool } from 'pg';
import { asAllocatorError } from './errors';
import { stillHoldsSql } from './gateway-states';
import { quoteSchema } from './migrate';
import { hashToken, isPlausibleToken, newToken } from './tokens';

export interface SessionKey {
  gateway: string;
  allocationId: string;
  organizationId: string;
}

export interface SessionState {
  handshakeSentAt: Date | null;
  handshakeExpired: boolean;
  consumedAt: Date | null;
  loadedAt: Date | null;
}

export type HandshakeOutcome =
  | { kind: 'ok'; session: SessionKey }
  /** Unknown, already used or expired: the same answer for all three, so a guesser learns nothing. */
  | { kind: 'invalid' }
  /** Valid, but the allocation it was issued for has ended since. */
  | { kind: 'ended'; session: SessionKey };

/**
 * The hand-over of an organization to its gateway, one row per allocation:
 * handshake issued → consumed by /gateway/config (single use) → gateway
 * reports the organization loaded (/gateway/ready with its gateway token).
 */
export class GatewaySessions {
  private readonly t: string;
  private readonly gateways: string;

  constructor(
    private readonly pool: Pool,
    schema: string,
  ) {
    this.t = `${quoteSchema(schema)}.gateway_sessions`;
    this.gateways = `${quoteSchema(schema)}.gateways`;
  }

  /** Issues a new handshake token for an allocation; any earlier one of the same allocation stops working. */
  async issueHandshake(key: SessionKey, ttlMs: number): Promise<string> {
    const token = newToken();
    // One statement: sessions of this gateway's ended allocations are useless, so they go as the new one is written.
    await this.q(
      `WITH ended AS (DELETE FROM ${this.t} WHERE gateway = $1 AND allocation_id <> $2::bigint)
       INSERT INTO ${this.t} AS s (gateway, allocation_id, organization_id, handshake_hash, handshake_expires, handshake_sent_at)
       VALUES ($1, $2::bigint, $3, $4, now() + make_interval(secs => $5::double precision / 1000), now())
       ON CONFLICT (gateway, allocation_id) DO UPDATE SET handshake_hash = EXCLUDED.handshake_hash,
         handshake_expires = EXCLUDED.handshake_expires, handshake_sent_at = now(), consumed_at = NULL, loaded_at = NULL`,
      [key.gateway, key.allocationId, key.organizationId, hashToken(token), ttlMs],
      'issuing handshake failed',
    );
    return token;
  }

  /** Withdraws an issued, unconsumed handshake (its delivery failed). */
  async cancelHandshake(key: SessionKey): Promise<void> {
    await this.q(
      `UPDATE ${this.t} SET handshake_hash = NULL, handshake_expires = now() WHERE gateway = $1 AND allocation_id = $2::bigint AND consumed_at IS NULL`,
      [key.gateway, key.allocationId],
      'cancelling handshake failed',
    );
  }

  /** Who a handshake token is for, without using it up (so the caller can prepare its answer first). */
  async peekHandshake(token: string): Promise<HandshakeOutcome> {
    if (!isPlausibleToken(token)) return { kind: 'invalid' };
    const rows = await this.q<Row>(
      `SELECT s.gateway, s.allocation_id::text AS allocation_id, s.organization_id,
         EXISTS (SELECT 1 FROM ${this.gateways} g WHERE g.name = s.gateway AND ${stillHoldsSql('g', 's.allocation_id')}) AS live
       FROM ${this.t} s WHERE s.handshake_hash = $1 AND s.consumed_at IS NULL AND s.handshake_expires > now()`,
      [hashToken(token)],
      'handshake lookup failed',
    );
    return outcome(rows[0]);
  }

  /** Uses a handshake token up, atomically: of two concurrent calls exactly one gets `ok`. */
  async consumeHandshake(token: string): Promise<HandshakeOutcome> {
    if (!isPlausibleToken(token)) return { kind: 'invalid' };
    const rows = await this.q<Row>(
      `UPDATE ${this.t} s SET consumed_at = now(), handshake_hash = NULL
       WHERE s.handshake_hash = $1 AND s.consumed_at IS NULL AND s.handshake_expires > now()
       RETURNING s.gateway, s.allocation_id::text AS allocation_id, s.organization_id,
         EXISTS (SELECT 1 FROM ${this.gateways} g WHERE g.name = s.gateway AND ${stillHoldsSql('g', 's.allocation_id')}) AS live`,
      [hashToken(token)],
      'handshake failed',
    );
    return outcome(rows[0]);
  }

  async markLoaded(key: Pick<SessionKey, 'gateway' | 'allocationId'>): Promise<boolean> {
    const rows = await this.q(
      `UPDATE ${this.t} SET loaded_at = coalesce(loaded_at, now()) WHERE gateway = $1 AND allocation_id = $2::bigint AND consumed_at IS NOT NULL RETURNING 1`,
      [key.gateway, key.allocationId],
      'marking loaded failed',
    );
    return rows.length === 1;
  }

  async state(key: Pick<SessionKey, 'gateway' | 'allocationId'>): Promise<SessionState | undefined> {
    const rows = await this.q<{ handshake_sent_at: Date | null; expired: boolean; consumed_at: Date | null; loaded_at: Date | null }>(
      `SELECT handshake_sent_at, (handshake_expires IS NULL OR handshake_expires <= now()) AS expired, consumed_at, loaded_at
       FROM ${this.t} WHERE gateway = $1 AND allocation_id = $2::bigint`,
      [key.gateway, key.allocationId],
      'session lookup failed',
    );
    const r = rows[0];
    return r ? { handshakeSentAt: r.handshake_sent_at, handshakeExpired: r.expired, consumedAt: r.consumed_at, loadedAt: r.loaded_at } : undefined;
  }

  private async q<R extends Record<string, unknown>>(sql: string, params: unknown[], what: string): Promise<R[]> {
    try {
      return (await this.pool.query<R>(sql, params)).rows;
    } catch (err) {
      throw asAllocatorError(err, 'DATABASE_FAILED', what);
    }
  }
}

interface Row extends Record<string, unknown> {
  gateway: string;
  allocation_id: string;
  organization_id: string;
  live: boolean;
}

function outcome(r: Row | undefined): HandshakeOutcome {
  if (!r) return { kind: 'invalid' };
  const session = { gateway: r.gateway, allocationId: r.allocation_id, organizationId: r.organization_id };
  return r.live ? { kind: 'ok', session } : { kind: 'ended', session };
}
