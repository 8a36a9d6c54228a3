/**
 * Regression tests for the two runtime bugs the soak (soak/, issue #9) found,
 * reproduced deterministically against the shared test PostgreSQL:
 * - a checked-out pg client whose session is terminated emitted an unhandled
 *   'error' and killed the whole process;
 * - OrgDataStore ordered versions by their text alias, so from version 10 on
 *   a pull returned version 9 and the next push collided with version 10.
 */
import { strict as assert } from 'assert';
import { Pool, PoolClient } from 'pg';
import { AllocatorError, isAllocatorError } from '../../runtime';
import { DnsPublisher } from '../../runtime/dns-publisher';
import { migrate } from '../../runtime/migrate';
import { OrgDataStore } from '../../runtime/org-data-store';
import { PowerDnsClient } from '../../runtime/powerdns-client';
import { dropSchema, randomOrg, suiteId } from '../helpers/fixtures';
import { TestServices, requireServices } from '../helpers/services';
import { drainEventLoop, waitFor, within } from '../helpers/wait-for';

describe('soak regressions (real PostgreSQL)', function () {
  this.timeout(60_000);
  let s: TestServices;
  let schema: string;
  let pool: Pool;
  let other: Pool;
  // Only sessions of this suite are ever terminated: other suites share this PostgreSQL.
  const appName = `soak-regressions-${suiteId()}`;
  /** Every client this suite's pool opened (its processID is the server session's pid). */
  const clients: Array<PoolClient & { processID: number | null }> = [];

  before(async function () {
    s = requireServices(this);
    schema = `soakreg_${suiteId()}`;
    pool = new Pool({ connectionString: s.pgUrl, max: 4, application_name: appName });
    pool.on('error', () => undefined);
    pool.on('connect', (c) => clients.push(c as PoolClient & { processID: number | null }));
    other = new Pool({ connectionString: s.pgUrl, max: 2 });
    await migrate(pool, schema);
  });

  after(async () => {
    await pool?.end();
    await other?.end();
    if (s) await dropSchema(s.pgUrl, schema);
  });

  /**
   * Terminates the session of this suite's pool that waits on a lock (the one
   * `fn` started), once it is waiting. Resolves with the moment that session's
   * client has ended: pg emits a checked-out client's 'error' (the process
   * killer of the bug) just before its 'end', so once it has ended, an
   * uncaught exception would already have been raised.
   */
  async function terminateWaiter(marker: string): Promise<{ ended: Promise<void> }> {
    const { value: pid } = await waitFor(`a session of ${appName} waiting on a lock in "${marker}"`, 10_000, async () => {
      const r = await other.query<{ pid: number }>(
        `SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1 AND application_name = $2 AND pid <> pg_backend_pid()`,
        [`%${marker}%`, appName],
      );
      return r.rows[0]?.pid;
    });
    const client = clients.find((c) => c.processID === pid);
    assert.ok(client, `the waiting session ${pid} belongs to this suite's pool`);
    const ended = within(`the client of the terminated session ${pid} to end`, 10_000, new Promise<void>((r) => client.once('end', () => r()))).then(drainEventLoop);
    ended.catch(() => undefined); // awaited by the caller; not unhandled if an assertion fails first
    await other.query('SELECT pg_terminate_backend($1)', [pid]);
    return { ended };
  }

  async function holdingLock(sql: string, params: unknown[], during: () => Promise<void>): Promise<void> {
    const c: PoolClient = await other.connect();
    try {
      await c.query('BEGIN');
      await c.query(sql, params);
      await during();
    } finally {
      await c.query('ROLLBACK').catch(() => undefined);
      c.release();
    }
  }

  it('a DNS batch whose lock session is terminated fails typed (DATABASE_FAILED) instead of crashing the process', async () => {
    const zone = `reg-${suiteId()}.test`;
    // The PATCH is never reached: the session dies while waiting for the zone lock.
    const dns = new DnsPublisher(new PowerDnsClient({ apiUrl: 'http://127.0.0.1:1', apiKey: 'x', zone }), pool, { envName: 'reg', domain: zone, publicIp: '127.0.0.1', ttl: 60 }, async () => new Set<string>());
    const crashes: unknown[] = [];
    const onCrash = (err: unknown): void => {
      crashes.push(err);
    };
    process.on('uncaughtException', onCrash);
    try {
      await holdingLock('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [`demiurge-dns-zone:${zone}.`], async () => {
        const applying = dns.apply([{ orgId: randomOrg(), present: true }]);
        applying.catch(() => undefined); // asserted below; it may fail before assert.rejects attaches
        const { ended } = await terminateWaiter('pg_advisory_xact_lock');
        await assert.rejects(applying, (e: unknown) => isAllocatorError(e, 'DATABASE_FAILED') && (e as AllocatorError).details?.notApplied === true);
        await ended;
      });
      assert.deepEqual(crashes, [], 'no uncaught exception');
    } finally {
      process.removeListener('uncaughtException', onCrash);
    }
  });

  it('a push whose session is terminated fails typed instead of crashing the process', async () => {
    const store = new OrgDataStore({ pg: pool, schema });
    const org = randomOrg();
    const gw = `gw-reg-${suiteId()}`;
    await pool.query(
      `INSERT INTO "${schema}".gateways (name, host, http_port, vpn_port, state, organization_id, allocation_id) VALUES ($1, '127.0.0.1', 1, 2, 'allocated', $2, 1)`,
      [gw, org],
    );
    const crashes: unknown[] = [];
    const onCrash = (err: unknown): void => {
      crashes.push(err);
    };
    process.on('uncaughtException', onCrash);
    try {
      // The push locks the holder's row FOR UPDATE: it waits behind ours, and dies there.
      await holdingLock(`SELECT 1 FROM "${schema}".gateways WHERE name = $1 FOR UPDATE`, [gw], async () => {
        const pushing = store.push(org, { yjs_state: {}, gateway_state: { n: 1 } }, { gateway: gw });
        const { ended } = await terminateWaiter('FOR UPDATE');
        await assert.rejects(pushing, (e: unknown) => isAllocatorError(e, 'DATABASE_FAILED'));
        await ended;
      });
      assert.deepEqual(crashes, [], 'no uncaught exception');
    } finally {
      process.removeListener('uncaughtException', onCrash);
    }
  });

  it('versions order numerically: the 12th push is version 12 and is what a pull returns', async () => {
    const store = new OrgDataStore({ pg: pool, schema, keep: 3 });
    const org = randomOrg();
    const gw = `gw-reg-${suiteId()}`;
    await pool.query(
      `INSERT INTO "${schema}".gateways (name, host, http_port, vpn_port, state, organization_id, allocation_id) VALUES ($1, '127.0.0.2', 1, 2, 'allocated', $2, 2)`,
      [gw, org],
    );
    for (let n = 1; n <= 12; n++) {
      const r = await store.push(org, { yjs_state: {}, gateway_state: { n } }, { gateway: gw });
      assert.equal(r.version, n);
    }
    const pulled = await store.pull(org);
    assert.equal(pulled.version, 12);
    assert.deepEqual(pulled.data?.gateway_state, { n: 12 });
    assert.deepEqual((await store.history(org)).map((h) => h.version), [12, 11, 10, 9]);
  });
});
