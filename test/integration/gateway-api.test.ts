import { strict as assert } from 'assert';
import { ChildProcess, spawn } from 'child_process';
import { randomBytes } from 'crypto';
import * as path from 'path';
import { Pool } from 'pg';
import { GatewayAllocator, OrgDataStore, isAllocatorError } from '../../runtime';
import { allocatorSettingsEnv, testAllocatorOptions } from '../helpers/allocator-settings';
import { callApi, FakeGateway } from '../helpers/fake-gateway';
import { randomOrg } from '../helpers/fixtures';
import { freePorts } from '../helpers/ports';
import { TestServices, requireServices } from '../helpers/services';
import { Stage1Nginx, curlThroughStage1, dig } from '../helpers/stage1-nginx';
import { suiteNames, zoneWithStage1, removeZoneAndSchemas } from '../helpers/suite-setup';

const MAX_SNAPSHOT = 64 * 1024;
const ROOT = path.resolve(__dirname, '..', '..');

function snapshot(seed: string, size = 200): { yjs_state: Record<string, string>; gateway_state: Record<string, unknown> } {
  return {
    yjs_state: { 'project-1': randomBytes(size).toString('base64'), 'project-2': Buffer.from(seed).toString('base64') },
    gateway_state: { permissions: { seed }, oauth_clients: {}, container_tokens: { n: 1.5, nested: [1, 'two', null, true] } },
  };
}

describe('Gateway API over HTTP (Express router, real PostgreSQL, PowerDNS, nginx)', function () {
  this.timeout(120_000);
  let s: TestServices;
  let nginx: Stage1Nginx;
  let domain: string;
  let schema: string;
  let env: string;
  let api: ChildProcess | undefined;
  let admin: GatewayAllocator;
  let adminPool: Pool;
  let apiPort = 0;
  let apiUrl = '';
  let store: OrgDataStore;
  /** The pool: every test starts with these ready (beforeEach) and its organizations released (afterEach). */
  const gateways: FakeGateway[] = [];
  /** Registered with the pool but only ever made ready by the registration test, which needs a gateway that is not. */
  let registrant: FakeGateway;
  /** Organizations started by the running test; released after it. */
  let testOrgs: string[] = [];

  function apiEnv(): NodeJS.ProcessEnv {
    return { ...process.env, API_PORT: String(apiPort), MAX_SNAPSHOT_BYTES: String(MAX_SNAPSHOT), ...allocatorSettingsEnv(s, nginx, { env, domain, schema }) };
  }

  async function startApi(): Promise<void> {
    const child = spawn(process.execPath, ['-r', 'ts-node/register/transpile-only', path.join(ROOT, 'test/fixtures/api-server/main.ts')], {
      cwd: ROOT,
      env: apiEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let err = '';
    child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`API did not start: ${err}`)), 30_000);
      child.stdout?.on('data', (d: Buffer) => {
        if (d.toString().includes('listening')) {
          clearTimeout(t);
          resolve();
        }
      });
      child.on('exit', (code) => {
        clearTimeout(t);
        reject(new Error(`API exited with ${code}: ${err}`));
      });
    });
    child.removeAllListeners('exit');
    api = child;
  }

  async function stopApi(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = api;
    api = undefined;
    if (!child || child.exitCode !== null) return;
    await new Promise<void>((r) => {
      child.once('exit', () => r());
      child.kill(signal);
    });
  }

  async function history(orgId: string): Promise<string> {
    return JSON.stringify(await store.history(orgId));
  }

  async function startOrg(orgId: string, user = 'alice', track = testOrgs): Promise<{ status: number; body: Record<string, unknown> }> {
    track.push(orgId);
    return callApi(apiUrl, '/start', { organization_id: orgId }, { 'x-test-user': user });
  }

  function gatewayOf(name: unknown): FakeGateway {
    const g = [...gateways, registrant].find((x) => x.name === name);
    assert.ok(g, `no fake gateway ${String(name)}`);
    return g;
  }

  /** Set-up: a started organization whose gateway has loaded it. */
  async function startLoaded(orgId = randomOrg(), track = testOrgs): Promise<{ org: string; gw: FakeGateway }> {
    const r = await startOrg(orgId, 'alice', track);
    assert.equal(r.status, 200, `set-up: start ${orgId}: ${JSON.stringify(r.body)}`);
    const gw = gatewayOf(r.body.gateway_id);
    await gw.waitLoaded(orgId);
    return { org: orgId, gw };
  }

  /** Every pool gateway that is not in the pool (never registered, or quarantined) says /gateway/ready. */
  async function ensurePoolReady(): Promise<void> {
    const states = new Map((await admin.list()).map((l) => [l.name, l.state]));
    [...gateways, registrant].forEach((g) => (g.accepting = true));
    for (const g of gateways) {
      if (states.get(g.name) !== 'registered') continue;
      const r = await g.ready();
      assert.equal(r.status, 200, `set-up: ${g.name} ready: ${JSON.stringify(r.body)}`);
    }
  }

  /** Releases what `orgs` still hold (whatever a test left behind) and lets their fake gateways forget them. */
  async function releaseAll(orgs: string[]): Promise<void> {
    for (const org of orgs.splice(0)) {
      await admin.release(org).catch((e: unknown) => {
        if (!isAllocatorError(e, 'NOT_ALLOCATED')) throw e;
      });
      [...gateways, registrant].filter((g) => g.loadedOrg === org || g.organizationId === org).forEach((g) => g.reset());
    }
  }

  before(async function () {
    s = requireServices(this);
    ({ domain, schema, env } = suiteNames('api'));
    nginx = await zoneWithStage1(s, domain);
    [apiPort] = await freePorts(1);
    apiUrl = `http://127.0.0.1:${apiPort}`;
    admin = new GatewayAllocator(testAllocatorOptions(s, nginx, { env, domain, schema }));
    await admin.migrate();
    adminPool = new Pool({ connectionString: s.pgUrl, max: 2 });
    store = new OrgDataStore({ pg: adminPool, schema });
    for (let i = 0; i < 5; i += 1) {
      const g = new FakeGateway(`gw-pool-${env}-${i}`, randomBytes(24).toString('base64url'), apiUrl);
      await g.listen();
      if (i < 4) gateways.push(g);
      else registrant = g;
    }
    const all = [...gateways, registrant];
    // What `gateway-pool sync` does with the stack outputs (its own test covers the CLI).
    await admin.registerGateways(all.map((g, i) => ({ name: g.name, host: '127.0.0.1', httpPort: g.port, vpnPort: 49100 + i })));
    await admin.setRegistrationTokens(Object.fromEntries(all.map((g) => [g.name, g.registrationToken])));
    await startApi();
  });

  beforeEach(async () => {
    if (!api) await startApi(); // a test that restarted it failed half-way
    await ensurePoolReady();
  });

  afterEach(async () => {
    await releaseAll(testOrgs);
    testOrgs = [];
  });

  after(async () => {
    await stopApi();
    await Promise.allSettled([...gateways, registrant].map((g) => g?.close()));
    await admin?.close();
    await adminPool?.end();
    nginx?.destroy();
    await removeZoneAndSchemas(s, domain, schema);
  });

  it('registers gateways only with their own registration token', async () => {
    const stateOf = async (name: string): Promise<string | undefined> => (await admin.list()).find((l) => l.name === name)?.state;
    assert.equal(await stateOf(registrant.name), 'registered', 'precondition: the registrant has not said ready yet');
    const readyBefore = (await admin.status()).byState.ready ?? 0;
    const wrong = await callApi(apiUrl, '/ready', { gateway_id: registrant.name }, { authorization: `Bearer ${gateways[0].registrationToken}` });
    assert.equal(wrong.status, 401);
    assert.equal(wrong.body.code, 'UNAUTHENTICATED');
    assert.equal(await stateOf(registrant.name), 'registered', 'another gateway\'s token changed nothing');
    assert.equal((await admin.status()).byState.ready ?? 0, readyBefore);
    const r = await registrant.ready();
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.deepEqual([r.body.state, r.body.loaded], ['ready', false]);
    assert.equal(await stateOf(registrant.name), 'ready');
    assert.equal((await admin.status()).byState.ready, readyBefore + 1);
  });

  it('start → config → pull (empty) → ready(org loaded): the gateway serves the org through stage-1', async () => {
    const orgA = randomOrg();
    const started = await startOrg(orgA);
    assert.equal(started.status, 200, JSON.stringify(started.body));
    assert.equal(started.body.created, true);
    assert.equal(started.body.gateway_url, `https://org-${orgA}.${domain}`);
    const first = gatewayOf(started.body.gateway_id);
    await first.waitLoaded(orgA);
    assert.equal(first.lastConfig?.organization_id, orgA);
    assert.equal(first.lastConfig?.organization_name, `Org ${orgA.slice(0, 8)}`);
    assert.deepEqual(first.lastPull, { success: true, timestamp: null, data: null, version: null, sha256: null });

    const again = await startOrg(orgA);
    assert.equal(again.status, 200);
    assert.deepEqual([again.body.created, again.body.status, again.body.gateway_id], [false, 'ready', first.name]);

    assert.deepEqual(await dig(s.pdnsDnsPort, `org-${orgA}.${domain}`), ['127.0.0.1']);
    const through = await curlThroughStage1(nginx, `org-${orgA}.${domain}`, '/healthz');
    assert.equal(through.status, 200);
    assert.equal(JSON.parse(through.body).gateway, first.name);
  });

  it('push → stop releases; a second stop is harmless; the released token is refused', async () => {
    const { org: orgA, gw: first } = await startLoaded();
    const dataA = snapshot('org-a-v1');
    const pushed = await first.call('/data/push', { organization_id: orgA, gateway_id: first.name, timestamp: new Date().toISOString(), data: dataA });
    assert.equal(pushed.status, 200, JSON.stringify(pushed.body));
    assert.equal(pushed.body.version, 1);
    assert.ok(Number(pushed.body.size_bytes) > 0);
    const heartbeat = await first.call('/heartbeat', { gateway_id: first.name });
    assert.equal(heartbeat.status, 200);

    const token = first.token as string;
    const stopped = await first.call('/stop', { organization_id: orgA, gateway_id: first.name });
    assert.equal(stopped.status, 200, JSON.stringify(stopped.body));
    assert.equal(stopped.body.released, true);
    const second = await first.call('/stop', { organization_id: orgA, gateway_id: first.name }, token);
    assert.equal(second.status, 200);
    assert.deepEqual([second.body.released, second.body.already_released], [false, true]);

    assert.equal(await dig(s.pdnsDnsPort, `org-${orgA}.${domain}`), 'NXDOMAIN');
    const before = await history(orgA);
    for (const p of ['/data/pull', '/data/push', '/heartbeat']) {
      const r = await first.call(p, { organization_id: orgA, data: snapshot('late') }, token);
      assert.equal(r.status, 401, `${p}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.code, 'TOKEN_REVOKED');
    }
    assert.equal(await history(orgA), before);
    first.reset();
  });

  it('the data survives a restart of the API process; the next start lands on another gateway and pulls it back', async () => {
    // Set-up: the organization pushed its data and was stopped.
    const { org: orgA, gw: first } = await startLoaded();
    const dataA = snapshot('org-a-v1');
    assert.equal((await first.call('/data/push', { organization_id: orgA, gateway_id: first.name, data: dataA })).status, 200, 'set-up: push');
    assert.equal((await first.call('/stop', { organization_id: orgA, gateway_id: first.name })).status, 200, 'set-up: stop');
    first.reset();

    await stopApi('SIGKILL');
    await startApi();
    const started = await startOrg(orgA);
    assert.equal(started.status, 200, JSON.stringify(started.body));
    const second = gatewayOf(started.body.gateway_id);
    assert.notEqual(second.name, first.name, 'the just-released gateway is the last one handed out again');
    await second.waitLoaded(orgA);
    assert.deepEqual(second.lastPull?.data, dataA);
    // Byte for byte: the stored text is the canonical JSON of what was pushed.
    assert.equal(JSON.stringify(second.lastPull?.data), JSON.stringify({ yjs_state: dataA.yjs_state, gateway_state: dataA.gateway_state }));
    const through = await curlThroughStage1(nginx, `org-${orgA}.${domain}`, '/healthz');
    assert.equal(JSON.parse(through.body).gateway, second.name);
  });

  describe('security: every refusal changes nothing', () => {
    let orgA: string;
    let orgB: string;
    let gwA: FakeGateway;
    let gwB: FakeGateway;
    const suiteOrgs: string[] = [];

    before(async () => {
      await ensurePoolReady();
      ({ org: orgA, gw: gwA } = await startLoaded(randomOrg(), suiteOrgs));
      ({ org: orgB, gw: gwB } = await startLoaded(randomOrg(), suiteOrgs));
      const pushB = await gwB.call('/data/push', { organization_id: orgB, data: snapshot('org-b') });
      assert.equal(pushB.status, 200);
    });

    after(async () => {
      await releaseAll(suiteOrgs);
    });

    it("a gateway token of org A cannot pull or push org B's data (403)", async () => {
      const before = await history(orgB);
      const pull = await gwA.call('/data/pull', { organization_id: orgB });
      assert.equal(pull.status, 403);
      assert.equal(pull.body.code, 'FORBIDDEN');
      assert.equal(pull.body.data, undefined);
      const push = await gwA.call('/data/push', { organization_id: orgB, data: snapshot('attack') });
      assert.equal(push.status, 403);
      const stop = await gwA.call('/stop', { organization_id: orgB });
      assert.equal(stop.status, 403);
      assert.equal(await history(orgB), before);
      assert.equal((await admin.getAllocation(orgB))?.name, gwB.name);
      assert.equal((await admin.getAllocation(orgA))?.name, gwA.name);
    });

    it('a handshake token works once', async () => {
      const used = gwB.lastHandshake as string;
      const r = await callApi(apiUrl, '/config', { handshake_token: used });
      assert.equal(r.status, 401);
      assert.equal(r.body.code, 'HANDSHAKE_INVALID');
      assert.equal(r.body.gateway_token, undefined);
      const viaHeader = await callApi(apiUrl, '/config', {}, { authorization: `Bearer ${used}` });
      assert.equal(viaHeader.status, 401);
      // The gateway's token still works: a replayed handshake did not rotate it.
      assert.equal((await gwB.call('/heartbeat', {})).status, 200);
    });

    it('missing or garbled bearer → 401 on every gateway endpoint', async () => {
      const before = await history(orgB);
      for (const p of ['/data/push', '/data/pull', '/heartbeat', '/stop', '/ready']) {
        for (const auth of [undefined, 'Bearer', 'Bearer not-a-real-token-at-all-1234', 'Basic Zm9vOmJhcg==', `Bearer ${'x'.repeat(500)}`, 'Bearer ÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿ']) {
          const r = await callApi(apiUrl, p, { organization_id: orgB, data: snapshot('x') }, auth ? { authorization: auth } : {});
          assert.equal(r.status, 401, `${p} with ${String(auth).slice(0, 20)}: ${r.status} ${JSON.stringify(r.body)}`);
          assert.equal(r.body.success, false);
          assert.equal(typeof r.body.code, 'string');
        }
      }
      assert.equal(await history(orgB), before);
      assert.equal((await admin.getAllocation(orgB))?.name, gwB.name);
    });

    it('oversized push → 413, whether the store or the body parser catches it', async () => {
      const before = await history(orgB);
      const justOver = await gwB.call('/data/push', { organization_id: orgB, data: snapshot('big', MAX_SNAPSHOT) });
      assert.equal(justOver.status, 413, JSON.stringify(justOver.body));
      assert.equal(justOver.body.code, 'PAYLOAD_TOO_LARGE');
      const huge = await gwB.call('/data/push', { organization_id: orgB, data: snapshot('huge', 4 * MAX_SNAPSHOT) });
      assert.equal(huge.status, 413);
      assert.equal(huge.body.code, 'PAYLOAD_TOO_LARGE');
      assert.equal(await history(orgB), before);
    });

    it('malformed JSON and wrong types → 400', async () => {
      const before = await history(orgB);
      const auth = { authorization: `Bearer ${gwB.token as string}` };
      const malformed = await callApi(apiUrl, '/data/push', '{"organization_id": "' + orgB + '", "data": {', auth, true);
      assert.equal(malformed.status, 400);
      assert.equal(malformed.body.code, 'INVALID_REQUEST');
      const cases: unknown[] = [
        [],
        'a string',
        { organization_id: 42, data: snapshot('t') },
        { organization_id: orgB.toUpperCase(), data: snapshot('t') },
        { organization_id: orgB },
        { organization_id: orgB, data: { yjs_state: 5, gateway_state: {} } },
        { organization_id: orgB, data: { yjs_state: { p: 'not base64!' }, gateway_state: {} } },
        { organization_id: orgB, data: { yjs_state: {}, gateway_state: [] } },
        { organization_id: orgB, data: { yjs_state: {}, gateway_state: {}, extra: 1 } },
        { organization_id: orgB, timestamp: 'yesterday', data: snapshot('t') },
        { organization_id: orgB, gateway_id: 'Not A Name', data: snapshot('t') },
      ];
      for (const body of cases) {
        const r = await callApi(apiUrl, '/data/push', body, auth);
        assert.equal(r.status, 400, `${JSON.stringify(body).slice(0, 80)} → ${r.status} ${JSON.stringify(r.body)}`);
        assert.ok(['INVALID_REQUEST', 'INVALID_SNAPSHOT'].includes(r.body.code as string));
        assert.ok(!JSON.stringify(r.body).includes('    at '), 'no stack traces');
      }
      assert.equal(await history(orgB), before);
    });

    it('users: unauthenticated 401, not allowed 403, bad organization id 400, wrong method 405 — nothing allocated', async () => {
      const orgC = randomOrg();
      const statusBefore = JSON.stringify(await admin.status());
      assert.equal((await startOrg(orgC, 'nobody')).status, 401);
      const forbidden = await startOrg(orgC, 'mallory');
      assert.equal(forbidden.status, 403);
      assert.equal(forbidden.body.code, 'FORBIDDEN');
      const bad = await callApi(apiUrl, '/start', { organization_id: 'org-1; DROP TABLE' }, { 'x-test-user': 'alice' });
      assert.equal(bad.status, 400);
      const get = await fetch(`${apiUrl}/gateway/start`);
      assert.equal(get.status, 405);
      assert.equal(((await get.json()) as { code: string }).code, 'METHOD_NOT_ALLOWED');
      assert.equal(JSON.stringify(await admin.status()), statusBefore);
      assert.equal(await admin.getAllocation(orgC), undefined);
    });

    it('a stale snapshot (older timestamp than the stored one) is refused with 409', async () => {
      const t = Date.now();
      const newer = await gwB.call('/data/push', { organization_id: orgB, timestamp: new Date(t).toISOString(), data: snapshot('new') });
      assert.equal(newer.status, 200);
      const before = await history(orgB);
      const older = await gwB.call('/data/push', { organization_id: orgB, timestamp: new Date(t - 60_000).toISOString(), data: snapshot('old') });
      assert.equal(older.status, 409);
      assert.equal(older.body.code, 'STALE_SNAPSHOT');
      assert.equal(await history(orgB), before);
    });
  });

  it('keeps the current snapshot and the 3 before it, and can restore one when the org is stopped', async () => {
    const orgD = randomOrg();
    const r = await startOrg(orgD);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const g = gatewayOf(r.body.gateway_id);
    await g.waitLoaded(orgD);
    const pushed: unknown[] = [];
    for (let i = 1; i <= 6; i += 1) {
      const data = snapshot(`d${i}`);
      pushed.push(data);
      assert.equal((await g.call('/data/push', { organization_id: orgD, data })).status, 200);
    }
    const h = await store.history(orgD);
    assert.deepEqual(h.map((v) => v.version), [6, 5, 4, 3]);
    await assert.rejects(store.restore(orgD, 4), /ORGANIZATION_ACTIVE|holds gateway/);
    assert.equal((await g.call('/stop', { organization_id: orgD, data: snapshot('final') })).status, 200);
    const restored = await store.restore(orgD, 4);
    assert.equal(restored.version, 8);
    assert.deepEqual((await store.pull(orgD)).data, pushed[3]);
  });

  it('a gateway that cannot take the organization is quarantined and the retry gets another one', async () => {
    const readyNames = (await admin.list()).filter((l) => l.state === 'ready').map((l) => l.name);
    assert.ok(readyNames.length >= 2);
    const free = readyNames.map(gatewayOf);
    free.forEach((g) => (g.accepting = false));
    const orgE = randomOrg();
    const r = await startOrg(orgE);
    assert.equal(r.status, 502);
    assert.deepEqual([r.body.code, r.body.retryable], ['GATEWAY_UNREACHABLE', true]);
    const broken = (await admin.list()).filter((l) => l.state === 'registered' && readyNames.includes(l.name)).map((l) => l.name);
    assert.equal(broken.length, 1, 'the broken gateway is out of the pool until it calls /gateway/ready');
    assert.equal(await admin.getAllocation(orgE), undefined);
    assert.equal(await dig(s.pdnsDnsPort, `org-${orgE}.${domain}`), 'NXDOMAIN');
    free.forEach((g) => (g.accepting = true));
    const retry = await startOrg(orgE);
    assert.equal(retry.status, 200, JSON.stringify(retry.body));
    assert.notEqual(retry.body.gateway_id, broken[0]);
    await gatewayOf(retry.body.gateway_id).waitLoaded(orgE);
    assert.equal((await gatewayOf(broken[0]).ready()).body.state, 'ready');
    assert.equal((await gatewayOf(retry.body.gateway_id).call('/stop', {})).status, 200);
  });

  describe('sign of life: every authenticated gateway call counts, the reaper frees only silent gateways', () => {
    const SILENCE_MS = 3000;

    /** Frees what earlier tests left allocated, so this block has its own gateways whatever ran before. */
    before(async () => {
      for (const l of await admin.list()) {
        if (l.state === 'allocated' && l.organizationId) await admin.release(l.organizationId);
      }
      for (const g of gateways) g.reset();
      for (const l of await admin.list()) {
        if (l.state === 'registered') assert.equal((await gatewayOf(l.name).ready()).status, 200);
      }
    });

    async function startLoaded(): Promise<{ orgId: string; gw: FakeGateway }> {
      const orgId = randomOrg();
      const r = await startOrg(orgId);
      assert.equal(r.status, 200, JSON.stringify(r.body));
      const gw = gatewayOf(r.body.gateway_id);
      await gw.waitLoaded(orgId);
      return { orgId, gw };
    }

    async function silentForMs(name: string): Promise<number> {
      const rows = await adminPool.query<{ ms: number }>(
        `SELECT extract(epoch FROM now() - coalesce(last_heartbeat_at, state_since)) * 1000 AS ms FROM "${schema}".gateways WHERE name = $1`,
        [name],
      );
      return Number(rows.rows[0].ms);
    }

    async function makeSilentForAnHour(name: string): Promise<void> {
      await adminPool.query(`UPDATE "${schema}".gateways SET last_heartbeat_at = now() - interval '1 hour', state_since = now() - interval '1 hour' WHERE name = $1`, [name]);
      assert.ok((await silentForMs(name)) > 3_000_000);
    }

    it('push, pull, heartbeat and the /config token rotation each refresh last_heartbeat_at', async () => {
      const { orgId, gw } = await startLoaded();
      try {
        const calls: Array<[string, () => Promise<number>]> = [
          ['push', async () => (await gw.call('/data/push', { organization_id: orgId, data: snapshot('alive') })).status],
          ['pull', async () => (await gw.call('/data/pull', { organization_id: orgId })).status],
          ['heartbeat', async () => (await gw.call('/heartbeat', {})).status],
          // What /gateway/config does once the handshake is consumed (the fake gateway played it already).
          ['config (rotateToken)', async () => ((gw.token = await admin.rotateToken(orgId)), 200)],
        ];
        for (const [what, call] of calls) {
          await makeSilentForAnHour(gw.name);
          assert.equal(await call(), 200, what);
          const silent = await silentForMs(gw.name);
          assert.ok(silent < 2000, `${what} did not count as a sign of life: silent for ${Math.round(silent)} ms`);
        }
      } finally {
        await admin.release(orgId).catch(() => undefined);
        gw.reset();
      }
    });

    it(`a gateway that only pushes (every 1 s) keeps its organization across reaper passes (silence limit ${SILENCE_MS} ms); a silent one and then the quiet pusher are released`, async () => {
      const silent = await startLoaded();
      const pusher = await startLoaded();
      const last = snapshot('last-words');
      assert.equal((await silent.gw.call('/data/push', { organization_id: silent.orgId, data: last })).status, 200);
      let pushes = 0;
      let pushFailure: string | undefined;
      const timer = setInterval(() => {
        pusher.gw
          .call('/data/push', { organization_id: pusher.orgId, data: snapshot(`push-${pushes}`) })
          .then((r) => (r.status === 200 ? (pushes += 1) : (pushFailure = `${r.status} ${JSON.stringify(r.body)}`)))
          .catch((e: Error) => (pushFailure = e.message));
      }, 1000);
      const t0 = Date.now();
      let passes = 0;
      const reapedPusherAt: number[] = [];
      try {
        // Reaper passes every 250 ms until the silent one is gone AND 3 silence limits have passed
        // (a pusher whose pushes did not count would have been reaped twice over by then).
        let silentReleasedAfter: number | undefined;
        while (silentReleasedAfter === undefined || Date.now() - t0 < 3 * SILENCE_MS) {
          assert.ok(Date.now() - t0 < 20_000, `the silent gateway was not reaped within 20 s (${passes} passes)`);
          const report = await admin.reapStale(SILENCE_MS);
          passes += 1;
          if (report.released.some((x) => x.gateway === pusher.gw.name)) reapedPusherAt.push(Date.now() - t0);
          if (silentReleasedAfter === undefined && (await admin.getAllocation(silent.orgId)) === undefined) silentReleasedAfter = Date.now() - t0;
          await new Promise((r) => setTimeout(r, 250));
        }
        assert.deepEqual(reapedPusherAt, [], `the pushing gateway was reaped (after ${reapedPusherAt[0]} ms, ${pushes} pushes)`);
        assert.equal(pushFailure, undefined);
        assert.ok(pushes >= 6, `only ${pushes} pushes in ${Date.now() - t0} ms`);
        assert.ok(passes >= 10, `only ${passes} reaper passes`);
        assert.equal((await admin.getAllocation(pusher.orgId))?.name, pusher.gw.name);
        assert.ok(silentReleasedAfter >= SILENCE_MS - 1000, `released after ${silentReleasedAfter} ms, before its silence limit`);
        assert.deepEqual((await store.pull(silent.orgId)).data, last);
        const late = await silent.gw.call('/stop', {});
        assert.deepEqual([late.status, late.body.already_released], [200, true]);
      } finally {
        clearInterval(timer);
      }
      // The pusher goes quiet: the next passes release it.
      const quietSince = Date.now();
      while ((await admin.getAllocation(pusher.orgId)) !== undefined) {
        assert.ok(Date.now() - quietSince < SILENCE_MS + 10_000, 'the pusher that went quiet was not reaped');
        await admin.reapStale(SILENCE_MS);
        await new Promise((r) => setTimeout(r, 250));
      }
      assert.ok(Date.now() - quietSince >= SILENCE_MS - 1500, `reaped ${Date.now() - quietSince} ms after going quiet`);
      console.log(`      reaper: ${passes} passes, ${pushes} pushes kept the pusher; it was reaped ${Date.now() - quietSince} ms after going quiet`);
      silent.gw.reset();
      pusher.gw.reset();
    });
  });
});
