import { strict as assert } from 'assert';
import { ChildProcess, spawn } from 'child_process';
import { randomBytes } from 'crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'fs';
import * as http from 'http';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import * as tls from 'tls';
import { build } from 'esbuild';
import { Pool } from 'pg';
import { GatewayAllocator, OrgDataStore } from '../../runtime';
import { allocatorSettingsEnv, testAllocatorOptions } from '../helpers/allocator-settings';
import { encodeFrame, FrameDecoder, OPCODES } from '../../runtime/gateway-app/websocket';
import { callApi } from '../helpers/fake-gateway';
import { randomOrg } from '../helpers/fixtures';
import { requireServices, TestServices } from '../helpers/services';
import { curlThroughStage1, Stage1Nginx } from '../helpers/stage1-nginx';
import { suiteNames, zoneWithStage1, removeZoneAndSchemas } from '../helpers/suite-setup';

const ROOT = path.resolve(__dirname, '..', '..');
const IDLE_MS = 2000;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/** Polls `probe` until it returns a value; fails naming `what` after `timeoutMs`. */
async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined | false> | T | undefined | false): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function httpJson(port: number, method: string, urlPath: string, body?: unknown): Promise<{ status: number; body: Record<string, unknown>; text: string }> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request({ host: '127.0.0.1', port, method, path: urlPath, headers: data ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } : {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: Record<string, unknown> = {};
        try {
          parsed = JSON.parse(text) as Record<string, unknown>;
        } catch {
          /* HTML */
        }
        resolve({ status: res.statusCode ?? 0, body: parsed, text });
      });
    });
    req.on('error', reject);
    req.end(data);
  });
}

/** Opens wss://<fqdn>/ws through the stage-1 nginx (verifying its certificate), sends one text message, returns the echo. */
function wsEchoThroughStage1(nginx: Stage1Nginx, fqdn: string, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = tls.connect({ host: '127.0.0.1', port: nginx.httpsPort, servername: fqdn, ca: readFileSync(nginx.caFile) });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`no WebSocket echo from ${fqdn} within 10 s`));
    }, 10_000);
    let buf = Buffer.alloc(0);
    let upgraded = false;
    const decoder = new FrameDecoder(false);
    sock.on('secureConnect', () => {
      sock.write(`GET /ws HTTP/1.1\r\nHost: ${fqdn}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    });
    sock.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (!upgraded) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.subarray(0, end).toString();
        if (!head.startsWith('HTTP/1.1 101')) {
          clearTimeout(timer);
          sock.destroy();
          reject(new Error(`upgrade refused: ${head.split('\r\n')[0]}`));
          return;
        }
        upgraded = true;
        buf = buf.subarray(end + 4);
        sock.write(encodeFrame(OPCODES.text, Buffer.from(text), { mask: randomBytes(4) }));
      }
      const frame = decoder.push(buf).find((f) => f.opcode === OPCODES.text);
      buf = Buffer.alloc(0);
      if (frame) {
        clearTimeout(timer);
        sock.end(encodeFrame(OPCODES.close, Buffer.from([0x03, 0xe8]), { mask: randomBytes(4) }));
        resolve(frame.payload.toString());
      }
    });
    sock.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

type LogLine = Record<string, unknown> & { event?: string };

/** The default app as the image runs it: one bundled file under plain node. */
class AppProcess {
  readonly lines: LogLine[] = [];
  output = '';
  exit: Promise<number | null>;
  private child: ChildProcess;

  constructor(bundle: string, env: NodeJS.ProcessEnv) {
    this.child = spawn(process.execPath, [bundle], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let partial = '';
    this.child.stdout?.on('data', (d: Buffer) => {
      this.output += d.toString();
      partial += d.toString();
      const parts = partial.split('\n');
      partial = parts.pop() ?? '';
      for (const p of parts) {
        try {
          this.lines.push(JSON.parse(p) as LogLine);
        } catch {
          this.lines.push({ event: 'unparsed', text: p });
        }
      }
    });
    this.child.stderr?.on('data', (d: Buffer) => (this.output += d.toString()));
    this.exit = new Promise((r) => this.child.on('exit', (code) => r(code)));
  }

  /** Waits for a log line (at or after index `from`). */
  waitLog(what: string, pred: (l: LogLine) => boolean, from = 0, timeoutMs = 15_000): Promise<LogLine> {
    return waitFor(`app log: ${what}\n--- app output ---\n${this.output.slice(-3000)}`, timeoutMs, () => this.lines.slice(from).find(pred));
  }

  stateLine(to: string, from = 0, timeoutMs?: number): Promise<LogLine> {
    return this.waitLog(`state → ${to}`, (l) => l.event === 'gateway.state' && l.to === to, from, timeoutMs);
  }

  signal(sig: NodeJS.Signals): void {
    if (this.child.exitCode === null) this.child.kill(sig);
  }

  async kill(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGKILL');
    await this.exit;
  }
}

describe('gateway default app against the real API server (PostgreSQL, PowerDNS, stage-1 nginx)', function () {
  this.timeout(120_000);
  let s: TestServices;
  let nginx: Stage1Nginx;
  let domain: string;
  let schema: string;
  let env: string;
  let api: ChildProcess | undefined;
  let apiUrl: string;
  let admin: GatewayAllocator;
  let adminPool: Pool;
  let store: OrgDataStore;
  let tmp: string;
  let bundle: string;
  let app: AppProcess | undefined;
  let appPort: number;
  let gatewayName: string;
  const registrationToken = randomBytes(24).toString('base64url');
  const buildId = `itest-${randomBytes(4).toString('hex')}`;

  async function gatewayRow(): Promise<{ state: string; organizationId: string | null; lastHeartbeatAt: string | null }> {
    const row = (await admin.list()).find((g) => g.name === gatewayName);
    assert.ok(row, `${gatewayName} is not in the pool`);
    return row;
  }

  async function startOrg(orgId: string): Promise<Record<string, unknown>> {
    const r = await callApi(apiUrl, '/start', { organization_id: orgId }, { 'x-test-user': 'alice' });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return r.body;
  }

  async function startApp(): Promise<AppProcess> {
    const p = new AppProcess(bundle, {
      PATH: process.env.PATH,
      GANYMEDE_URL: apiUrl,
      GATEWAY_ID: gatewayName,
      GATEWAY_TOKEN: registrationToken,
      GATEWAY_IDLE_TIMEOUT_MS: String(IDLE_MS),
      // Long: the pushes seen here are the idle stop's and the shutdown's (the unit tests cover the periodic one).
      GATEWAY_PUSH_INTERVAL_MS: '600000',
      GATEWAY_HEARTBEAT_INTERVAL_MS: '300',
      APP_LISTEN: `127.0.0.1:${appPort}`,
      BUILD_INFO_FILE: path.join(tmp, 'BUILD_INFO.txt'),
    });
    app = p;
    await p.stateLine('ready');
    return p;
  }

  before(async function () {
    s = requireServices(this);
    ({ domain, schema, env } = suiteNames('gwapp'));
    gatewayName = `gw-pool-${env}-0`;
    tmp = mkdtempSync(path.join(os.tmpdir(), 'gateway-app-it-'));
    bundle = path.join(tmp, 'app-gateway', 'main.js');
    await build({ entryPoints: [path.join(ROOT, 'runtime/gateway-app/main.ts')], bundle: true, platform: 'node', target: 'node20', outfile: bundle, logLevel: 'silent' });
    writeFileSync(path.join(tmp, 'BUILD_INFO.txt'), `build_id=${buildId}\nenv=${env}\n`);
    nginx = await zoneWithStage1(s, domain);
    admin = new GatewayAllocator(testAllocatorOptions(s, nginx, { env, domain, schema }));
    await admin.migrate();
    adminPool = new Pool({ connectionString: s.pgUrl, max: 2 });
    store = new OrgDataStore({ pg: adminPool, schema });
    appPort = await freePort();
    // What the built-in API server does with the stack's inventory at start.
    await admin.registerGateways([{ name: gatewayName, host: '127.0.0.1', httpPort: appPort, vpnPort: 49100 }]);
    await admin.setRegistrationTokens({ [gatewayName]: registrationToken });
    const apiPort = await freePort();
    apiUrl = `http://127.0.0.1:${apiPort}`;
    const child = spawn(process.execPath, ['-r', 'ts-node/register/transpile-only', path.join(ROOT, 'test/fixtures/api-server/main.ts')], {
      cwd: ROOT,
      env: { ...process.env, API_PORT: String(apiPort), ...allocatorSettingsEnv(s, nginx, { env, domain, schema }) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    api = child;
    let out = '';
    child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
    await waitFor(`the API server to listen on ${apiPort}: ${out}`, 30_000, () => {
      if (child.exitCode !== null) throw new Error(`API exited ${child.exitCode}: ${out}`);
      return out.includes('listening');
    });
  });

  afterEach(async () => {
    await app?.kill();
    app = undefined;
    // Leave the pool as the next test expects it: the gateway free, whatever the test did.
    if (admin) {
      const row = (await admin.list()).find((g) => g.name === gatewayName);
      if (row?.organizationId) await admin.release(row.organizationId).catch(() => undefined);
    }
  });

  after(async () => {
    await app?.kill();
    if (api && api.exitCode === null) {
      api.kill('SIGKILL');
    }
    await admin?.close();
    await adminPool?.end();
    nginx?.destroy();
    await removeZoneAndSchemas(s, domain, schema);
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  it('registers, serves a started organization, and after the idle timeout pushes, stops and serves the next allocation its data', async () => {
    const p = await startApp();
    assert.equal((await gatewayRow()).state, 'ready', 'registered through /gateway/ready with GATEWAY_TOKEN');
    const org = randomOrg();
    const started = await startOrg(org);
    assert.equal(started.gateway_id, gatewayName);
    await p.stateLine('serving');
    const fqdn = String(started.fqdn);

    // The request path: stage-1 nginx (TLS, the org's route) → the app.
    const page = await curlThroughStage1(nginx, fqdn, '/');
    assert.equal(page.status, 200);
    assert.match(page.body, new RegExp(`id="org">${org}<`));
    assert.match(page.body, new RegExp(`id="build">${buildId}<`));
    assert.match(page.body, /id="org-name">Org /, 'the organization config from /gateway/config');
    const health = await curlThroughStage1(nginx, fqdn, '/healthz');
    assert.equal((JSON.parse(health.body) as { buildId: string }).buildId, buildId);
    assert.equal(await wsEchoThroughStage1(nginx, fqdn, `hello ${org}`), `hello ${org}`, 'the WebSocket echo through stage 1');
    await waitFor('a heartbeat in the pool', 10_000, async () => (await gatewayRow()).lastHeartbeatAt);

    const changedAt = p.lines.length;
    assert.equal((await httpJson(appPort, 'POST', '/_app/data', { increment: 5 })).status, 200);
    const changed = await httpJson(appPort, 'POST', '/_app/data', { note: 'kept across allocations' });
    assert.deepEqual((changed.body.data as { counter: number }).counter, 5);
    const status = await httpJson(appPort, 'GET', '/_app/status');
    assert.deepEqual([status.body.state, status.body.organization_id, status.body.build, status.body.gateway_id, status.body.dirty], ['serving', org, buildId, gatewayName, true]);

    // Idle: push → stop → ready, in that order, with no restart.
    const stopping = await p.waitLog('idle stop', (l) => l.event === 'gateway.state' && l.to === 'stopping' && l.reason === 'idle', changedAt, IDLE_MS + 10_000);
    const pushed = await p.waitLog('the idle push', (l) => l.event === 'gateway.pushed' && l.reason === 'idle', changedAt);
    const released = await p.waitLog('the release', (l) => l.event === 'gateway.released', changedAt);
    const ready = await p.stateLine('ready', p.lines.indexOf(released));
    assert.ok(p.lines.indexOf(stopping) < p.lines.indexOf(pushed) && p.lines.indexOf(pushed) < p.lines.indexOf(released) && p.lines.indexOf(released) < p.lines.indexOf(ready));
    assert.ok(Date.parse(String(stopping.time)) - Date.parse(String(changed.body.data && (changed.body.data as { updated_at: string }).updated_at)) >= IDLE_MS - 50, 'not before the idle timeout');
    const row = await gatewayRow();
    assert.deepEqual([row.state, row.organizationId], ['ready', null]);
    assert.notEqual((await curlThroughStage1(nginx, fqdn, '/')).status, 200, "the org's route is gone");
    const storedNow = await store.pull(org);
    assert.deepEqual((storedNow.data as { gateway_state: Record<string, unknown> }).gateway_state.default_app, { counter: 5, notes: ['kept across allocations'], updated_at: (changed.body.data as { updated_at: string }).updated_at });
    assert.equal(p.lines.filter((l) => l.event === 'app.listening').length, 1, 'the same process all along');

    // The next allocation of the organization pulls what was pushed.
    const again = p.lines.length;
    await startOrg(org);
    await p.stateLine('serving', again);
    const back = await httpJson(appPort, 'GET', '/_app/status');
    assert.deepEqual((back.body.data as { counter: number; notes: string[] }).counter, 5);
    assert.deepEqual((back.body.data as { notes: string[] }).notes, ['kept across allocations']);
    for (const secret of [registrationToken]) assert.ok(!p.output.includes(secret), 'the registration token is in the log');
    assert.ok(!/gateway_token|handshake_token|Bearer/.test(p.output), 'a token field in the log');
  });

  it('SIGTERM pushes the organization data, releases the gateway and exits 0', async () => {
    const p = await startApp();
    const org = randomOrg();
    await startOrg(org);
    await p.stateLine('serving');
    assert.equal((await httpJson(appPort, 'POST', '/_app/data', { increment: 3 })).status, 200);
    p.signal('SIGTERM');
    assert.equal(await p.exit, 0, p.output);
    assert.ok(p.lines.some((l) => l.event === 'gateway.pushed' && l.reason === 'shutdown'), p.output);
    const stored = await store.pull(org);
    assert.equal(((stored.data as unknown as { gateway_state: Record<string, { counter: number }> }).gateway_state.default_app).counter, 3);
    const row = await gatewayRow();
    assert.deepEqual([row.state, row.organizationId], ['ready', null]);
  });

  it('refuses malformed /collab/start bodies and ignores a forged handshake', async () => {
    const p = await startApp();
    const bad = await httpJson(appPort, 'POST', '/collab/start', { handshake_token: 'short', organization_id: randomOrg() });
    assert.deepEqual([bad.status, bad.body.code], [400, 'INVALID_ARGUMENT']);
    const other = await httpJson(appPort, 'POST', '/collab/start', { handshake_token: randomBytes(24).toString('base64url'), organization_id: randomOrg(), gateway_id: 'gw-someone-else' });
    assert.deepEqual([other.status, other.body.code], [403, 'FORBIDDEN']);
    const from = p.lines.length;
    const forged = await httpJson(appPort, 'POST', '/collab/start', { handshake_token: randomBytes(24).toString('base64url'), organization_id: randomOrg(), gateway_id: gatewayName });
    assert.equal(forged.status, 202);
    const failed = await p.waitLog('the forged handshake to fail', (l) => l.event === 'gateway.handshake_failed', from);
    assert.deepEqual([failed.code, failed.status], ['HANDSHAKE_INVALID', 401]);
    assert.equal((await httpJson(appPort, 'GET', '/_app/status')).body.state, 'ready');
    assert.equal((await gatewayRow()).state, 'ready');
  });
});
