/**
 * Stage 1's route table (a lua_shared_dict the allocator loads from its route
 * files; runtime/nginx-config.ts): with a real nginx, the route is served the
 * moment allocate resolves and gone the moment release resolves; a fresh
 * nginx loads the files; a HUP reload keeps the table (and does not read the
 * files again); an unknown organization gets the no-gateway page.
 */
import { strict as assert } from 'assert';
import { readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'fs';
import * as https from 'https';
import * as path from 'path';
import { GatewayAllocator, isAllocatorError } from '../../runtime';
import { Stage1Status } from '../../runtime/stage1-status';
import { testAllocatorOptions } from '../helpers/allocator-settings';
import { gatewayHost, randomOrg, startStandInGateways, suiteId } from '../helpers/fixtures';
import { TestServices, requireServices } from '../helpers/services';
import type { Stage1Nginx } from '../helpers/stage1-nginx';
import { removeZoneAndSchemas, zoneWithStage1 } from '../helpers/suite-setup';
import { portClosed, waitFor } from '../helpers/wait-for';

describe('stage-1 route table (real nginx, lua_shared_dict loaded from the route files)', function () {
  this.timeout(120_000);
  let s: TestServices;
  let nginx: Stage1Nginx;
  let standIn: { port: number; close: () => Promise<void> };
  let domain: string;
  let allocator: GatewayAllocator;
  let status: Stage1Status;
  const schema = `it_${suiteId()}`;

  before(async function () {
    s = requireServices(this);
    domain = `rt-${suiteId()}.test`;
    nginx = await zoneWithStage1(s, domain);
    standIn = await startStandInGateways();
    allocator = new GatewayAllocator(testAllocatorOptions(s, nginx, { env: 'rt', domain, schema }));
    await allocator.migrate();
    const inventory = Array.from({ length: 4 }, (_, i) => ({ name: `gw-pool-rt-${i}`, host: gatewayHost(i), httpPort: standIn.port, vpnPort: 49100 + i }));
    await allocator.registerGateways(inventory);
    await allocator.markReady(inventory.map((g) => g.name));
    await allocator.reconcile(); // base config in place
    status = new Stage1Status(`127.0.0.1:${nginx.statusPort}`, 5_000);
  });

  after(async () => {
    await allocator?.close();
    await standIn?.close();
    nginx?.destroy();
    await removeZoneAndSchemas(s, domain, [schema]);
  });

  /** One HTTPS request through stage 1 (CA-verified for the org's name, a new connection), Accept: JSON; `host` is the Host header. */
  function get(org: string, host = `org-${org}.${domain}`): Promise<{ status: number; body: string }> {
    const name = `org-${org}.${domain}`;
    return new Promise((resolve, reject) => {
      const req = https.get(
        { host: '127.0.0.1', port: nginx.httpsPort, servername: name, headers: { host, accept: 'application/json' }, path: '/', ca: readFileSync(nginx.caFile), agent: false },
        (res) => {
          let body = '';
          res.on('data', (c) => (body += c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        },
      );
      req.on('error', reject);
    });
  }

  function assertNoGateway(r: { status: number; body: string }, org: string): void {
    assert.equal(r.status, 404, r.body);
    assert.deepEqual([JSON.parse(r.body).code, JSON.parse(r.body).organization_id], ['NO_GATEWAY', org]);
  }

  /** Pids of the stage-1 master's workers. */
  function workers(): number[] {
    const master = String(nginx.masterPid());
    return readdirSync('/proc')
      .filter((d) => /^\d+$/.test(d))
      .filter((pid) => {
        try {
          const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
          return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1] === master;
        } catch {
          return false;
        }
      })
      .map(Number);
  }

  async function restartNginx(): Promise<void> {
    await nginx.stopAndWait();
    nginx.start();
    await waitFor(`stage-1 nginx to listen on ${nginx.httpsPort} again`, 10_000, async () => !(await portClosed(nginx.httpsPort)));
  }

  it('the route is in the table and served the moment allocate resolves; gone the moment release resolves', async () => {
    const org = randomOrg();
    const gw = await allocator.allocate(org);
    const served = await get(org);
    assert.equal(served.status, 200, served.body);
    assert.equal(JSON.parse(served.body).gatewayAddress, gw.host);
    assert.equal((await status.lookup([org]))?.routes[org], `${gw.host}:${standIn.port}`);
    await allocator.release(org);
    assert.equal((await status.lookup([org]))?.routes[org], '', 'the entry is removed before release resolves');
    assertNoGateway(await get(org), org);
  });

  it("routes exactly the organization's names: org-<uuid>.<domain> and *.org-<uuid>.<domain> (the id is cut out of the Host)", async () => {
    const org = randomOrg();
    const gw = await allocator.allocate(org);
    try {
      const id = `org-${org}`;
      const sameLengthDomain = `${domain.slice(0, -1)}${domain.endsWith('x') ? 'y' : 'x'}`;
      for (const host of [`${id}.${domain}`, `a.${id}.${domain}`, `uc-1.b-2.${id}.${domain}`, `${id.toUpperCase()}.${domain.toUpperCase()}`, `${id}.${domain}:443`]) {
        const r = await get(org, host);
        assert.equal(r.status, 200, `${host}: ${r.body}`);
        assert.equal(JSON.parse(r.body).gatewayAddress, gw.host, host);
      }
      for (const host of [`x${id}.${domain}`, `${id}.${sameLengthDomain}`, `${id}.x${domain}`, `${id}x.${domain}`, `${org}.${domain}`, `.${id}.${domain}`, `a--${id}.${domain}`, domain, `ganymede.${domain}`]) {
        const r = await get(org, host);
        assert.equal(r.status, 404, `${host} must not reach the organization's gateway: ${r.body}`);
        assert.equal(JSON.parse(r.body).code, 'NO_GATEWAY', host);
      }
    } finally {
      await allocator.release(org);
    }
  });

  it('an unknown organization gets the no-gateway page (a miss is not filled from a file)', async () => {
    const org = randomOrg();
    assertNoGateway(await get(org), org);
    // A route file the allocator never loaded (written behind its back) is not served: only loads fill the table.
    const other = randomOrg();
    const gw = await allocator.allocate(other);
    const routes = path.join(nginx.confDir, 'routes');
    const copy = readFileSync(path.join(routes, `org-${other}.conf`), 'utf8').split(other).join(org);
    writeFileSync(path.join(routes, `.tmp-${org}`), copy);
    renameSync(path.join(routes, `.tmp-${org}`), path.join(routes, `org-${org}.conf`));
    try {
      assertNoGateway(await get(org), org);
      assert.equal((await get(other)).status, 200);
      // Loading it (what the writer does after writing a file) makes it live.
      assert.equal((await status.load([org]))?.routes[org], `${gw.host}:${standIn.port}`);
      assert.equal((await get(org)).status, 200);
    } finally {
      rmSync(path.join(routes, `org-${org}.conf`), { force: true });
      await status.load([org]);
      await allocator.release(other);
    }
    assertNoGateway(await get(org), org);
  });

  it('a fresh nginx loads every route file: allocated orgs are served, one released while nginx was stopped is not', async () => {
    const [kept, released] = [randomOrg(), randomOrg()];
    const gw = await allocator.allocate(kept);
    await allocator.allocate(released);
    await nginx.stopAndWait();
    try {
      // Nothing listens: nginx's next start loads the files in a worker after binding, so the removal holds.
      await allocator.release(released);
    } finally {
      nginx.start();
    }
    await waitFor(`stage-1 nginx to listen on ${nginx.httpsPort} again`, 10_000, async () => !(await portClosed(nginx.httpsPort)));
    // No allocator call in between: the table came from the files.
    const r = await get(kept);
    assert.equal(r.status, 200, r.body);
    assert.equal(JSON.parse(r.body).gatewayAddress, gw.host);
    assertNoGateway(await get(released), released);
    await allocator.release(kept);
    assertNoGateway(await get(kept), kept);
  });

  it('a running nginx that does not answer: the release fails (NGINX_FAILED, retryable), the gateway stays releasing, reconcile finishes it', async () => {
    const org = randomOrg();
    await allocator.allocate(org);
    const frozen = [nginx.masterPid(), ...workers()];
    for (const pid of frozen) process.kill(pid, 'SIGSTOP');
    try {
      await assert.rejects(allocator.release(org), (err: unknown) => isAllocatorError(err) && err.code === 'NGINX_FAILED' && err.retryable);
      const row = (await allocator.list()).find((g) => g.organizationId === org);
      assert.equal(row?.state, 'releasing', 'not given to another organization while nginx may still route to it');
    } finally {
      for (const pid of frozen) process.kill(pid, 'SIGCONT');
    }
    const report = await allocator.reconcile();
    assert.deepEqual(report.recovered.map((r) => r.organizationId), [org]);
    assertNoGateway(await get(org), org);
  });

  it('a HUP reload keeps the table (new workers serve it) and does not read the files again', async () => {
    await restartNginx();
    const org = randomOrg();
    const gw = await allocator.allocate(org);
    // Move the file away behind the allocator's back: a reload that re-read the files would drop the route.
    const file = path.join(nginx.confDir, 'routes', `org-${org}.conf`);
    renameSync(file, `${file}.away`);
    try {
      const before = workers();
      nginx.reload();
      await waitFor('the old nginx workers to exit after the reload', 15_000, () => before.every((pid) => !workers().includes(pid)) && workers().length > 0);
      const r = await get(org);
      assert.equal(r.status, 200, r.body);
      assert.equal(JSON.parse(r.body).gatewayAddress, gw.host);
      // A new allocation after the reload is served by the new workers too.
      const next = randomOrg();
      await allocator.allocate(next);
      assert.equal((await get(next)).status, 200);
      await allocator.release(next);
    } finally {
      renameSync(`${file}.away`, file);
    }
    await allocator.release(org);
    assertNoGateway(await get(org), org);
  });
});
