import { strict as assert } from 'assert';
import { Pool, type QueryResult } from 'pg';
import { DNS_TIMING, GatewayAllocator, isAllocatorError, type GatewayAllocatorOptions } from '../../runtime';
import { DNS_OWNER_ACCOUNT, DnsPublisher } from '../../runtime/dns-publisher';
import { PowerDnsClient } from '../../runtime/powerdns-client';
import { PowerDnsTables } from '../../runtime/powerdns-tables';
import { testAllocatorOptions } from '../helpers/allocator-settings';
import { createZone, deleteZone, dropSchema, gatewayHost, patchZone, randomOrg, startStandInGateways, zoneRRsets } from '../helpers/fixtures';
import { freePorts } from '../helpers/ports';
import { waitLeasesExpired } from '../helpers/pool-state';
import { PowerDnsInstance, imageCacheSettings } from '../helpers/powerdns-instance';
import { TestServices, requireServices } from '../helpers/services';
import { Stage1Nginx, dig } from '../helpers/stage1-nginx';
import { suiteNames } from '../helpers/suite-setup';
import { requireTool } from '../helpers/tools';
import { within } from '../helpers/wait-for';

/** PowerDNS's database pool whose batch statement can be made to "die" before or after it reaches PostgreSQL. */
class FreezingPool extends Pool {
  freeze: 'before-commit' | 'after-commit' | undefined;
  private reachedResolve: () => void = () => undefined;
  reached: Promise<void> = new Promise((r) => (this.reachedResolve = r));

  // Overloads of pg's query are many; this pool is only called as query(text, values) (runtime/powerdns-tables.ts).
  query(...args: unknown[]): never {
    const text = typeof args[0] === 'string' ? args[0] : '';
    const run = (): Promise<QueryResult> => (super.query as (...a: unknown[]) => Promise<QueryResult>).apply(this, args);
    if (!this.freeze || !text.startsWith('WITH zone AS')) return run() as never;
    const when = this.freeze;
    this.freeze = undefined;
    const hang = new Promise<never>(() => undefined);
    if (when === 'before-commit') {
      // The process dies after the guard, before its statement reaches PowerDNS's database: nothing is written.
      this.reachedResolve();
      return hang as never;
    }
    // The statement commits; the process dies before it hears the answer (no cache purge, no lock COMMIT, no answer).
    return run().then(() => {
      this.reachedResolve();
      return hang;
    }) as never;
  }
}

/**
 * Records written straight to PowerDNS's tables (powerdns.database), against a
 * PowerDNS with the image's cache settings (packet, query and negative caches
 * on, as deployed) on the test services' gpgsql database.
 */
describe('DNS records in PowerDNS tables (powerdns.database; PowerDNS caches as the image sets them)', function () {
  this.timeout(120_000);
  let s: TestServices;
  let pdns: PowerDnsInstance;
  let pdnsSql: Pool;
  let pgAdmin: Pool;
  let nginx: Stage1Nginx;
  let standIn: { port: number; close: () => Promise<void> };
  let domain: string;
  let schema: string;
  let env: string;
  const open: GatewayAllocator[] = [];
  const frozenPools: FreezingPool[] = [];
  let poolCounter = 0;

  before(async function () {
    s = requireServices(this);
    requireTool(this, 'dig', 'DNS answers over UDP');
    ({ domain, schema, env } = suiteNames('dtab'));
    pdns = new PowerDnsInstance(imageCacheSettings());
    await pdns.start();
    // Created through this instance's API, so its zone cache knows the zone at once.
    await createZone({ ...s, pdnsApiUrl: pdns.apiUrl, pdnsApiKey: pdns.apiKey }, domain);
    const [httpsPort, statusPort] = await freePorts(2);
    nginx = new Stage1Nginx(domain, httpsPort, statusPort);
    nginx.start();
    standIn = await startStandInGateways();
    pdnsSql = new Pool({ connectionString: s.pdnsDbUrl, max: 2 });
    pgAdmin = new Pool({ connectionString: s.pgUrl, max: 2 });
  });

  after(async () => {
    await Promise.allSettled(open.map((a) => Promise.race([a.close(), new Promise((r) => setTimeout(r, 2000))])));
    await Promise.allSettled(frozenPools.map((p) => Promise.race([p.end(), new Promise((r) => setTimeout(r, 2000))])));
    await standIn?.close();
    nginx?.destroy();
    if (s) await deleteZone({ ...s, pdnsApiUrl: pdns.apiUrl, pdnsApiKey: pdns.apiKey }, domain);
    await pdns?.stop();
    for (let i = 1; i <= poolCounter; i += 1) if (s) await dropSchema(s.pgUrl, `${schema}_${i}`);
    await pdnsSql?.end();
    await pgAdmin?.end();
  });

  const powerdns = (database: GatewayAllocatorOptions['powerdns']['database'] = { connectionString: s.pdnsDbUrl }): GatewayAllocatorOptions['powerdns'] => ({
    apiUrl: pdns.apiUrl,
    apiKey: pdns.apiKey,
    zone: domain,
    database,
  });

  /** A fresh pool of n ready gateways (own env and schema); `make` builds more allocators on it. */
  async function freshPool(n: number, extra: Partial<GatewayAllocatorOptions> = {}): Promise<{ allocator: GatewayAllocator; env: string; schema: string; make: (o?: Partial<GatewayAllocatorOptions>) => GatewayAllocator }> {
    poolCounter += 1;
    const p = { env: `${env}${poolCounter}`, domain, schema: `${schema}_${poolCounter}` };
    const make = (o: Partial<GatewayAllocatorOptions> = {}): GatewayAllocator => {
      const a = new GatewayAllocator({ ...testAllocatorOptions(s, nginx, p), powerdns: powerdns(), ...extra, ...o });
      open.push(a);
      return a;
    };
    const allocator = make();
    await allocator.migrate();
    const inventory = Array.from({ length: n }, (_, i) => ({ name: `gw-pool-${p.env}-${i}`, host: gatewayHost(i), httpPort: standIn.port, vpnPort: 49100 + i }));
    await allocator.registerGateways(inventory);
    await allocator.markReady(inventory.map((g) => g.name));
    return { allocator, env: p.env, schema: p.schema, make };
  }

  const names = (org: string): string[] => [`org-${org}.${domain}`, `uc-0123abcd.org-${org}.${domain}`];
  const digAll = (org: string): Promise<Array<string[] | 'NXDOMAIN'>> => Promise.all(names(org).map((n) => dig(pdns.dnsPort, n)));

  async function rows(org: string): Promise<Array<{ name: string; type: string; content: string; ttl: number; prio: number; auth: boolean; ordername: string | null; disabled: boolean }>> {
    return (
      await pdnsSql.query(
        `SELECT r.name, r.type, r.content, r.ttl, r.prio, r.auth, r.ordername, r.disabled FROM records r JOIN domains d ON d.id = r.domain_id WHERE d.name = $1 AND r.name LIKE $2 ORDER BY r.name, r.type`,
        [domain, `%org-${org}.${domain}`],
      )
    ).rows;
  }

  it('publish: NOERROR over UDP the moment allocate resolves, also for names PowerDNS had just cached as NXDOMAIN; rows as the API writes them', async () => {
    const { allocator, env: e } = await freshPool(2);
    // Control: the caches are on. A row added to the tables without a purge stays invisible behind the cached NXDOMAIN.
    const control = randomOrg();
    assert.deepEqual(await digAll(control), ['NXDOMAIN', 'NXDOMAIN']);
    await new PowerDnsTables(pdnsSql, domain).write([{ name: `org-${control}.${domain}.`, type: 'A', ttl: 3, changetype: 'REPLACE', records: [{ content: '127.0.0.1', disabled: false }] }]);
    assert.equal(await dig(pdns.dnsPort, `org-${control}.${domain}`), 'NXDOMAIN', 'PowerDNS answered from its negative cache (a purge is needed)');
    await new PowerDnsTables(pdnsSql, domain).write([{ name: `org-${control}.${domain}.`, type: 'A', changetype: 'DELETE' }]);

    const org = randomOrg();
    for (let i = 0; i < 2; i += 1) assert.deepEqual(await digAll(org), ['NXDOMAIN', 'NXDOMAIN'], 'asked before the allocation (twice: the second from the cache)');
    await allocator.allocate(org);
    assert.deepEqual(await digAll(org), [['127.0.0.1'], ['127.0.0.1']], 'answered at once after allocate resolved');
    const ttl = DNS_TIMING.orgRecordTtlSeconds;
    assert.deepEqual(await rows(org), [
      { name: `*.org-${org}.${domain}`, type: 'A', content: '127.0.0.1', ttl, prio: 0, auth: true, ordername: null, disabled: false },
      { name: `org-${org}.${domain}`, type: 'A', content: '127.0.0.1', ttl, prio: 0, auth: true, ordername: null, disabled: false },
    ]);
    // PowerDNS's API sees the same RRsets with the ownership comment.
    const api = (await zoneRRsets({ ...s, pdnsApiUrl: pdns.apiUrl, pdnsApiKey: pdns.apiKey }, domain)).filter((r) => r.name.includes(`org-${org}.`));
    assert.equal(api.length, 2);
    for (const r of api) assert.deepEqual(r.comments.map((c) => [c.account, c.content]), [[DNS_OWNER_ACCOUNT, `owner=${DNS_OWNER_ACCOUNT} env=${e} org=${org}`]]);
    const m = allocator.metrics();
    assert.equal(m.dnsPatches, 0, 'no PATCH');
    assert.ok(m.dnsTableWrites >= 1 && m.dnsCacheFlushes === m.dnsTableWrites, `one purge per table write (${JSON.stringify(m)})`);
    await allocator.release(org);
  });

  it('withdraw: NXDOMAIN the moment release resolves, though PowerDNS had just cached the answer', async () => {
    const { allocator } = await freshPool(1);
    const org = randomOrg();
    await allocator.allocate(org);
    for (let i = 0; i < 2; i += 1) assert.deepEqual(await digAll(org), [['127.0.0.1'], ['127.0.0.1']]);
    await allocator.release(org);
    assert.deepEqual(await digAll(org), ['NXDOMAIN', 'NXDOMAIN']);
    assert.deepEqual(await rows(org), []);
  });

  it("ownership: another type at the org's name and a foreign A record are never deleted; reconcile finds and removes owned orphans", async () => {
    const { allocator, env: e } = await freshPool(1);
    const api = { ...s, pdnsApiUrl: pdns.apiUrl, pdnsApiKey: pdns.apiKey };
    const org = randomOrg();
    const foreign = randomOrg();
    const orphan = randomOrg();
    await patchZone(api, domain, [
      { name: `org-${org}.${domain}.`, type: 'TXT', ttl: 60, changetype: 'REPLACE', records: [{ content: '"hand-written"', disabled: false }] },
      { name: `org-${foreign}.${domain}.`, type: 'A', ttl: 60, changetype: 'REPLACE', records: [{ content: '10.0.0.1', disabled: false }] },
      // Ours by its comment, but the organization holds no gateway: an orphan (a crash after a write, say).
      {
        name: `org-${orphan}.${domain}.`,
        type: 'A',
        ttl: 60,
        changetype: 'REPLACE',
        records: [{ content: '127.0.0.1', disabled: false }],
        comments: [{ content: `owner=${DNS_OWNER_ACCOUNT} env=${e} org=${orphan}`, account: DNS_OWNER_ACCOUNT }],
      },
    ]);
    try {
      await allocator.allocate(org);
      await allocator.release(org);
      assert.deepEqual((await rows(org)).map((r) => [r.name, r.type, r.content]), [[`org-${org}.${domain}`, 'TXT', '"hand-written"']], 'the TXT at the same name survives publish and withdraw');
      const report = await allocator.reconcile();
      assert.deepEqual(report.dnsOrphansRemoved, [orphan]);
      assert.deepEqual(report.errors, []);
      assert.equal(await dig(pdns.dnsPort, `org-${orphan}.${domain}`), 'NXDOMAIN');
      assert.deepEqual(await dig(pdns.dnsPort, `org-${foreign}.${domain}`), ['10.0.0.1'], 'a record without our comment is not ours');
      assert.equal((await rows(org)).length, 1, 'the TXT survives reconcile');
      assert.deepEqual((await allocator.reconcile()).dnsOrphansRemoved, [], 'idempotent');
    } finally {
      await patchZone(api, domain, [
        { name: `org-${org}.${domain}.`, type: 'TXT', changetype: 'DELETE' },
        { name: `org-${foreign}.${domain}.`, type: 'A', changetype: 'DELETE' },
      ]);
    }
  });

  it('a fence that no longer holds writes nothing; a guard that fails writes nothing and says so', async () => {
    const client = new PowerDnsClient({ apiUrl: pdns.apiUrl, apiKey: pdns.apiKey, zone: domain });
    const opts = { envName: 'dtabguard', domain, publicIp: '127.0.0.1', ttl: 3 };
    const org = randomOrg();
    const fenced = new DnsPublisher(client, pgAdmin, opts, async () => new Set<string>(), new PowerDnsTables(pdnsSql, domain));
    await fenced.publish(org, { kind: 'claim', allocationId: '00000000-0000-0000-0000-000000000000' });
    assert.deepEqual(await rows(org), []);
    assert.deepEqual(await digAll(org), ['NXDOMAIN', 'NXDOMAIN']);
    assert.equal(fenced.tableWrites, 0, 'not even an empty statement');
    const failing = new DnsPublisher(client, pgAdmin, opts, async () => Promise.reject(new Error('guard: connection lost')), new PowerDnsTables(pdnsSql, domain));
    await assert.rejects(failing.publish(org, { kind: 'claim', allocationId: '00000000-0000-0000-0000-000000000000' }), (err: unknown) => isAllocatorError(err, 'DATABASE_FAILED') && err.details?.notApplied === true);
    assert.deepEqual(await rows(org), []);
  });

  it("a statement PowerDNS's database cannot finish within powerdns.timeoutMs is cancelled: DNS_FAILED, nothing written, the gateway back in the pool", async () => {
    const { allocator, schema: sch } = await freshPool(1, { powerdns: { ...powerdns(), timeoutMs: 1000 } });
    const org = randomOrg();
    // Holding the zone's row FOR UPDATE blocks the foreign-key check of every insert into its records.
    const blocker = await pdnsSql.connect();
    try {
      await blocker.query('BEGIN');
      await blocker.query('SELECT id FROM domains WHERE name = $1 FOR UPDATE', [domain]);
      const t0 = Date.now();
      await assert.rejects(allocator.allocate(org), (e: unknown) => isAllocatorError(e, 'DNS_FAILED') && /statement timeout/.test(e.message));
      assert.ok(Date.now() - t0 < 10_000, 'cancelled after the timeout, not left waiting');
    } finally {
      await blocker.query('ROLLBACK');
      blocker.release();
    }
    assert.deepEqual(await rows(org), []);
    assert.deepEqual(await digAll(org), ['NXDOMAIN', 'NXDOMAIN']);
    assert.deepEqual((await pgAdmin.query(`SELECT state, organization_id FROM "${sch}".gateways`)).rows, [{ state: 'ready', organization_id: null }]);
  });

  for (const when of ['before-commit', 'after-commit'] as const) {
    it(`a crash between the guard and PowerDNS's commit (${when}) is recovered by reconcile(): gateway back in the pool, no record left, NXDOMAIN at once`, async () => {
      const frozen = new FreezingPool({ connectionString: s.pdnsDbUrl, max: 2 });
      frozen.on('error', () => undefined);
      frozenPools.push(frozen);
      const appName = `dtab-crash-${randomOrg().slice(0, 8)}`;
      const { make, schema: sch } = await freshPool(1, { leaseMs: 500 });
      const dying = make({ pg: { connectionString: `${s.pgUrl}${s.pgUrl.includes('?') ? '&' : '?'}application_name=${appName}` }, powerdns: powerdns(frozen) });
      const org = randomOrg();
      assert.deepEqual(await digAll(org), ['NXDOMAIN', 'NXDOMAIN'], 'cached as NXDOMAIN before');
      frozen.freeze = when;
      void dying.allocate(org).catch(() => undefined);
      await within(`the allocation's DNS statement (${when})`, 10_000, frozen.reached);
      // The process is gone: its connections close, PostgreSQL releases its zone lock.
      await pgAdmin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [appName]);
      assert.deepEqual((await rows(org)).length, when === 'after-commit' ? 2 : 0, when === 'after-commit' ? 'the statement committed' : 'nothing written');

      const survivor = make();
      await waitLeasesExpired(pgAdmin, sch);
      const report = await survivor.reconcile();
      assert.deepEqual(report.recovered.map((r) => [r.organizationId, r.was]), [[org, 'allocating']]);
      assert.deepEqual(report.errors, []);
      assert.deepEqual(await rows(org), [], 'no record of the interrupted allocation is left');
      assert.deepEqual(await digAll(org), ['NXDOMAIN', 'NXDOMAIN']);
      const states = (await pgAdmin.query(`SELECT state, organization_id FROM "${sch}".gateways`)).rows;
      assert.deepEqual(states, [{ state: 'ready', organization_id: null }]);
      // And the gateway serves the next organization, published at once.
      const next = randomOrg();
      await survivor.allocate(next);
      assert.deepEqual(await digAll(next), [['127.0.0.1'], ['127.0.0.1']]);
      await survivor.release(next);
      // The dead allocator is never closed (it would wait for its frozen batch).
      open.splice(open.indexOf(dying), 1);
    });
  }
});
