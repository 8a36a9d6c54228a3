import { Pool } from 'pg';
import { AllocatorError } from './errors';

/** How to reach PostgreSQL: a connection string the runtime makes a pool for, or the caller's own pool. */
export interface PgConnectionOptions {
  connectionString: string;
  max?: number;
}

/**
 * A caller's pool is recognised by its shape, never by `instanceof`: a host on
 * another pg 8.x gets its own copy of pg next to ours, its Pool is a
 * different class, and an instanceof test would silently swap it for a pool
 * of ours pointed wherever PG* variables or libpq defaults lead.
 */
export function isPgPool(value: unknown): value is Pool {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Record<string, unknown>;
  return typeof v.query === 'function' && typeof v.connect === 'function' && typeof v.end === 'function';
}

export function isConnectionOptions(value: unknown): value is PgConnectionOptions {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Record<string, unknown>;
  return typeof v.connectionString === 'string' && v.connectionString.length > 0 && (v.max === undefined || (typeof v.max === 'number' && Number.isInteger(v.max) && v.max > 0));
}

/**
 * The pool to use for `pg` options: the caller's pool as given (the caller
 * owns and ends it) or a new one of ours (we own it). Anything else is
 * INVALID_CONFIG before any connection is attempted.
 */
export function resolvePgPool(pg: unknown, defaultMax: number, what: string, ownPool: { statementTimeoutMs?: number } = {}): { pool: Pool; owned: boolean } {
  if (isPgPool(pg)) return { pool: pg, owned: false };
  if (isConnectionOptions(pg)) {
    const timeout = ownPool.statementTimeoutMs === undefined ? {} : { statement_timeout: ownPool.statementTimeoutMs };
    const pool = new Pool({ connectionString: pg.connectionString, max: pg.max ?? defaultMax, ...timeout });
    // An idle client's error (server restart) must not crash the host process.
    pool.on('error', () => undefined);
    return { pool, owned: true };
  }
  throw new AllocatorError(
    'INVALID_CONFIG',
    `${what}: pg must be { connectionString, max? } or a pg.Pool (an object with query, connect and end functions)`,
    { problems: ['pg must be connection options or a pg.Pool'] },
  );
}
