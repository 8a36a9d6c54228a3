/**
 * Waits on the pool's own clock (PostgreSQL's now()), so a test that needs
 * time to pass waits for exactly the state it needs instead of guessing a sleep.
 */
import type { Pool } from 'pg';
import { waitFor } from './wait-for';

/** Until no lease in `schema` is still running: every allocating/releasing row's lease_expires_at < now(). */
export async function waitLeasesExpired(pg: Pool, schema: string, timeoutMs = 10_000): Promise<void> {
  await waitFor(`every lease in ${schema} to expire (lease_expires_at < now())`, timeoutMs, async () => {
    const { rows } = await pg.query<{ live: number; transitional: number }>(
      `SELECT count(*) FILTER (WHERE lease_expires_at >= now())::int AS live, count(*)::int AS transitional FROM "${schema}".gateways WHERE state IN ('allocating', 'releasing')`,
    );
    return rows[0].transitional > 0 && rows[0].live === 0;
  });
}

/**
 * Until each named allocated gateway has been silent (no heartbeat, push or
 * allocation) for more than `silenceMs`, as reapStale measures it.
 */
export async function waitSilent(pg: Pool, schema: string, gateways: string[], silenceMs: number, timeoutMs = silenceMs + 10_000): Promise<void> {
  await waitFor(`${gateways.join(', ')} to be silent for ${silenceMs} ms in ${schema}`, timeoutMs, async () => {
    const { rows } = await pg.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM "${schema}".gateways WHERE name = ANY($1) AND state = 'allocated'
         AND coalesce(last_heartbeat_at, state_since) < now() - make_interval(secs => $2::double precision / 1000)`,
      [gateways, silenceMs],
    );
    return rows[0].n === gateways.length;
  });
}
