import { strict as assert } from 'assert';
import { execFile, execFileSync } from 'child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, unlinkSync, writeFileSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Pool } from 'pg';
import { GatewayAllocator } from '../../runtime';
import { allocatorSettingsEnv, testAllocatorOptions } from '../helpers/allocator-settings';
import { deleteZone, dropSchema, gatewayHost, randomOrg, startStandInGateways, suiteId } from '../helpers/fixtures';
import { waitSilent } from '../helpers/pool-state';
import { TestServices, requireServices } from '../helpers/services';
import { Stage1Nginx, curlThroughStage1, dig } from '../helpers/stage1-nginx';
import { suiteRuntimeFiles, writeRuntimeFiles } from '../helpers/runtime-process';
import { zoneWithStage1 } from '../helpers/suite-setup';

const ROOT = path.resolve(__dirname, '..', '..');
const CLI = path.join(ROOT, 'runtime/cli/gateway-pool.ts');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

describe('gateway-pool CLI end to end (real PostgreSQL, PowerDNS, nginx)', function () {
  this.timeout(180_000);
  let s: TestServices;
  let nginx: Stage1Nginx;
  let standIn: { port: number; close: () => Promise<void> };
  let domain: string;
  let tmp: string;
  let pgAdmin: Pool;
  /** The pool the running test works on (usePool): its own env name and schema, so no test sees another's gateways. */
  let schema: string;
  let env: string;
  let baseEnv: NodeJS.ProcessEnv;
  const schemas: string[] = [];
  let poolCounter = 0;

  function cli(args: string[], opts: { env?: NodeJS.ProcessEnv; stdin?: string; bin?: string } = {}): Promise<Run> {
    const argv = opts.bin ? [opts.bin, ...args] : ['-r', 'ts-node/register/transpile-only', CLI, ...args];
    return new Promise((resolve) => {
      const child = execFile(process.execPath, argv, { cwd: ROOT, env: opts.env ?? baseEnv, timeout: 60_000 }, (err, stdout, stderr) => {
        const code = err ? ((err as { code?: number }).code ?? 1) : 0;
        resolve({ code: typeof code === 'number' ? code : 1, stdout, stderr });
      });
      if (opts.stdin !== undefined) child.stdin?.end(opts.stdin);
      else child.stdin?.end();
    });
  }

  function json<T = Record<string, unknown>>(r: Run): T {
    try {
      return JSON.parse(r.stdout) as T;
    } catch {
      throw new Error(`not JSON (exit ${r.code}): ${r.stdout}\n${r.stderr}`);
    }
  }

  function stackOutputs(n: number, extra: Record<string, unknown> = {}): string {
    const inventory = Array.from({ length: n }, (_, i) => ({ name: `gw-pool-${env}-${i}`, host: gatewayHost(i), httpPort: standIn.port, vpnPort: 49100 + i }));
    const tokens = Object.fromEntries(inventory.map((g) => [g.name, `registration-token-${g.name}-0123456789`]));
    return JSON.stringify({ envName: env, domain, gatewayInventory: inventory, gatewayRegistrationTokens: tokens, powerDnsApiKey: 'not used by sync', ...extra });
  }

  /**
   * Set-up of a test: a new pool (env, schema) becomes the CLI's; with `gateways`, that many are
   * registered from the stack inventory and ready, and the first `allocated` organizations hold one.
   */
  async function usePool(setup: { gateways?: number; allocated?: number } = {}): Promise<{ orgs: string[]; holders: string[] }> {
    poolCounter += 1;
    const id = `${suiteId()}${poolCounter}`;
    env = `cli${id}`;
    schema = `cli_${id}`;
    schemas.push(schema);
    baseEnv = { PATH: process.env.PATH, HOME: process.env.HOME, ...allocatorSettingsEnv(s, nginx, { env, domain, schema }) };
    const orgs: string[] = [];
    const holders: string[] = [];
    if (setup.gateways === undefined) return { orgs, holders };
    const a = new GatewayAllocator(testAllocatorOptions(s, nginx, { env, domain, schema }));
    try {
      await a.migrate();
      const inventory = JSON.parse(stackOutputs(setup.gateways)).gatewayInventory as Array<{ name: string; host: string; httpPort: number; vpnPort: number }>;
      await a.registerGateways(inventory);
      // The gateways' own /gateway/ready is the API's job; here the library plays it.
      await a.markReady(inventory.map((g) => g.name));
      for (let i = 0; i < (setup.allocated ?? 0); i += 1) {
        const gw = await a.allocate(randomOrg());
        orgs.push(gw.organizationId);
        holders.push(gw.name);
      }
    } finally {
      await a.close();
    }
    return { orgs, holders };
  }

  before(async function () {
    s = requireServices(this);
    domain = `cli-${suiteId()}.test`;
    nginx = await zoneWithStage1(s, domain);
    standIn = await startStandInGateways();
    tmp = mkdtempSync(path.join(os.tmpdir(), 'demiurge-cli-'));
    pgAdmin = new Pool({ connectionString: s.pgUrl, max: 2 });
  });

  beforeEach(async () => {
    await usePool(); // an empty one, for tests that need none
  });

  after(async () => {
    await standIn?.close();
    nginx?.destroy();
    await pgAdmin?.end();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
    if (s) {
      await deleteZone(s, domain);
      for (const sc of schemas) await dropSchema(s.pgUrl, sc);
    }
  });

  it('usage errors exit 2 and say what is wrong', async () => {
    const none = await cli([]);
    assert.equal(none.code, 2);
    assert.match(none.stdout, /usage: gateway-pool/);
    assert.equal((await cli(['--help'])).code, 0);
    const unknown = await cli(['frobnicate', '--json']);
    assert.equal(unknown.code, 2);
    assert.equal(json(unknown).code, 'USAGE');
    assert.equal((await cli(['status', '--no-such-flag'])).code, 2);
    assert.equal((await cli(['allocate'])).code, 2);
    const missing = await cli(['status'], { env: { PATH: process.env.PATH } });
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /DATABASE_URL/);
    assert.match(missing.stderr, /ENV_NAME/);
    const effectsMissing = await cli(['allocate', randomOrg()], { env: { ...baseEnv, PDNS_API_URL: '' } });
    assert.equal(effectsMissing.code, 2);
    assert.match(effectsMissing.stderr, /PDNS_API_URL/);
  });

  it('sync registers the stack inventory from a file or stdin, idempotently, and refuses another environment', async () => {
    const file = path.join(tmp, 'outputs.json');
    writeFileSync(file, stackOutputs(3));
    const first = await cli(['sync', '--file', file, '--json']);
    assert.equal(first.code, 0, first.stderr);
    const r = json<{ added: string[]; registrationTokens: number }>(first);
    assert.equal(r.added.length, 3);
    assert.equal(r.registrationTokens, 3);
    const again = await cli(['sync'], { stdin: stackOutputs(3) });
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /0 added, 0 updated, 3 unchanged/);
    const wrongEnv = await cli(['sync', '--json'], { stdin: stackOutputs(3, { envName: 'prod' }) });
    assert.equal(wrongEnv.code, 2);
    assert.match(wrongEnv.stderr, /environment prod/);
    const hidden = await cli(['sync'], { stdin: stackOutputs(3, { gatewayRegistrationTokens: '[secret]' }) });
    assert.equal(hidden.code, 0);
    assert.match(hidden.stderr, /--show-secrets/);
    const garbage = await cli(['sync'], { stdin: 'not json' });
    assert.equal(garbage.code, 2);
    const badInventory = await cli(['sync', '--json'], { stdin: JSON.stringify({ gatewayInventory: [{ name: 'Bad Name', host: 'x', httpPort: 0, vpnPort: 1 }] }) });
    assert.equal(badInventory.code, 1);
    assert.equal(json(badInventory).code, 'INVALID_GATEWAY');
  });

  it('sync of an inventory whose names changed but whose endpoints did not: exit 1, INVENTORY_CONFLICT naming the gateways and the fix; --prune settles it', async () => {
    const ownSchema = `${schema}_inv`;
    const envOwn = { ...baseEnv, ALLOCATOR_SCHEMA: ownSchema };
    try {
      assert.equal((await cli(['sync'], { env: envOwn, stdin: stackOutputs(2) })).code, 0);
      const renamed = JSON.parse(stackOutputs(2)) as { gatewayInventory: Array<{ name: string }>; gatewayRegistrationTokens: Record<string, string> };
      renamed.gatewayInventory.forEach((g) => (g.name = g.name.replace(`gw-pool-${env}-`, `gw-pool-${env}-new-`)));
      renamed.gatewayRegistrationTokens = Object.fromEntries(renamed.gatewayInventory.map((g) => [g.name, `registration-token-${g.name}-0123456789`]));
      const refused = await cli(['sync', '--json'], { env: envOwn, stdin: JSON.stringify(renamed) });
      assert.equal(refused.code, 1, refused.stderr);
      const body = json<{ ok: boolean; code: string; retryable: boolean; message: string }>(refused);
      assert.deepEqual([body.ok, body.code, body.retryable], [false, 'INVENTORY_CONFLICT', false]);
      assert.match(body.message, new RegExp(`gw-pool-${env}-new-0 declares .*registered to gw-pool-${env}-0 `));
      assert.match(refused.stderr, /INVENTORY_CONFLICT: .*--prune/);
      const listed = json<Array<{ name: string }>>(await cli(['list', '--json'], { env: envOwn }));
      assert.deepEqual(listed.map((g) => g.name).sort(), [`gw-pool-${env}-0`, `gw-pool-${env}-1`], 'nothing written');
      const pruned = await cli(['sync', '--prune'], { env: envOwn, stdin: JSON.stringify(renamed) });
      assert.equal(pruned.code, 0, pruned.stderr);
      assert.match(pruned.stdout, /2 added, .*2 removed \(endpoint taken by a listed gateway/);
    } finally {
      await dropSchema(s.pgUrl, ownSchema);
    }
  });

  it('status and list, as text and JSON', async () => {
    await usePool({ gateways: 3 });
    const st = await cli(['status', '--json']);
    assert.equal(st.code, 0, st.stderr);
    const status = json<{ total: number; byState: Record<string, number> }>(st);
    assert.equal(status.total, 3);
    assert.equal(status.byState.ready, 3);
    assert.match((await cli(['status'])).stdout, new RegExp(`pool ${env}: 3 gateways \\(ready 3\\)`));
    const list = await cli(['list']);
    assert.equal(list.code, 0);
    const lines = list.stdout.trim().split('\n');
    assert.match(lines[0], /^NAME\s+STATE\s+ORG\s+HOST\s+PORTS\s+SINCE$/);
    assert.equal(lines.length, 4);
    assert.match(lines[1], new RegExp(`^gw-pool-${env}-0\\s+ready\\s+-\\s+127\\.0\\.1\\.1\\s+${standIn.port}/tcp 49100/udp\\s+\\d{4}-`));
    assert.equal(json<unknown[]>(await cli(['list', '--json'])).length, 3);
  });

  it('allocate publishes DNS and the route; the token stays hidden unless asked; a repeat is idempotent', async () => {
    await usePool({ gateways: 3 });
    const org = randomOrg();
    const r = await cli(['allocate', org, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const al = json<{ name: string; created: boolean; token: string; fqdn: string }>(r);
    assert.equal(al.created, true);
    assert.equal(al.token, '(hidden: --show-token)');
    assert.equal(al.fqdn, `org-${org}.${domain}`);
    assert.deepEqual(await dig(s.pdnsDnsPort, al.fqdn), ['127.0.0.1']);
    assert.equal((await curlThroughStage1(nginx, al.fqdn, '/healthz')).status, 200);
    const again = await cli(['allocate', org]);
    assert.equal(again.code, 0);
    assert.match(again.stdout, /already allocated/);
    const list = await cli(['list']);
    assert.match(list.stdout, new RegExp(`${al.name}\\s+allocated\\s+${org}`));
    assert.ok(!list.stdout.includes(s.pdnsApiKey) && !r.stderr.includes(s.pdnsApiKey), 'no secrets in output');
  });

  it('reconcile repairs a deleted route file; exit 0 with a JSON report', async () => {
    const {
      orgs: [org],
    } = await usePool({ gateways: 3, allocated: 1 });
    const routesDir = path.join(nginx.confDir, 'routes');
    const file = readdirSync(routesDir).find((f) => f.includes(org));
    assert.ok(file);
    unlinkSync(path.join(routesDir, file));
    const r = await cli(['reconcile', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(json<{ routesRepaired: string[] }>(r).routesRepaired, [org]);
    assert.ok(existsSync(path.join(routesDir, file)));
  });

  it('refusals exit 1 with the typed code: bad org id, pool exhausted, releasing twice', async () => {
    const {
      orgs: [org],
    } = await usePool({ gateways: 3, allocated: 1 });
    const bad = await cli(['allocate', 'not-a-uuid', '--json']);
    assert.equal(bad.code, 1);
    assert.equal(json(bad).code, 'INVALID_ORGANIZATION_ID');
    for (let i = 0; i < 2; i += 1) {
      const ok = await cli(['allocate', randomOrg()]);
      assert.equal(ok.code, 0, ok.stderr);
    }
    const full = await cli(['allocate', randomOrg(), '--json']);
    assert.equal(full.code, 1);
    assert.equal(json(full).code, 'POOL_EXHAUSTED');
    const rel = await cli(['release', org, '--json']);
    assert.equal(rel.code, 0, rel.stderr);
    assert.equal(await dig(s.pdnsDnsPort, `org-${org}.${domain}`), 'NXDOMAIN');
    const twice = await cli(['release', org, '--json']);
    assert.equal(twice.code, 1);
    assert.equal(json(twice).code, 'NOT_ALLOCATED');
  });

  it('reap releases silent gateways; snapshots lists none for a new org', async () => {
    const { holders } = await usePool({ gateways: 3, allocated: 2 });
    // Silence is measured by PostgreSQL's clock: wait until both allocations are more than 1 s old there.
    await waitSilent(pgAdmin, schema, holders, 1000);
    const r = await cli(['reap', '--max-silence', '1s', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(json<{ released: unknown[] }>(r).released.length, 2);
    const st = json<{ byState: Record<string, number> }>(await cli(['status', '--json']));
    assert.equal(st.byState.ready, 3);
    const snaps = await cli(['snapshots', randomOrg()]);
    assert.equal(snaps.code, 0);
    assert.match(snaps.stdout, /no snapshots/);
    assert.equal((await cli(['reap', '--max-silence', 'soon'])).code, 2);
  });

  it('a database that cannot be reached exits 3 (retry), without echoing the connection string', async () => {
    const url = 'postgres://demiurge_test:sekrit-password@127.0.0.1:1/none';
    const r = await cli(['status', '--json'], { env: { ...baseEnv, DATABASE_URL: url } });
    assert.equal(r.code, 3);
    assert.equal(json(r).code, 'DATABASE_FAILED');
    assert.ok(!r.stdout.includes('sekrit') && !r.stderr.includes('sekrit'));
  });

  it('the built package bin (npm run build -w runtime → runtime/dist/cli/gateway-pool.js) runs with its migrations', async function () {
    execFileSync('npm', ['run', 'build', '--silent', '-w', 'runtime'], { cwd: ROOT, stdio: 'pipe', timeout: 120_000 });
    const bin = path.join(ROOT, 'runtime/dist/cli/gateway-pool.js');
    assert.ok(existsSync(path.join(ROOT, 'runtime/dist/migrations/002_gateway_api.sql')));
    const r = await cli(['migrate', '--json'], { bin });
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await cli(['status'], { bin })).code, 0);
  });

  it('reads the runtime config file (--config or DEMIURGE_RUNTIME_CONFIG); flags and env still win; a bad file exits 2', async () => {
    const inventory = Array.from({ length: 3 }, (_, i) => ({ name: `gw-pool-${env}-${i}`, host: gatewayHost(i), httpPort: standIn.port, vpnPort: 49100 + i }));
    const tokens = Object.fromEntries(inventory.map((g) => [g.name, `registration-token-${g.name}-0123456789`]));
    const dir = mkdtempSync(path.join(tmp, 'runtime-config-'));
    const configFile = writeRuntimeFiles(dir, suiteRuntimeFiles(s, nginx, { env, domain, schema }, inventory, tokens, { operatorToken: 'operator-token-0123456789abcdef', apiPort: 6000 }));
    const bare = { PATH: process.env.PATH, HOME: process.env.HOME };
    const sync = await cli(['sync', '--config', configFile, '--json'], { env: bare });
    assert.equal(sync.code, 0, sync.stderr);
    const synced = json<{ added: string[]; unchanged: string[]; registrationTokens: number }>(sync);
    assert.equal(synced.added.length + synced.unchanged.length, 3);
    assert.equal(synced.registrationTokens, 3);
    const a = new GatewayAllocator(testAllocatorOptions(s, nginx, { env, domain, schema }));
    await a.markReady(inventory.map((g) => g.name));
    await a.close();
    const viaEnv = { ...bare, DEMIURGE_RUNTIME_CONFIG: configFile };
    const st = json<{ envName: string; total: number }>(await cli(['status', '--json'], { env: viaEnv }));
    assert.deepEqual([st.envName, st.total], [env, 3]);
    // Effects (PowerDNS key, nginx paths) come from the file too.
    const org = randomOrg();
    const al = await cli(['allocate', org, '--json'], { env: viaEnv });
    assert.equal(al.code, 0, al.stderr);
    assert.deepEqual(await dig(s.pdnsDnsPort, `org-${org}.${domain}`), ['127.0.0.1']);
    assert.equal((await cli(['release', org], { env: viaEnv })).code, 0);
    assert.ok(!al.stdout.includes(s.pdnsApiKey) && !al.stderr.includes(s.pdnsApiKey), 'no secrets in output');
    // A flag wins over the file; an environment variable too (an unreachable database: exit 3).
    assert.equal(json<{ envName: string }>(await cli(['status', '--json', '--env', 'otherenv'], { env: viaEnv })).envName, 'otherenv');
    assert.equal((await cli(['status', '--json'], { env: { ...viaEnv, DATABASE_URL: 'postgres://x:y@127.0.0.1:1/none' } })).code, 3);
    // Bad files: exit 2 naming the file and the field.
    writeFileSync(configFile, JSON.stringify({ version: 1, envName: 'Not Valid' }));
    const bad = await cli(['status'], { env: viaEnv });
    assert.equal(bad.code, 2);
    assert.ok(bad.stderr.includes(configFile), bad.stderr);
    assert.match(bad.stderr, /envName: got "Not Valid"/);
    const missing = await cli(['status', '--config', path.join(dir, 'nope.json')], { env: bare });
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /nope\.json: it does not exist/);
  });
});
