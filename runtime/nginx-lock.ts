/**
 * The stage-1 configuration lock: one PostgreSQL advisory lock per config
 * directory serializes every write to it (base configuration, route files,
 * certificate bundles) across processes, and makes reconcile()'s fenced
 * changes atomic with allocations. (soak/checker.ts takes the same key.)
 */
import type { Pool, PoolClient } from 'pg';
import { AllocatorError } from './errors';
import { inTransaction, TransactionConnectError } from './pg-transaction';

export function nginxLockKey(confDir: string): string {
  return `demiurge-nginx:${confDir}`;
}

/** A failure under the nginx lock that is not typed yet: no connection (nothing ran) is DATABASE_FAILED, anything else NGINX_FAILED. */
export function nginxLockFailure(err: unknown): AllocatorError {
  if (err instanceof TransactionConnectError) {
    return new AllocatorError('DATABASE_FAILED', `cannot take the nginx config lock: ${err.message}`, { notApplied: true }, err);
  }
  return new AllocatorError('NGINX_FAILED', `route update failed: ${(err as Error).message}`, {}, err);
}

/** Runs `fn` under the lock of `confDir`; failures are typed as nginxLockFailure says. */
export async function withNginxLock<T>(pool: Pool, confDir: string, fn: (client: PoolClient) => Promise<T>): Promise<T> {
  try {
    return await inTransaction(pool, fn, { lockKey: nginxLockKey(confDir) });
  } catch (err) {
    if (err instanceof AllocatorError) throw err;
    throw nginxLockFailure(err);
  }
}
