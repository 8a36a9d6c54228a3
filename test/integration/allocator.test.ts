import { strict as assert } from 'assert';
import { spawnSync } from 'child_process';
import { existsSync, readdirSync, statSync, writeFileSync, rmSync } from 'fs';
import * as https from 'https';
import * as net from 'net';
import { hostname } from 'os';
import * as path from 'path';
import { readFileSync } from 'fs';
import { Pool } from 'pg';
import { AllocatorError, DNS_TIMING, GatewayAllocator, GatewayAllocatorOptions, isAllocatorError } from '../../runtime';
import { SimulatedCrash, withFailpoints } from '../../runtime/testing';
import { gatewayHost, patchZone, randomOrg, startStandInGateways, suiteId, zoneRRsets } from '../helpers/fixtures';
import { TestServices, requireServices } from '../helpers/services';
import { Stage1Nginx, curlThroughStage1, dig } from '../helpers/stage1-nginx';
import { testAllocatorOptions } from '../helpers/allocator-settings';
import { waitLeasesExpired } from '../helpers/pool-state';
import { zoneWithStage1, removeZoneAndSchemas } from '../helpers/suite-setup';
import { freePorts } from '../helpers/ports';
import { SPARE_STEM } from '../../runtime/owned-files';

describe('GatewayAllocator (real PostgreSQL, PowerDNS, nginx)', function () {
  this.timeout(180_000);
  let s: TestServices;
  let nginx: Stage1Nginx;
  let standIn: { port: number; close: () => Promise<void> };
  let domain: string;
  let pgAdmin: Pool;
  const schemas: string[] = [];
  const open: GatewayAllocator[] = [];
  let envCounter = 0;

  before(async function () {
    s = requireServices(this);
    domain = `it-${suiteId()}.test`;
    nginx = await zoneWithStage1(s, domain);
    standIn = await startStandInGateways();
    pgAdmin = new Pool({ connectionString: s.pgUrl, max: 2 });
  });

  after(async () => {
    await Promise.allSettled(open.map((a) => a.close()));
    await standIn?.close();
    nginx?.destroy();
    await removeZoneAndSchemas(s, domain, schemas);
    await pgAdmin?.end();
  });

  /** A fresh pool (own schema and env name, so suites never see each other's state) of n ready gateways. */
  async function freshPool(n: number, extra: Partial<GatewayAllocatorOptions> = {}): Promise<{ allocator: GatewayAllocator; schema: string; env: string; make: (o?: Partial<GatewayAllocatorOptions>) => GatewayAllocator }> {
    envCounter += 1;
    const env = `it${envCounter}`;
    const schema = `it_${suiteId()}`;
    schemas.push(schema);
    const make = (o: Partial<GatewayAllocatorOptions> = {}): GatewayAllocator => {
      const a = new GatewayAllocator({ ...testAllocatorOptions(s, nginx, { env, domain, schema }), ...extra, ...o });
      open.push(a);
      return a;
    };
    const allocator = make();
    await allocator.migrate();
    const inventory = Array.from({ length: n }, (_, i) => ({ name: `gw-pool-${env}-${i}`, host: gatewayHost(i), httpPort: standIn.port, vpnPort: 49100 + i }));
    await allocator.registerGateways(inventory);
    await allocator.markReady(inventory.map((g) => g.name));
    return { allocator, schema, env, make };
  }

  async function sqlState(schema: string): Promise<Array<{ name: string; state: string; organization_id: string | null }>> {
    return (await pgAdmin.query(`SELECT name, state, organization_id FROM "${schema}".gateways ORDER BY name`)).rows;
  }

  /** Route files in stage-1 nginx (none before any allocator has created the directory); retired files kept for reuse (runtime/spare-files.ts) are not routes. */
  function routeFiles(): string[] {
    const dir = path.join(nginx.confDir, 'routes');
    return existsSync(dir) ? readdirSync(dir).filter((n) => !n.startsWith(`${SPARE_STEM}.tmp-`)) : [];
  }

  async function ownedOrgsInDns(env: string): Promise<Set<string>> {
    const rr = await zoneRRsets(s, domain);
    return new Set(rr.filter((r) => r.comments.some((c) => c.content.includes(`env=${env} `))).map((r) => /org-([0-9a-f-]{36})/.exec(r.name)?.[1] as string));
  }

  /** Node HTTPS request through stage-1 nginx, pinned to the suite CA; used right after allocate resolves. */
  function httpsGet(hostname: string, hostHeader = hostname, urlPath = '/healthz'): Promise<{ status: number; body: string }> {
    return new Promise((resolve, reject) => {
      const req = https.get(
        { host: '127.0.0.1', port: nginx.httpsPort, servername: hostname, headers: { host: hostHeader }, path: urlPath, ca: readFileSync(nginx.caFile), agent: false },
        (res) => {
          let body = '';
          res.on('data', (c) => (body += c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        },
      );
      req.on('error', reject);
    });
  }

  describe('migrations', () => {
    it('are idempotent and safe from several processes at once', async () => {
      const { allocator, make } = await freshPool(1);
      const others = [make(), make(), make(), make()];
      const results = await Promise.all([allocator, ...others].map((a) => a.migrate()));
      results.forEach((r) => assert.deepEqual(r.applied, []));
      assert.ok(results[0].alreadyApplied.includes('001_gateway_pool'));
    });
  });

  describe('allocate and release, checked through dig, curl and SQL', () => {
    it('publishes both names, routes HTTPS to the gateway the moment allocate resolves, and undoes it all on release', async () => {
      const { allocator, schema } = await freshPool(2);
      const org = randomOrg();
      const gw = await allocator.allocate(org);
      // The request is made the moment allocate resolves: the route must already be live.
      const first = await httpsGet(`org-${org}.${domain}`);
      assert.equal(first.status, 200, first.body);
      assert.equal(JSON.parse(first.body).gatewayAddress, gw.host);
      assert.equal(gw.fqdn, `org-${org}.${domain}`);
      assert.match(gw.token ?? '', /^[A-Za-z0-9_-]{43}$/);
      assert.equal(gw.created, true);

      assert.deepEqual(await dig(s.pdnsDnsPort, `org-${org}.${domain}`), ['127.0.0.1']);
      assert.deepEqual(await dig(s.pdnsDnsPort, `uc-abc.org-${org}.${domain}`), ['127.0.0.1']);
      // uc-<id>.org-<id> routing (TLS for such two-label names is the per-organization certificate's job).
      const viaCurl = await httpsGet(`org-${org}.${domain}`, `uc-abc.org-${org}.${domain}`, '/some/path');
      assert.equal(viaCurl.status, 200);
      const seen = JSON.parse(viaCurl.body);
      assert.equal(seen.gatewayAddress, gw.host);
      assert.equal(seen.host, `uc-abc.org-${org}.${domain}`);
      assert.equal(seen.forwardedProto, 'https');
      assert.deepEqual((await sqlState(schema)).find((r) => r.name === gw.name), { name: gw.name, state: 'allocated', organization_id: org });

      const verified = await allocator.verifyToken(gw.token as string);
      assert.deepEqual(verified, { gateway: gw.name, organizationId: org, allocationId: gw.allocationId });

      await allocator.release(org);
      assert.equal(await dig(s.pdnsDnsPort, `org-${org}.${domain}`), 'NXDOMAIN');
      assert.equal(await dig(s.pdnsDnsPort, `uc-abc.org-${org}.${domain}`), 'NXDOMAIN');
      const after = await curlThroughStage1(nginx, `org-${org}.${domain}`);
      assert.equal(after.status, 404);
      assert.match(after.body, /no gateway is allocated/);
      assert.equal(await allocator.verifyToken(gw.token as string), undefined);
      assert.ok(!routeFiles().includes(`org-${org}.conf`));
      assert.deepEqual((await sqlState(schema)).find((r) => r.name === gw.name), { name: gw.name, state: 'ready', organization_id: null });
      await assert.rejects(allocator.release(org), (e: unknown) => isAllocatorError(e, 'NOT_ALLOCATED'));
    });

    it("a release keeps its route file's inode and the next allocation reuses it (routed at once); close() leaves no spare", async () => {
      const { allocator } = await freshPool(2);
      const routesDir = path.join(nginx.confDir, 'routes');
      const spares = (): string[] => readdirSync(routesDir).filter((n) => n.startsWith(`${SPARE_STEM}.tmp-`));
      const [first, second] = [randomOrg(), randomOrg()];
      await allocator.allocate(first);
      const inode = statSync(path.join(routesDir, `org-${first}.conf`)).ino;
      const before = new Set(spares());
      await allocator.release(first);
      const kept = spares().filter((n) => !before.has(n));
      assert.equal(kept.length, 1, 'the released file is kept as a spare');
      const gw = await allocator.allocate(second);
      assert.equal(statSync(path.join(routesDir, `org-${second}.conf`)).ino, inode, 'the next route file is the same inode');
      assert.ok(!spares().includes(kept[0]), 'the spare was taken');
      const res = await httpsGet(`org-${second}.${domain}`);
      assert.equal(res.status, 200, res.body);
      assert.equal(JSON.parse(res.body).gatewayAddress, gw.host);
      assert.equal((await curlThroughStage1(nginx, `org-${first}.${domain}`)).status, 404);
      await allocator.release(second);
      const last = spares().filter((n) => !before.has(n));
      assert.equal(last.length, 1);
      await allocator.close();
      assert.ok(!spares().includes(last[0]), 'close() unlinked its spare');
    });

    it('is idempotent per organization: twice, and 50 times concurrently from two processes, one gateway', async () => {
      const { allocator, make, schema } = await freshPool(5);
      const second = make();
      const org = randomOrg();
      const calls = Array.from({ length: 50 }, (_, i) => (i % 2 ? allocator : second).allocate(org));
      const results = await Promise.all(calls);
      assert.equal(new Set(results.map((r) => r.name)).size, 1);
      assert.equal(results.filter((r) => r.created).length, 1, 'exactly one call creates the allocation');
      assert.equal(results.filter((r) => r.token).length, 1, 'only the creating call sees the token');
      const again = await allocator.allocate(org);
      assert.equal(again.name, results[0].name);
      assert.equal(again.created, false);
      assert.equal((await sqlState(schema)).filter((r) => r.state === 'allocated').length, 1);
      await allocator.release(org);
    });

    it('300 organizations at once on a pool of 200 (three processes): 200 distinct gateways, 100 POOL_EXHAUSTED, no trace of the failures', async () => {
      const { allocator, make, schema, env } = await freshPool(200);
      // Set-up: the base configuration is live (whichever test ran before), so every reload counted below is a route's.
      await allocator.reconcile();
      const procs = [allocator, make(), make()];
      const setUp = allocator.metrics();
      const orgs = Array.from({ length: 300 }, () => randomOrg());
      const notLive: string[] = [];
      const outcomes = await Promise.allSettled(
        orgs.map(async (org, i) => {
          const gw = await procs[i % 3].allocate(org);
          const res = await httpsGet(`org-${org}.${domain}`);
          if (res.status !== 200 || JSON.parse(res.body).gatewayAddress !== gw.host) notLive.push(org);
          return gw;
        }),
      );
      const ok = outcomes.filter((o): o is PromiseFulfilledResult<Awaited<ReturnType<GatewayAllocator['allocate']>>> => o.status === 'fulfilled').map((o) => o.value);
      const failed = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected');
      assert.equal(ok.length, 200);
      assert.equal(new Set(ok.map((g) => g.name)).size, 200);
      assert.equal(failed.length, 100);
      failed.forEach((f) => assert.ok(isAllocatorError(f.reason, 'POOL_EXHAUSTED'), String(f.reason)));
      assert.deepEqual(notLive, [], 'every allocation answered only once its route was live');

      const allocatedOrgs = new Set(ok.map((g) => g.organizationId));
      const failedOrgs = orgs.filter((o) => !allocatedOrgs.has(o));
      const dnsOrgs = await ownedOrgsInDns(env);
      const files = new Set(routeFiles());
      for (const o of failedOrgs) {
        assert.ok(!dnsOrgs.has(o), `no DNS for failed org ${o}`);
        assert.ok(!files.has(`org-${o}.conf`), `no route for failed org ${o}`);
      }
      assert.equal(dnsOrgs.size, 200);
      const rows = await sqlState(schema);
      assert.equal(rows.filter((r) => r.state === 'allocated').length, 200);
      const m = procs.map((p) => p.metrics());
      const reloads = m.reduce((a, b) => a + b.nginxReloads, 0) - setUp.nginxReloads;
      const patches = m.reduce((a, b) => a + b.dnsPatches, 0) - setUp.dnsPatches;
      console.log(`      300 concurrent allocations: ${reloads} nginx reloads, ${patches} PowerDNS PATCHes`);
      assert.equal(reloads, 0, `routes need no reload (${reloads})`);
      assert.ok(patches < 60, `PowerDNS writes are batched (${patches})`);

      await Promise.all(ok.map((g, i) => procs[i % 3].release(g.organizationId)));
      assert.equal((await ownedOrgsInDns(env)).size, 0);
      assert.equal((await sqlState(schema)).filter((r) => r.state === 'ready').length, 200);
    });
  });

  describe('input validation, before any side effect', () => {
    const bad: Array<[string, unknown]> = [
      ['uppercase', 'A3BB189E-8BF9-3888-9912-ACE4E6543002'],
      ['braces', '{a3bb189e-8bf9-3888-9912-ace4e6543002}'],
      ['path', '../../etc/passwd'],
      ['shell', 'a3bb189e-8bf9-3888-9912-ace4e654300$(reboot)'],
      ['nginx metacharacters', 'a3bb189e-8bf9-3888-9912-ace4e654300;}'],
      ['trailing newline', 'a3bb189e-8bf9-3888-9912-ace4e6543002\n'],
      ['empty', ''],
      ['10 kB', 'a'.repeat(10_240)],
      ['no hyphens', 'a3bb189e8bf938889912ace4e6543002'],
      ['number', 42],
      ['null', null],
      ['object', { id: 'a3bb189e-8bf9-3888-9912-ace4e6543002' }],
    ];
    it('rejects every bad organization id class with INVALID_ORGANIZATION_ID and leaves no trace', async () => {
      const { allocator, schema, env } = await freshPool(2);
      const before = { rows: await sqlState(schema), files: routeFiles().sort(), dns: await ownedOrgsInDns(env) };
      for (const [label, value] of bad) {
        await assert.rejects(allocator.allocate(value as string), (e: unknown) => isAllocatorError(e, 'INVALID_ORGANIZATION_ID'), label);
        await assert.rejects(allocator.release(value as string), (e: unknown) => isAllocatorError(e, 'INVALID_ORGANIZATION_ID'), label);
      }
      assert.deepEqual(await sqlState(schema), before.rows);
      assert.deepEqual(routeFiles().sort(), before.files);
      assert.deepEqual(await ownedOrgsInDns(env), before.dns);
    });

    it('rejects a bad gateway inventory as a whole with INVALID_GATEWAY', async () => {
      const { allocator, schema } = await freshPool(1);
      const before = await sqlState(schema);
      const cases: unknown[] = [
        [{ name: 'GW', host: '127.0.0.1', httpPort: 1, vpnPort: 2 }],
        [{ name: 'gw-a', host: '127.0.0.1;', httpPort: 1, vpnPort: 2 }],
        [{ name: 'gw-a', host: 'http://x', httpPort: 1, vpnPort: 2 }],
        [{ name: 'gw-a', host: '127.0.0.1', httpPort: 70000, vpnPort: 2 }],
        [{ name: 'gw-a', host: '127.0.0.1', httpPort: 1.5, vpnPort: 2 }],
        [{ name: 'gw-a', host: '127.0.0.1', httpPort: 1, vpnPort: 2 }, { name: 'gw-a', host: '127.0.0.2', httpPort: 1, vpnPort: 2 }],
        [{ name: 'gw-a', host: '127.0.0.1', httpPort: 1, vpnPort: 2, extra: true }],
        'not an array',
      ];
      for (const c of cases) {
        await assert.rejects(allocator.registerGateways(c as never), (e: unknown) => isAllocatorError(e, 'INVALID_GATEWAY'), JSON.stringify(c));
      }
      assert.deepEqual(await sqlState(schema), before);
      await assert.rejects(allocator.markReady('gw-nope'), (e: unknown) => isAllocatorError(e, 'UNKNOWN_GATEWAY'));
    });

    it('an inventory whose names changed but whose endpoints did not: INVENTORY_CONFLICT (not retryable, names the gateways and the fix), nothing written; prune settles it once they are free', async () => {
      const { allocator, schema, env } = await freshPool(2);
      const org = randomOrg();
      const held = await allocator.allocate(org);
      const before = await sqlState(schema);
      const renamed = [0, 1].map((i) => ({ name: `gw-pool-${env}-renamed-${i}`, host: gatewayHost(i), httpPort: standIn.port, vpnPort: 49100 + i }));
      const conflict = (prune: boolean) => (e: unknown): boolean => {
        assert.ok(isAllocatorError(e, 'INVENTORY_CONFLICT'), String(e));
        assert.equal(e.retryable, false);
        // Without prune both old gateways are in the way; with prune only the held one (the free one would go).
        for (const i of prune ? [Number(held.name.slice(-1))] : [0, 1]) {
          assert.ok(e.message.includes(`gw-pool-${env}-renamed-${i} declares`) && e.message.includes(`registered to gw-pool-${env}-${i} `), e.message);
        }
        assert.match(e.message, prune ? /release the organization/ : /prune/);
        assert.match(e.message, /Nothing was changed/);
        return true;
      };
      await assert.rejects(allocator.registerGateways(renamed), conflict(false));
      assert.deepEqual(await sqlState(schema), before, 'nothing half-done');
      // Pruning would remove the free one, but one is held: still a conflict, and still nothing written.
      await assert.rejects(allocator.registerGateways(renamed, { prune: true }), (e: unknown) => {
        conflict(true)(e);
        const details = (e as AllocatorError).details as { conflicts: Array<{ registeredTo: string; state: string; organizationId: string | null }> };
        assert.deepEqual(details.conflicts.find((c) => c.registeredTo === held.name)?.organizationId, org);
        return true;
      });
      assert.deepEqual(await sqlState(schema), before);
      await allocator.release(org);
      const settled = await allocator.registerGateways(renamed, { prune: true });
      assert.deepEqual(settled.removed.sort(), [`gw-pool-${env}-0`, `gw-pool-${env}-1`]);
      assert.deepEqual(settled.added.sort(), renamed.map((g) => g.name));
      assert.deepEqual((await sqlState(schema)).map((r) => [r.name, r.state]), renamed.map((g) => [g.name, 'registered']));
      // A retired gateway declares nothing: an inventory taking its endpoint removes it, prune or not.
      await allocator.registerGateways(renamed.slice(0, 1), { prune: true });
      assert.deepEqual((await sqlState(schema)).map((r) => r.state), ['registered', 'retired']);
      const back = await allocator.registerGateways([renamed[0], { ...renamed[1], name: `gw-pool-${env}-again-1` }]);
      assert.deepEqual(back.removed, [renamed[1].name]);
      assert.deepEqual((await sqlState(schema)).map((r) => r.name), [`gw-pool-${env}-again-1`, renamed[0].name]);
    });
  });

  describe('failures of PowerDNS and nginx', () => {
    it('PowerDNS down: allocate fails with DNS_FAILED, the pool and nginx are unchanged', async () => {
      const { make, schema } = await freshPool(2);
      const broken = make({ powerdns: { apiUrl: 'http://127.0.0.1:1', apiKey: s.pdnsApiKey, zone: domain, timeoutMs: 1000 } });
      const before = { rows: await sqlState(schema), files: routeFiles().sort() };
      const org = randomOrg();
      await assert.rejects(broken.allocate(org), (e: unknown) => isAllocatorError(e, 'DNS_FAILED'));
      assert.deepEqual(await sqlState(schema), before.rows);
      assert.deepEqual(routeFiles().sort(), before.files);
      const wrongKey = make({ powerdns: { apiUrl: s.pdnsApiUrl, apiKey: 'wrong', zone: domain } });
      await assert.rejects(wrongKey.allocate(org), (e: unknown) => isAllocatorError(e, 'DNS_FAILED') && !(e as Error).message.includes('wrong'));
      assert.deepEqual(await sqlState(schema), before.rows);
    });

    it('a config that fails nginx -t: the base-config change fails with NGINX_FAILED, files restored, the old config keeps serving', async () => {
      const { allocator, make, schema } = await freshPool(3);
      const served = randomOrg();
      const gw = await allocator.allocate(served);
      const broken = path.join(nginx.confDir, 'zz-broken-by-hand.conf');
      const orgsConf = path.join(nginx.confDir, 'demiurge-orgs.conf');
      const confBefore = readFileSync(orgsConf, 'utf8');
      writeFileSync(broken, 'this is not nginx syntax\n');
      try {
        // Routes are data: allocations go on while someone's broken file sits in the include directory.
        const during = randomOrg();
        const g2 = await allocator.allocate(during);
        assert.equal(JSON.parse((await curlThroughStage1(nginx, `org-${during}.${domain}`)).body).gatewayAddress, g2.host);
        await allocator.release(during);
        // A base-config change (here: a new certificate path) must pass nginx -t before any reload.
        const changed = make({ nginx: { ...nginx.nginxOptions(), tls: { certPath: nginx.certFile, keyPath: nginx.keyFile }, listen: `127.0.0.1:${nginx.httpsPort} ssl http2` } });
        const org = randomOrg();
        const before = await sqlState(schema);
        await assert.rejects(changed.allocate(org), (e: unknown) => isAllocatorError(e, 'NGINX_FAILED') && /nginx -t/.test((e as Error).message));
        assert.equal(readFileSync(orgsConf, 'utf8'), confBefore, 'the previous base config is restored');
        assert.deepEqual(await sqlState(schema), before, 'the pool is unchanged');
        assert.equal(await dig(s.pdnsDnsPort, `org-${org}.${domain}`), 'NXDOMAIN');
        const still = await curlThroughStage1(nginx, `org-${served}.${domain}`);
        assert.equal(still.status, 200);
        assert.equal(JSON.parse(still.body).gatewayAddress, gw.host);
      } finally {
        rmSync(broken);
      }
      await allocator.release(served);
    });

    it('a reload nginx refuses although nginx -t passed (its status address is taken): NGINX_FAILED naming the status server and the error log, rolled back', async () => {
      // What a port picked long before nginx binds it can meet (docs in test/helpers/ports.ts): nginx -t never binds, the reload does.
      const [httpsPort, statusPort] = await freePorts(2);
      const holder = net.createServer((c) => c.destroy());
      await new Promise<void>((r) => holder.listen(statusPort, '127.0.0.1', r));
      const refusing = new Stage1Nginx(domain, httpsPort, statusPort);
      refusing.start();
      try {
        const { make, schema, env } = await freshPool(1);
        const allocator = make({ nginx: { ...refusing.nginxOptions(), liveTimeoutMs: 1000 } });
        const before = await sqlState(schema);
        const org = randomOrg();
        await assert.rejects(
          allocator.allocate(org),
          (e: unknown) => isAllocatorError(e, 'NGINX_FAILED') && new RegExp(`status server 127\\.0\\.0\\.1:${statusPort} does not answer.*error log`).test((e as Error).message),
        );
        assert.match(refusing.errorLog(), new RegExp(`bind\\(\\) to 127\\.0\\.0\\.1:${statusPort} failed \\(98: Address already in use\\)`));
        assert.deepEqual(await sqlState(schema), before, 'the pool is unchanged');
        assert.ok(!(await ownedOrgsInDns(env)).has(org), 'no DNS record is left');
      } finally {
        await new Promise<void>((r) => holder.close(() => r()));
        refusing.destroy();
      }
    });

    it('nginx not serving: allocate fails with NGINX_FAILED and is rolled back (DNS, route file, pool)', async () => {
      const { allocator, schema, env } = await freshPool(2, { nginx: { ...nginx.nginxOptions(), liveTimeoutMs: 500 } });
      await allocator.reconcile(); // base config in place while nginx runs
      const before = await sqlState(schema);
      await nginx.stopAndWait();
      try {
        const org = randomOrg();
        await assert.rejects(allocator.allocate(org), (e: unknown) => isAllocatorError(e, 'NGINX_FAILED'));
        assert.deepEqual(await sqlState(schema), before);
        assert.ok(!routeFiles().includes(`org-${org}.conf`));
        assert.ok(!(await ownedOrgsInDns(env)).has(org));
      } finally {
        nginx.start();
      }
    });
  });

  describe('crash safety and reconcile', () => {
    for (const point of ['allocate.afterClaim', 'allocate.afterEffects'] as const) {
      it(`a crash at ${point} is rolled back by reconcile: NXDOMAIN, no route, gateway ready`, async () => {
        const { make, schema } = await freshPool(2, { leaseMs: 300 });
        const crashing = make(withFailpoints({}, { [point]: () => { throw new SimulatedCrash(point); } }));
        const org = randomOrg();
        await assert.rejects(crashing.allocate(org), SimulatedCrash);
        assert.equal((await sqlState(schema)).filter((r) => r.state === 'allocating').length, 1);
        if (point === 'allocate.afterEffects') assert.deepEqual(await dig(s.pdnsDnsPort, `org-${org}.${domain}`), ['127.0.0.1']);
        const survivor = make();
        const early = await survivor.reconcile();
        assert.equal(early.inFlight.length, 1, 'a live lease is left alone');
        await waitLeasesExpired(pgAdmin, schema);
        const report = await survivor.reconcile();
        assert.equal(report.recovered.length, 1);
        assert.equal(await dig(s.pdnsDnsPort, `org-${org}.${domain}`), 'NXDOMAIN');
        assert.ok(!routeFiles().includes(`org-${org}.conf`));
        assert.equal((await sqlState(schema)).filter((r) => r.state === 'ready').length, 2);
        // and the organization can be allocated again
        const again = await survivor.allocate(org);
        assert.equal((await curlThroughStage1(nginx, `org-${org}.${domain}`)).status, 200);
        await survivor.release(again.organizationId);
      });
    }

    it('an owner that was only slow (lease ran out, reconcile took over) writes no late DNS or route: ALLOCATION_LOST, nothing orphaned', async () => {
      const { make, schema } = await freshPool(1, { leaseMs: 300 });
      const survivor = make();
      let report: Awaited<ReturnType<GatewayAllocator['reconcile']>> | undefined;
      const slow = make(
        withFailpoints({}, {
          'allocate.afterClaim': async () => {
            await waitLeasesExpired(pgAdmin, schema);
            report = await survivor.reconcile(); // takes the expired claim over and rolls it back
          },
        }),
      );
      const org = randomOrg();
      await assert.rejects(slow.allocate(org), (e: unknown) => isAllocatorError(e, 'ALLOCATION_LOST'));
      assert.equal(report?.recovered.length, 1);
      assert.equal(await dig(s.pdnsDnsPort, `org-${org}.${domain}`), 'NXDOMAIN');
      assert.equal(await dig(s.pdnsDnsPort, `uc-x.org-${org}.${domain}`), 'NXDOMAIN');
      assert.ok(!routeFiles().includes(`org-${org}.conf`));
      assert.deepEqual((await sqlState(schema)).map((r) => r.state), ['ready']);
      const after = await survivor.reconcile();
      assert.deepEqual([after.dnsOrphansRemoved, after.routeOrphansRemoved], [[], []], 'the late owner left nothing for reconcile to clean');
    });

    it('a crash in the middle of release is finished by reconcile (or by releasing again)', async () => {
      const { make, schema } = await freshPool(2, { leaseMs: 300 });
      const crashing = make(withFailpoints({}, { 'release.afterBegin': () => { throw new SimulatedCrash('release.afterBegin'); } }));
      const normal = make();
      const a = randomOrg();
      const b = randomOrg();
      await normal.allocate(a);
      await normal.allocate(b);
      await assert.rejects(crashing.release(a), SimulatedCrash);
      await assert.rejects(crashing.release(b), SimulatedCrash);
      await waitLeasesExpired(pgAdmin, schema);
      await normal.release(b); // a retried release finishes the interrupted one
      const report = await normal.reconcile();
      assert.deepEqual(report.recovered.map((r) => r.organizationId), [a]);
      for (const org of [a, b]) {
        assert.equal(await dig(s.pdnsDnsPort, `org-${org}.${domain}`), 'NXDOMAIN');
        assert.ok(!routeFiles().includes(`org-${org}.conf`));
      }
      assert.equal((await sqlState(schema)).filter((r) => r.state === 'ready').length, 2);
    });

    it('repairs missing DNS and routes of allocated organizations, removes owned orphans, leaves foreign ones alone', async () => {
      const { allocator, env } = await freshPool(2);
      const org = randomOrg();
      const gw = await allocator.allocate(org);
      // Damage: the org's A records and route file disappear.
      await patchZone(s, domain, [
        { name: `org-${org}.${domain}.`, type: 'A', changetype: 'DELETE' },
        { name: `*.org-${org}.${domain}.`, type: 'A', changetype: 'DELETE' },
      ]);
      rmSync(path.join(nginx.confDir, 'routes', `org-${org}.conf`));
      // Records published before the short TTLs (60 s): re-published with the current TTL.
      const oldTtlOrg = randomOrg();
      await allocator.allocate(oldTtlOrg);
      await patchZone(s, domain, [`org-${oldTtlOrg}.${domain}.`, `*.org-${oldTtlOrg}.${domain}.`].map((name) => (
        { name, type: 'A', ttl: 60, changetype: 'REPLACE', records: [{ content: '127.0.0.1', disabled: false }], comments: [{ content: `owner=demiurge-allocator env=${env} org=${oldTtlOrg}`, account: 'demiurge-allocator' }] }
      )));
      // Orphans we own, and foreign things we must not touch.
      const orphan = randomOrg();
      await patchZone(s, domain, [
        { name: `org-${orphan}.${domain}.`, type: 'A', ttl: 60, changetype: 'REPLACE', records: [{ content: '127.0.0.1', disabled: false }], comments: [{ content: `owner=demiurge-allocator env=${env} org=${orphan}`, account: 'demiurge-allocator' }] },
      ]);
      writeFileSync(path.join(nginx.confDir, 'routes', `org-${orphan}.conf`), `# owner=demiurge-allocator env=${env} org=${orphan} gateway=x\n${orphan} "127.0.0.9:1";\n`);
      const foreign = randomOrg();
      await patchZone(s, domain, [{ name: `org-${foreign}.${domain}.`, type: 'A', ttl: 60, changetype: 'REPLACE', records: [{ content: '10.0.0.1', disabled: false }] }]);
      const foreignFile = path.join(nginx.confDir, 'routes', `org-${foreign}.conf`);
      writeFileSync(foreignFile, `# hand-written\n${foreign} "127.0.0.9:1";\n`);
      // A route write whose process was killed before its rename (half a file), and one in progress (this process).
      const routesDir = path.join(nginx.confDir, 'routes');
      const deadWriterPid = Number(spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' }).stdout);
      const abandonedTemp = `org-${orphan}.conf.tmp-${hostname()}.${deadWriterPid}-killed1`;
      const liveTemp = `org-${org}.conf.tmp-${hostname()}.${process.pid}-writing1`;
      writeFileSync(path.join(routesDir, abandonedTemp), `# owner=demiurge-allocator env=${env} org=`);
      writeFileSync(path.join(routesDir, liveTemp), `# owner=demiurge-allocator env=${env} org=`);
      try {
        const report = await allocator.reconcile();
        assert.deepEqual(report.tempFilesRemoved, [abandonedTemp], 'the dead writer\'s temp file is removed, the live one kept');
        assert.ok(existsSync(path.join(routesDir, liveTemp)));
        assert.deepEqual([...report.dnsRepaired].sort(), [org, oldTtlOrg].sort());
        const ttls = (await zoneRRsets(s, domain)).filter((r) => r.name.includes(`org-${oldTtlOrg}.`)).map((r) => (r as unknown as { ttl: number }).ttl);
        assert.deepEqual(ttls, [DNS_TIMING.orgRecordTtlSeconds, DNS_TIMING.orgRecordTtlSeconds]);
        assert.deepEqual(report.routesRepaired, [org]);
        assert.deepEqual(report.dnsOrphansRemoved, [orphan]);
        assert.deepEqual(report.routeOrphansRemoved, [orphan]);
        assert.deepEqual(report.errors, []);
        assert.deepEqual(await dig(s.pdnsDnsPort, `org-${org}.${domain}`), ['127.0.0.1']);
        assert.equal(JSON.parse((await curlThroughStage1(nginx, `org-${org}.${domain}`)).body).gatewayAddress, gw.host);
        assert.equal(await dig(s.pdnsDnsPort, `org-${orphan}.${domain}`), 'NXDOMAIN');
        assert.ok(!existsSync(path.join(nginx.confDir, 'routes', `org-${orphan}.conf`)));
        assert.deepEqual(await dig(s.pdnsDnsPort, `org-${foreign}.${domain}`), ['10.0.0.1']);
        assert.ok(existsSync(foreignFile));
        const second = await allocator.reconcile();
        assert.deepEqual([second.dnsRepaired, second.routesRepaired, second.dnsOrphansRemoved, second.routeOrphansRemoved, second.tempFilesRemoved], [[], [], [], [], []], 'reconcile is idempotent');
      } finally {
        rmSync(path.join(routesDir, liveTemp), { force: true });
        rmSync(foreignFile, { force: true });
        await patchZone(s, domain, [{ name: `org-${foreign}.${domain}.`, type: 'A', changetype: 'DELETE' }]);
      }
      await allocator.release(org);
      await allocator.release(oldTtlOrg);
    });
  });

  it('typed errors carry a stable code and a retryable flag', () => {
    const e = new AllocatorError('DNS_FAILED', 'x');
    assert.equal(e.code, 'DNS_FAILED');
    assert.equal(e.retryable, true);
    assert.equal(new AllocatorError('POOL_EXHAUSTED', 'x').retryable, false);
  });
});
