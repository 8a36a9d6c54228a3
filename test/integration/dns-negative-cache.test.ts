import { strict as assert } from 'assert';
import { execFile } from 'child_process';
import { GatewayAllocator, DNS_TIMING } from '../../runtime';
import { ZONE_WRITE_SETTINGS } from '../../runtime/powerdns-client';
import { RECORDS_CREATE_SCRIPT, ZONE_CREATE_SCRIPT, ZONE_DELETE_SCRIPT, soaContent } from '../../components/powerdns';
import { testAllocatorOptions } from '../helpers/allocator-settings';
import { CachingResolver, DnsAnswer, digQuery } from '../helpers/caching-resolver';
import { dropSchema, gatewayHost, randomOrg, startStandInGateways } from '../helpers/fixtures';
import { freePort } from '../helpers/ports';
import { PowerDnsInstance, imageCacheSettings } from '../helpers/powerdns-instance';
import { TestServices, requireServices } from '../helpers/services';
import { Stage1Nginx } from '../helpers/stage1-nginx';
import { requireTool } from '../helpers/tools';
import { suiteNames } from '../helpers/suite-setup';

/** The promise to clients (issue 17): a name's change is visible through a caching resolver within this. */
const BOUND_MS = 5000;

function runScript(script: string, env: Record<string, string>): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('/bin/bash', ['-c', script], { env: { ...process.env, ...env }, timeout: 60_000 }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)));
  });
}

/**
 * Through a real caching resolver (Debian's unbound, default cache settings) in
 * front of a PowerDNS with the image's cache settings and a zone made by the
 * stack's own scripts: the negative TTL and the record TTL are what the dev and
 * prod stacks deploy (neither stack overrides them).
 */
describe('DNS through a caching resolver (unbound → PowerDNS with the stack settings): names appear and disappear within 5 s', function () {
  this.timeout(120_000);
  let s: TestServices;
  let pdns: PowerDnsInstance;
  let resolver: CachingResolver;
  let nginx: Stage1Nginx;
  let standIn: { port: number; close: () => Promise<void> };
  let allocator: GatewayAllocator;
  let domain: string;
  let schema: string;
  let env: string;
  let scriptEnv: Record<string, string>;

  before(async function () {
    s = requireServices(this);
    const unbound = requireTool(this, 'unbound', 'the caching resolver of the DNS negative-caching suite');
    requireTool(this, 'dig', 'queries through the caching resolver');
    ({ domain, schema, env } = suiteNames('dnc'));
    pdns = new PowerDnsInstance(imageCacheSettings());
    await pdns.start();
    // What the stack's pdns-zone and pdns-records commands run (components/powerdns.ts).
    scriptEnv = {
      PDNS_API_URL: pdns.apiUrl,
      PDNS_API_KEY: pdns.apiKey,
      ZONE: `${domain}.`,
      NAMESERVER: `ns1.${domain}.`,
      PUBLIC_IP: '127.0.0.1',
      A_RECORDS: `${domain}. ganymede.${domain}. ns1.${domain}.`,
      WILDCARD_NAME: `*.${domain}.`,
      WILDCARD: 'false',
      SOA_CONTENT: soaContent(domain),
      SOA_TTL: String(DNS_TIMING.soaTtlSeconds),
      ZONE_SETTINGS: JSON.stringify(ZONE_WRITE_SETTINGS),
      PDNS_WAIT_SECONDS: '10',
    };
    await runScript(ZONE_CREATE_SCRIPT, scriptEnv);
    await runScript(RECORDS_CREATE_SCRIPT, scriptEnv);
    resolver = new CachingResolver(domain, { address: '127.0.0.1', port: pdns.dnsPort }, unbound);
    await resolver.start();
    nginx = new Stage1Nginx(domain, await freePort(), await freePort());
    nginx.start();
    standIn = await startStandInGateways();
    // No dnsTtl: the allocator's default is what the stacks deploy.
    allocator = new GatewayAllocator({ ...testAllocatorOptions(s, nginx, { env, domain, schema }), powerdns: { apiUrl: pdns.apiUrl, apiKey: pdns.apiKey, zone: domain } });
    await allocator.migrate();
    const inventory = [0, 1].map((i) => ({ name: `gw-pool-${env}-${i}`, host: gatewayHost(i), httpPort: standIn.port, vpnPort: 49100 + i }));
    await allocator.registerGateways(inventory);
    await allocator.markReady(inventory.map((g) => g.name));
  });

  after(async () => {
    await allocator?.close();
    await standIn?.close();
    nginx?.destroy();
    await resolver?.stop();
    if (pdns) {
      await runScript(ZONE_DELETE_SCRIPT, scriptEnv).catch(() => undefined);
      await pdns.stop();
    }
    if (s) await dropSchema(s.pgUrl, schema);
  });

  /** Polls the resolver until `wanted` holds for every name; the time it took (bounded at 3× the promise). */
  async function waitUntil(names: string[], wanted: (a: DnsAnswer) => boolean, what: string): Promise<number> {
    const t0 = Date.now();
    let last: DnsAnswer[] = [];
    for (;;) {
      last = await Promise.all(names.map((n) => resolver.query(n)));
      if (last.every(wanted)) return Date.now() - t0;
      if (Date.now() - t0 > 3 * BOUND_MS) throw new Error(`${what}: not seen through the resolver within ${3 * BOUND_MS} ms; last answers ${JSON.stringify(last)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  const resolves = (a: DnsAnswer): boolean => a.status === 'NOERROR' && a.addresses.length === 1 && a.addresses[0] === '127.0.0.1';
  const nxdomain = (a: DnsAnswer): boolean => a.status === 'NXDOMAIN';

  it(`the zone's SOA (made by the stack's scripts) caps negative caching at ${DNS_TIMING.negativeTtlSeconds} s`, async () => {
    const direct = await digQuery('127.0.0.1', pdns.dnsPort, `org-${randomOrg()}.${domain}`);
    assert.equal(direct.status, 'NXDOMAIN');
    assert.ok(direct.ttl !== undefined && direct.ttl <= DNS_TIMING.negativeTtlSeconds, `PowerDNS answers the negative SOA with TTL ${direct.ttl}`);
    const name = `org-${randomOrg()}.${domain}`;
    const first = await resolver.query(name);
    const cached = await resolver.query(name);
    assert.deepEqual([first.status, cached.status], ['NXDOMAIN', 'NXDOMAIN']);
    assert.ok(cached.ttl !== undefined && cached.ttl <= DNS_TIMING.negativeTtlSeconds, `unbound keeps the NXDOMAIN for ${cached.ttl} s`);
  });

  it('a name asked before allocate resolves ≤ 5 s after allocate resolves; NXDOMAIN ≤ 5 s after release; resolves again ≤ 5 s after re-allocation', async () => {
    const org = randomOrg();
    const names = [`org-${org}.${domain}`, `uc-0123abcd.org-${org}.${domain}`];
    // A client asked before the allocation: the resolver holds the NXDOMAIN (asked twice: the second is a cache hit).
    for (let i = 0; i < 2; i += 1) for (const n of names) assert.equal((await resolver.query(n)).status, 'NXDOMAIN', n);
    await allocator.allocate(org);
    const afterAllocate = await waitUntil(names, resolves, 'allocation');

    // A client that resolved it just before the release holds the A record.
    for (const n of names) assert.ok(resolves(await resolver.query(n)), n);
    await allocator.release(org);
    const afterRelease = await waitUntil(names, nxdomain, 'release');

    for (const n of names) assert.equal((await resolver.query(n)).status, 'NXDOMAIN', n);
    await allocator.allocate(org);
    const afterReallocate = await waitUntil(names, resolves, 're-allocation');
    await allocator.release(org);

    console.log(`      through unbound: resolves ${afterAllocate} ms after allocate, NXDOMAIN ${afterRelease} ms after release, resolves ${afterReallocate} ms after re-allocation (bound ${BOUND_MS} ms)`);
    for (const [what, ms] of [['allocate', afterAllocate], ['release', afterRelease], ['re-allocation', afterReallocate]] as const) {
      assert.ok(ms <= BOUND_MS, `${what}: seen after ${ms} ms, more than ${BOUND_MS} ms`);
    }
  });
});
