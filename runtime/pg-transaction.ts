import type { Pool, PoolClient } from 'pg';

/** Thrown when no client could be checked out: nothing ran. */
export class TransactionConnectError extends Error {
  constructor(cause: unknown) {
    super(cause instanceof Error ? cause.message : String(cause), { cause });
    this.name = 'TransactionConnectError';
  }
}

/**
 * Runs `fn` between BEGIN and COMMIT on a checked-out client, optionally
 * under a transaction-scoped advisory lock on `lockKey` (waiting at most
 * `lockTimeoutMs` for any lock, if given). The one place that
 * handles a client whose server goes away while it is checked out (restart,
 * failover, pg_terminate_backend): pg emits 'error' on it, which without a
 * listener is an uncaught exception killing the process. Such a client, or
 * one whose ROLLBACK failed, is destroyed instead of returned to the pool.
 * Errors of `fn`, BEGIN or COMMIT propagate unchanged after a ROLLBACK.
 */
export async function inTransaction<T>(pool: Pool, fn: (client: PoolClient) => Promise<T>, opts: { lockKey?: string; lockTimeoutMs?: number } = {}): Promise<T> {
  let client: PoolClient;
  try {
    client = await pool.connect();
  } catch (err) {
    throw new TransactionConnectError(err);
  }
  let broken = false;
  const onError = (): void => {
    broken = true;
  };
  client.on('error', onError);
  try {
    await client.query('BEGIN');
    if (opts.lockTimeoutMs !== undefined) await client.query(`SET LOCAL lock_timeout = ${Math.max(1, Math.round(opts.lockTimeoutMs))}`);
    if (opts.lockKey !== undefined) await client.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [opts.lockKey]);
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {
      broken = true;
    });
    throw err;
  } finally {
    client.removeListener('error', onError);
    client.release(broken);
  }
}
