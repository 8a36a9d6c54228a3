import { strict as assert } from 'assert';
import { execFileSync, spawn } from 'child_process';
import { randomBytes } from 'crypto';
import { existsSync, mkdtempSync, readdirSync, rmSync, unlinkSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import axios from 'axios';
import { naming } from '../../runtime';
import { callApi, FakeGateway } from '../helpers/fake-gateway';
import { randomOrg } from '../helpers/fixtures';
import { ApiServerProcess, bundleRuntime, suiteRuntimeFiles, writeRuntimeFiles, type LogLine } from '../helpers/runtime-process';
import { TestServices, requireServices } from '../helpers/services';
import { freePorts } from '../helpers/ports';
import { Stage1Nginx, curlThroughStage1, dig } from '../helpers/stage1-nginx';
import { suiteNames, zoneWithStage1, removeZoneAndSchemas } from '../helpers/suite-setup';

// Ports are picked in the before-all hook (test/helpers/ports.ts: free, below the ephemeral range), never fixed numbers.
let httpsPort = 0;
let statusPort = 0;
let apiPort = 0;
let apiUrl = '';
let appPort = 0;
const OPERATOR_TOKEN = randomBytes(24).toString('base64url');

interface Answer {
  status: number;
  body: Record<string, unknown>;
}

async function http(method: 'GET' | 'POST', urlPath: string, token: string | null = OPERATOR_TOKEN, body?: unknown): Promise<Answer> {
  const res = await axios.request({
    method,
    url: `${apiUrl}${urlPath}`,
    data: body,
    headers: token ? { authorization: `Bearer ${token}` } : {},
    validateStatus: () => true,
  });
  return { status: res.status, body: res.data as Record<string, unknown> };
}

function snapshot(seed: string): { yjs_state: Record<string, string>; gateway_state: Record<string, unknown> } {
  return { yjs_state: { 'project-1': Buffer.from(seed).toString('base64') }, gateway_state: { seed } };
}

describe('built-in API server (bundled runtime/server/main.ts as a child process; real PostgreSQL, PowerDNS, nginx, dev CA)', function () {
  this.timeout(180_000);
  let s: TestServices;
  let nginx: Stage1Nginx;
  let domain: string;
  let schema: string;
  let env: string;
  let tmp: string;
  let bundle: string;
  let server: ApiServerProcess;
  const gateways: FakeGateway[] = [];
  let secretValues: string[];

  /** (Re)writes the runtime files; `api` overrides settings of the api section (the reaper test shortens it). */
  function writeConfig(api: Record<string, unknown> = {}, poolSize = gateways.length, only?: { name: string; port: number; token: string }): string {
    const inventory = only
      ? [{ name: only.name, host: '127.0.0.1', httpPort: only.port, vpnPort: 49199 }]
      : gateways.slice(0, poolSize).map((g, i) => ({ name: g.name, host: '127.0.0.1', httpPort: g.port, vpnPort: 49100 + i }));
    const tokens = only ? { [only.name]: only.token } : Object.fromEntries(gateways.map((g) => [g.name, g.registrationToken]));
    const files = suiteRuntimeFiles(s, nginx, { env, domain, schema }, inventory, tokens, {
      operatorToken: OPERATOR_TOKEN,
      apiPort,
      tls: { mode: 'mkcert', caroot: path.dirname(nginx.caFile) },
      orgCertificateKey: randomBytesKey,
      api,
    });
    secretValues = [OPERATOR_TOKEN, String(files.secrets.databasePassword), s.pdnsApiKey, randomBytesKey, ...Object.values(tokens)];
    return writeRuntimeFiles(tmp, files);
  }
  const randomBytesKey = randomBytes(32).toString('base64');

  async function restart(signal: NodeJS.Signals, api: Record<string, unknown> = {}, poolSize = gateways.length, only?: { name: string; port: number; token: string }): Promise<number> {
    await server.stop(signal);
    writeConfig(api, poolSize, only);
    const from = server.logs.length;
    await server.start();
    return from;
  }

  async function readyAll(): Promise<void> {
    for (const g of gateways) {
      g.accepting = true;
      const r = await g.ready();
      assert.equal(r.status, 200, `${g.name} /gateway/ready: ${JSON.stringify(r.body)}`);
    }
  }

  function gatewayOf(name: unknown): FakeGateway {
    const g = gateways.find((x) => x.name === name);
    assert.ok(g, `no fake gateway ${String(name)}`);
    return g;
  }

  /** Operator start of a new organization, until its gateway has loaded it. */
  async function startOrg(): Promise<{ org: string; gw: FakeGateway; body: Record<string, unknown> }> {
    await readyAll();
    const org = randomOrg();
    const r = await http('POST', `/operator/organizations/${org}/start`);
    assert.equal(r.status, 200, `${JSON.stringify(r.body)}\nserver log:\n${server.rawStdout.slice(-8).join('\n')}`);
    const gw = gatewayOf(r.body.gateway_id);
    await gw.waitLoaded(org);
    return { org, gw, body: r.body };
  }

  const routeFile = (org: string): string | undefined => readdirSync(path.join(nginx.confDir, 'routes')).find((f) => f.includes(org));

  before(async function () {
    s = requireServices(this);
    ({ domain, schema, env } = suiteNames('srv'));
    [httpsPort, statusPort, apiPort, appPort] = await freePorts(4);
    apiUrl = `http://127.0.0.1:${apiPort}`;
    nginx = await zoneWithStage1(s, domain, [httpsPort, statusPort]);
    // Per-organization certificates are loaded by nginx's workers (user nobody) per handshake, so they must read the base key.
    execFileSync('chown', [`${execFileSync('id', ['-u', 'nobody']).toString().trim()}:${execFileSync('id', ['-g', 'nobody']).toString().trim()}`, nginx.keyFile]);
    for (let i = 0; i < 3; i += 1) {
      const g = new FakeGateway(`gw-pool-${env}-${i}`, randomBytes(24).toString('base64url'), apiUrl);
      await g.listen();
      gateways.push(g);
    }
    tmp = mkdtempSync(path.join(os.tmpdir(), 'demiurge-api-server-'));
    bundle = await bundleRuntime('runtime/server/main.ts', tmp, 'api-server.js');
    server = new ApiServerProcess(bundle, writeConfig());
    await server.start();
  });

  after(async () => {
    await server?.stop('SIGKILL');
    await Promise.allSettled(gateways.map((g) => g.close()));
    nginx?.destroy();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
    await removeZoneAndSchemas(s, domain, schema);
  });

  it('registers the inventory at start; a restart re-registers nothing; SIGTERM stops it cleanly', async () => {
    const st = await http('GET', '/operator/status');
    assert.equal(st.status, 200, JSON.stringify(st.body));
    assert.equal(st.body.total, 3);
    assert.deepEqual((st.body.gateways as Array<{ name: string }>).map((g) => g.name).sort(), gateways.map((g) => g.name).sort());
    assert.ok(server.logs.some((l) => l.event === 'inventory.registered'), 'an inventory.registered line at start');
    const before = server.logs.length;
    const code = await server.stop('SIGTERM');
    assert.equal(code, 0, server.stderr);
    assert.ok(server.logs.slice(before).some((l) => l.event === 'server.stopped'), 'server.stopped logged on SIGTERM');
    const from = server.logs.length;
    await server.start();
    const reg = server.logs.slice(from).find((l) => l.event === 'inventory.registered') as LogLine;
    assert.deepEqual([reg.added, reg.updated, reg.retired], [0, 0, 0]);
    const health = await http('GET', '/healthz', null);
    assert.deepEqual([health.status, health.body.database], [200, 'ok']);
  });

  it('a pool resize in the config reaches the pool at the next start (prune), and back', async () => {
    await readyAll();
    const from = await restart('SIGTERM', {}, 2);
    try {
      const reg = server.logs.slice(from).find((l) => l.event === 'inventory.registered') as LogLine;
      assert.equal(reg.retired, 1);
      const st = await http('GET', '/operator/status');
      assert.equal((st.body.byState as Record<string, number>).retired, 1);
      const rejoin = await gateways[2].ready();
      assert.deepEqual([rejoin.status, rejoin.body.code], [401, 'UNAUTHENTICATED'], `a retired gateway cannot rejoin by itself: ${JSON.stringify(rejoin.body)}`);
    } finally {
      const back = await restart('SIGTERM');
      assert.equal((server.logs.slice(back).find((l) => l.event === 'inventory.registered') as LogLine).updated, 1);
      await readyAll();
    }
  });

  it('gateways become ready through /gateway/ready with their registration token', async () => {
    const wrong = await callApi(apiUrl, '/ready', { gateway_id: gateways[0].name }, { authorization: `Bearer ${gateways[1].registrationToken}` });
    assert.equal(wrong.status, 401);
    await readyAll();
    const st = await http('GET', '/operator/status');
    assert.equal((st.body.byState as Record<string, number>).registered, 0);
  });

  it('operator start: allocated, DNS + route + dev-CA certificate live, data push/pull; operator stop releases', async () => {
    const { org, gw, body } = await startOrg();
    assert.equal(body.state, 'allocated');
    assert.equal(body.gateway_url, `https://org-${org}.${domain}`);
    assert.equal(body.certificate, 'ready');
    assert.equal(gw.lastConfig?.organization_id, org);
    assert.equal(gw.lastStart?.ganymede_url, apiUrl, '/collab/start carries api.gatewayUrl as ganymede_url');
    const again = await http('POST', `/operator/organizations/${org}/start`);
    assert.deepEqual([again.status, again.body.status, again.body.created], [200, 'ready', false]);
    const fqdn = `org-${org}.${domain}`;
    assert.deepEqual(await dig(s.pdnsDnsPort, fqdn), ['127.0.0.1']);
    const viaOrg = await curlThroughStage1(nginx, fqdn, '/hello');
    assert.equal(viaOrg.status, 200);
    assert.equal(JSON.parse(viaOrg.body).gateway, gw.name);
    // A nested user-container name verifies against the dev CA (per-organization certificate), no -k.
    const uc = naming.userContainerFqdn('app-1', org, domain);
    const viaUc = await curlThroughStage1(nginx, uc, '/');
    assert.equal(JSON.parse(viaUc.body).gateway, gw.name);

    const pushed = await gw.call('/data/push', { organization_id: org, data: snapshot('first') });
    assert.equal(pushed.status, 200, JSON.stringify(pushed.body));
    const pulled = await gw.call('/data/pull', { organization_id: org });
    assert.deepEqual(pulled.body.data, snapshot('first'));

    const info = await http('GET', `/operator/organizations/${org}`);
    assert.deepEqual([info.status, info.body.gateway_id], [200, gw.name]);
    const stop = await http('POST', `/operator/organizations/${org}/stop`);
    assert.deepEqual([stop.status, stop.body.released, stop.body.gateway_id], [200, true, gw.name]);
    assert.equal(await dig(s.pdnsDnsPort, fqdn), 'NXDOMAIN');
    assert.equal(routeFile(org), undefined);
    const twice = await http('POST', `/operator/organizations/${org}/stop`);
    assert.deepEqual([twice.status, twice.body.code], [409, 'NOT_ALLOCATED']);
    const revoked = await gw.call('/data/pull', { organization_id: org });
    assert.equal(revoked.body.code, 'TOKEN_REVOKED');

    // Logs: JSON lines only, no secret anywhere.
    assert.deepEqual(server.logs.filter((l) => l.event === 'NOT_JSON'), []);
    const all = server.rawStdout.join('\n') + server.stderr;
    for (const secret of secretValues) assert.ok(!all.includes(secret), 'a secret appeared in the server output');
    assert.ok(server.logs.some((l) => l.event === 'gateway.handshake_sent' && l.organizationId === org));
  });

  it('refuses a wrong or missing token (401) and a malformed organization id (400), changing nothing', async () => {
    const allocatedBefore = (await http('GET', '/operator/status')).body.allocatedOrganizations;
    for (const token of ['wrong-token-0123456789abcdef', null]) {
      const st = await http('GET', '/operator/status', token);
      assert.deepEqual([st.status, st.body.code], [401, 'UNAUTHENTICATED']);
      const start = await http('POST', `/operator/organizations/${randomOrg()}/start`, token);
      assert.deepEqual([start.status, start.body.code], [401, 'UNAUTHENTICATED']);
      const user = await callApi(apiUrl, '/start', { organization_id: randomOrg() }, token ? { authorization: `Bearer ${token}` } : {});
      assert.deepEqual([user.status, user.body.code], [401, 'UNAUTHENTICATED']);
    }
    for (const bad of ['not-a-uuid', randomOrg().toUpperCase()]) {
      const r = await http('POST', `/operator/organizations/${bad}/start`);
      assert.deepEqual([r.status, r.body.code], [400, 'INVALID_ORGANIZATION_ID']);
      const stop = await http('POST', `/operator/organizations/${bad}/stop`);
      assert.deepEqual([stop.status, stop.body.code], [400, 'INVALID_ORGANIZATION_ID']);
    }
    const user = await callApi(apiUrl, '/start', { organization_id: 'not-a-uuid' }, { authorization: `Bearer ${OPERATOR_TOKEN}` });
    assert.deepEqual([user.status, user.body.code], [400, 'INVALID_REQUEST']);
    assert.equal((await http('GET', '/operator/nope')).status, 404);
    assert.equal((await http('GET', '/operator/status')).body.allocatedOrganizations, allocatedBefore);
  });

  it('a gateway that never answers /collab/start: 502 GATEWAY_UNREACHABLE, the gateway is quarantined, nothing stays allocated', async () => {
    await readyAll();
    for (const g of gateways) g.accepting = false;
    try {
      const org = randomOrg();
      const r = await http('POST', `/operator/organizations/${org}/start`);
      assert.deepEqual([r.status, r.body.code], [502, 'GATEWAY_UNREACHABLE']);
      assert.deepEqual([(await http('GET', `/operator/organizations/${org}`)).status], [409]);
      assert.equal(await dig(s.pdnsDnsPort, `org-${org}.${domain}`), 'NXDOMAIN');
      const st = await http('GET', '/operator/status');
      assert.ok((st.body.byState as Record<string, number>).registered >= 1, 'the broken gateway is out of the pool');
    } finally {
      await readyAll();
    }
  });

  it('kill -9 and a wiped nginx directory (dev container restart) lose nothing: allocation, data, route rewritten at start', async () => {
    const { org, gw } = await startOrg();
    assert.equal((await gw.call('/data/push', { organization_id: org, data: snapshot('before-crash') })).status, 200);
    assert.equal(await server.stop('SIGKILL'), null);
    // /etc/nginx/demiurge is not on a volume: after a container restart it is empty, and nginx starts afresh
    // (an empty route table: the allocator's base config and route files come back with its reconcile).
    await nginx.stopAndWait();
    for (const f of readdirSync(nginx.confDir)) rmSync(path.join(nginx.confDir, f), { recursive: true, force: true });
    nginx.start();
    assert.equal((await curlThroughStage1(nginx, `org-${org}.${domain}`, '/').catch(() => ({ status: 0 }))).status !== 200, true);
    const from = server.logs.length;
    writeConfig();
    await server.start();
    const rec = server.logs.slice(from).find((l) => l.event === 'pool.reconciled') as LogLine;
    assert.ok(rec && (rec.routesRepaired as number) >= 1, `reconcile at start repaired the route: ${JSON.stringify(rec)}`);
    assert.ok(routeFile(org), 'route file rewritten');
    const via = await curlThroughStage1(nginx, `org-${org}.${domain}`, '/after');
    assert.equal(JSON.parse(via.body).gateway, gw.name);
    const info = await http('GET', `/operator/organizations/${org}`);
    assert.deepEqual([info.status, info.body.gateway_id], [200, gw.name]);
    const pulled = await gw.call('/data/pull', { organization_id: org });
    assert.deepEqual(pulled.body.data, snapshot('before-crash'));
    assert.equal((await http('POST', `/operator/organizations/${org}/stop`)).status, 200);
  });

  it('periodic reconcile repairs a route file deleted while it runs', async () => {
    const from = await restart('SIGTERM', { reconcileIntervalSeconds: 0.5 });
    try {
      const { org } = await startOrg();
      const file = routeFile(org) as string;
      unlinkSync(path.join(nginx.confDir, 'routes', file));
      await server.waitLog((l) => l.event === 'pool.reconciled' && (l.routesRepaired as number) >= 1, 'a periodic reconcile repairing the route', 20_000, from);
      assert.ok(existsSync(path.join(nginx.confDir, 'routes', file)));
      assert.equal((await http('POST', `/operator/organizations/${org}/stop`)).status, 200);
    } finally {
      await restart('SIGTERM');
    }
  });

  it('the periodic reaper releases a gateway that went silent (short settings)', async () => {
    const { org, gw } = await startOrg();
    const from = await restart('SIGTERM', { reaper: { intervalSeconds: 0.5, silenceSeconds: 1.5 } });
    try {
      const reaped = await server.waitLog((l) => l.event === 'pool.reaped' && JSON.stringify(l.released).includes(org), `a pool.reaped line releasing ${org}`, 30_000, from);
      assert.ok(JSON.stringify(reaped.released).includes(gw.name));
      assert.equal(await dig(s.pdnsDnsPort, `org-${org}.${domain}`), 'NXDOMAIN');
      assert.equal((await http('GET', `/operator/organizations/${org}`)).body.code, 'NOT_ALLOCATED');
    } finally {
      await restart('SIGTERM');
    }
  });

  it("the gateway image's default app (runtime/gateway-app, bundled) against it: ready at boot, serves an org, pushes and releases itself when idle", async () => {
    const app = { name: `gw-pool-${env}-app`, port: appPort, token: randomBytes(24).toString('base64url') };
    const appBundle = await bundleRuntime('runtime/gateway-app/main.ts', tmp, 'gateway-app.js');
    const from = await restart('SIGTERM', {}, gateways.length, app);
    const child = spawn(process.execPath, [appBundle], {
      env: { PATH: process.env.PATH, GANYMEDE_URL: apiUrl, GATEWAY_ID: app.name, GATEWAY_TOKEN: app.token, APP_LISTEN: `127.0.0.1:${appPort}`, GATEWAY_IDLE_TIMEOUT_MS: '1500', GATEWAY_PUSH_INTERVAL_MS: '300' },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    try {
      await server.waitLog((l) => l.event === 'gateway.ready' && l.gateway === app.name, `gateway.ready of ${app.name} (the app calls /gateway/ready at boot)`, 30_000, from);
      const org = randomOrg();
      const r = await http('POST', `/operator/organizations/${org}/start`);
      assert.deepEqual([r.status, r.body.gateway_id], [200, app.name], JSON.stringify(r.body));
      await server.waitLog((l) => l.event === 'gateway.loaded' && l.organizationId === org, `gateway.loaded of ${org}`, 20_000, from);
      const page = await curlThroughStage1(nginx, `org-${org}.${domain}`, '/');
      assert.equal(page.status, 200);
      assert.ok(page.body.includes(org), 'the page names the organization it serves');
      await server.waitLog((l) => l.event === 'gateway.released' && l.organizationId === org, `the idle release of ${org}`, 30_000, from);
      assert.equal(await dig(s.pdnsDnsPort, `org-${org}.${domain}`), 'NXDOMAIN');
      // Released to ready (not quarantined): the app takes the next organization without a restart.
      const st = await http('GET', '/operator/status');
      assert.equal((st.body.gateways as Array<{ name: string; state: string }>).find((g) => g.name === app.name)?.state, 'ready');
    } finally {
      child.kill('SIGKILL');
      await restart('SIGTERM');
      await readyAll();
    }
  });

  it('the bundle prints a clear error for a bad config and exits 2', async () => {
    const { execFile } = await import('child_process');
    const run = (args: string[]): Promise<{ code: number; stderr: string; stdout: string }> =>
      new Promise((r) => execFile(process.execPath, [bundle, ...args], { env: { PATH: process.env.PATH } }, (err, stdout, stderr) => r({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr })));
    const missing = await run(['--config', path.join(tmp, 'nope.json')]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /INVALID_CONFIG: cannot read the runtime config file .*nope\.json/);
    const check = await run(['--check', '--config', path.join(tmp, 'config.json')]);
    assert.equal(check.code, 0, check.stderr);
    assert.equal(JSON.parse(check.stdout).gateways, 3);
    assert.equal((await run(['--help'])).code, 0);
    // The CLI bundles the same way and reads the same file.
    const cli = await bundleRuntime('runtime/cli/gateway-pool.ts', tmp, 'gateway-pool.js');
    const st = await new Promise<{ code: number; stdout: string; stderr: string }>((r) =>
      execFile(process.execPath, [cli, 'status', '--json', '--config', path.join(tmp, 'config.json')], { env: { PATH: process.env.PATH } }, (err, stdout, stderr) => r({ code: err ? 1 : 0, stdout, stderr })),
    );
    assert.equal(st.code, 0, st.stderr);
    assert.deepEqual([JSON.parse(st.stdout).envName, JSON.parse(st.stdout).total], [env, 3]);
  });
});
