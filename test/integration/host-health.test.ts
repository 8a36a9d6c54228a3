/**
 * Host quarantine (runtime/host-health.ts) against a real PostgreSQL (and the
 * real allocator for the allocations around it): a "remote host" is
 * 127.0.0.2 with one small HTTP server per gateway port (closed = the host
 * is cut off: connection refused), the "main host" gateway is named
 * `localhost` (not an address, so never probed).
 */
import { strict as assert } from 'assert';
import * as http from 'http';
import type { AddressInfo } from 'net';
import { GatewayAllocator, isAllocatorError, type AllocatorLogEvent } from '../../runtime';
import { HostHealthMonitor, httpStage2Probe, type GatewayProbe } from '../../runtime/host-health';
import { testAllocatorOptions } from '../helpers/allocator-settings';
import { randomOrg, startStandInGateways, suiteId } from '../helpers/fixtures';
import { requireServices, type TestServices } from '../helpers/services';
import type { Stage1Nginx } from '../helpers/stage1-nginx';
import { removeZoneAndSchemas, zoneWithStage1 } from '../helpers/suite-setup';

const REMOTE = '127.0.0.2';

/** One gateway port of the fake remote host; `stop()` cuts it off, `start()` brings it back on the same port. */
class RemotePort {
  private server: http.Server | undefined;
  port = 0;
  async start(): Promise<void> {
    const s = http.createServer((req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ gatewayAddress: req.socket.localAddress, host: req.headers.host, path: req.url }));
    });
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.listen(this.port, REMOTE, () => resolve());
    });
    this.port = (s.address() as AddressInfo).port;
    this.server = s;
  }
  async stop(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }
}

describe('host quarantine (runtime/host-health.ts, real PostgreSQL)', function () {
  this.timeout(120_000);
  let s: TestServices;
  let nginx: Stage1Nginx;
  let standIn: { port: number; close: () => Promise<void> };
  let domain: string;
  const schemas: string[] = [];
  const open: GatewayAllocator[] = [];
  const remotes: RemotePort[] = [];

  before(async function () {
    s = requireServices(this);
    domain = `hh-${suiteId()}.test`;
    nginx = await zoneWithStage1(s, domain);
    standIn = await startStandInGateways();
  });

  after(async () => {
    await Promise.allSettled(open.map((a) => a.close()));
    await Promise.allSettled(remotes.map((r) => r.stop()));
    await standIn?.close();
    nginx?.destroy();
    await removeZoneAndSchemas(s, domain, schemas);
  });

  /**
   * A pool of one main-host gateway (holding orgMain) and three on the remote host: r0 holds
   * orgRemote, r1 and r2 are ready.
   */
  async function poolWithRemoteHost(probe?: GatewayProbe): Promise<{ allocator: GatewayAllocator; monitor: HostHealthMonitor; logs: AllocatorLogEvent[]; ports: RemotePort[]; orgMain: string; orgRemote: string; env: string }> {
    const env = `hh${suiteId()}`;
    const schema = `hh_${suiteId()}`;
    schemas.push(schema);
    const allocator = new GatewayAllocator(testAllocatorOptions(s, nginx, { env, domain, schema }));
    open.push(allocator);
    await allocator.migrate();
    const ports = [new RemotePort(), new RemotePort(), new RemotePort()];
    remotes.push(...ports);
    for (const p of ports) await p.start();
    const main = { name: `gw-pool-${env}-0`, host: 'localhost', httpPort: standIn.port, vpnPort: 49100 };
    const remote = ports.map((p, i) => ({ name: `gw-pool-${env}-${i + 1}`, host: REMOTE, httpPort: p.port, vpnPort: 49101 + i }));
    await allocator.registerGateways([main, ...remote]);
    await allocator.markReady([main.name]);
    const orgMain = randomOrg();
    assert.equal((await allocator.allocate(orgMain)).name, main.name);
    await allocator.markReady([remote[0].name]);
    const orgRemote = randomOrg();
    assert.equal((await allocator.allocate(orgRemote)).name, remote[0].name);
    await allocator.markReady([remote[1].name, remote[2].name]);
    const logs: AllocatorLogEvent[] = [];
    const monitor = new HostHealthMonitor({
      pool: allocator.pgPool,
      schema,
      envName: env,
      settings: { failuresBeforeUnreachable: 2, timeoutMs: 2000 },
      logger: (e) => logs.push(e),
      probe,
    });
    return { allocator, monitor, logs, ports, orgMain, orgRemote, env };
  }

  async function states(allocator: GatewayAllocator): Promise<Record<string, string>> {
    return Object.fromEntries((await allocator.list()).map((g) => [g.name, g.state]));
  }

  it('the probe: any HTTP answer is up; a refused port is down', async () => {
    const p = new RemotePort();
    remotes.push(p);
    await p.start();
    const g = { name: 'x', host: REMOTE, httpPort: p.port, state: 'ready' as const };
    assert.equal(await httpStage2Probe(g, 2000), true);
    await p.stop();
    assert.equal(await httpStage2Probe(g, 2000), false);
  });

  it('a host cut off for N rounds: its ready gateways become unreachable (never claimed); held ones and the main host are untouched; back when it answers', async () => {
    const { allocator, monitor, logs, ports, orgMain, orgRemote, env } = await poolWithRemoteHost();
    const [gMain, r0, r1, r2] = [0, 1, 2, 3].map((i) => `gw-pool-${env}-${i}`);
    const before = await states(allocator);
    assert.deepEqual(before, { [gMain]: 'allocated', [r0]: 'allocated', [r1]: 'ready', [r2]: 'ready' });

    // The host answers: nothing changes.
    assert.deepEqual((await monitor.runOnce()).markedUnreachable, []);

    for (const p of ports) await p.stop();
    const round1 = await monitor.runOnce();
    assert.deepEqual(round1.markedUnreachable, [], 'one failed round is below the threshold');
    assert.deepEqual(round1.failures, { [REMOTE]: 1 });
    const round2 = await monitor.runOnce();
    assert.deepEqual(round2.markedUnreachable, [r1, r2]);
    assert.deepEqual(await states(allocator), { [gMain]: 'allocated', [r0]: 'allocated', [r1]: 'unreachable', [r2]: 'unreachable' });
    assert.ok(logs.some((l) => l.event === 'host.unreachable' && l.host === REMOTE), 'a host.unreachable line');

    // Out of allocation: a new organization finds no gateway; the existing ones keep theirs.
    await assert.rejects(allocator.allocate(randomOrg()), (err: unknown) => isAllocatorError(err, 'POOL_EXHAUSTED'));
    assert.equal((await allocator.getAllocation(orgMain))?.name, gMain, 'the main host\'s organization is untouched');
    assert.equal((await allocator.getAllocation(orgRemote))?.name, r0, 'an allocated remote gateway is left to the reaper');
    assert.equal((await allocator.status()).byState.unreachable, 2);

    // Back: one answering gateway is enough for the host; each gateway comes back once it answers itself.
    await ports[1].start();
    const back1 = await monitor.runOnce();
    assert.deepEqual(back1.markedReachable, [r1]);
    assert.deepEqual(back1.failures, { [REMOTE]: 0 });
    assert.ok(logs.some((l) => l.event === 'host.reachable' && l.host === REMOTE), 'a host.reachable line');
    await ports[2].start();
    await ports[0].start();
    assert.deepEqual((await monitor.runOnce()).markedReachable, [r2]);
    assert.deepEqual(await states(allocator), { [gMain]: 'allocated', [r0]: 'allocated', [r1]: 'ready', [r2]: 'ready' });
    const again = await allocator.allocate(randomOrg());
    assert.ok([r1, r2].includes(again.name), 'allocation uses the host again');
  });

  it('a gateway claimed between a round\'s read and its write is left alone (the statement re-checks ready)', async () => {
    let claim: (() => Promise<void>) | undefined;
    const { allocator, monitor, env } = await poolWithRemoteHost(async () => {
      // Every probe fails (the host is "down"); the first one of the second round lets an allocation take r1 first.
      const c = claim;
      claim = undefined;
      if (c) await c();
      return false;
    });
    const [r1, r2] = [2, 3].map((i) => `gw-pool-${env}-${i}`);
    await monitor.runOnce();
    const org = randomOrg();
    claim = async () => {
      assert.equal((await allocator.allocate(org)).name, r1);
    };
    const round = await monitor.runOnce();
    assert.equal(claim, undefined, 'the allocation ran during the round');
    assert.deepEqual(round.markedUnreachable, [r2], 'only the gateway still ready moved');
    const st = await states(allocator);
    assert.equal(st[r1], 'allocated');
    assert.equal(st[r2], 'unreachable');
    assert.equal((await allocator.getAllocation(org))?.name, r1);
  });
});
