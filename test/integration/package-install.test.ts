/**
 * The runtime as the API server installs it (issue 14): `npm pack` of the
 * runtime workspace, a fresh consumer project with express, typescript and a
 * pg minor other than ours, then
 * - the README's "Use the runtime from your own API server (Ganymede)" snippet (docs/examples/ganymede.ts)
 *   compiles strict under the four module resolutions, errors inside
 *   node_modules included (skipLibCheck false);
 * - CJS and ESM consumers load every entry, and the ESM one allocates and
 *   releases through its own pg.Pool on a database only that pool knows;
 * - the install holds no @pulumi/* and the runtime's own share stays small.
 */
import { strict as assert } from 'assert';
import { execFile, execFileSync } from 'child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Pool } from 'pg';
import type { GatewaySpec } from '../../runtime';
import { createZone, deleteZone, gatewayHost, randomOrg, startStandInGateways, suiteId } from '../helpers/fixtures';
import { TestServices, requireServices } from '../helpers/services';
import { freePorts } from '../helpers/ports';
import { Stage1Nginx } from '../helpers/stage1-nginx';
import { testAllocatorOptions } from '../helpers/allocator-settings';

const ROOT = path.resolve(__dirname, '..', '..');
const SNIPPET = path.join(ROOT, 'docs', 'examples', 'ganymede.ts');
/** Ours is 8.23.x (package-lock.json); the consumer brings an older minor. */
const CONSUMER_PG = 'pg@8.16.3';
/** The consumer's own dependencies, as an Express + TypeScript API server has them. */
const CONSUMER_DEPS = ['express@5.3.0', CONSUMER_PG, '@types/express@5.0.6', 'typescript@5.9.3'];
/** Issue 14's target for what the runtime adds besides express, pg and their dependencies. */
const MAX_PACKAGES = 15;
const MAX_BYTES = 10 * 1024 * 1024;
const STRICT = { strict: true, exactOptionalPropertyTypes: true, noUncheckedIndexedAccess: true, skipLibCheck: false, noEmit: true, esModuleInterop: true, target: 'ES2022', lib: ['ES2022'] };
const RESOLUTIONS: Record<string, { module: string; moduleResolution: string; files: string[] }> = {
  node10: { module: 'commonjs', moduleResolution: 'node10', files: ['ganymede.ts'] },
  node16: { module: 'node16', moduleResolution: 'node16', files: ['ganymede.ts', 'ganymede.mts'] },
  nodenext: { module: 'nodenext', moduleResolution: 'nodenext', files: ['ganymede.ts', 'ganymede.mts'] },
  bundler: { module: 'esnext', moduleResolution: 'bundler', files: ['ganymede.ts'] },
};

function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env, timeout = 300_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd, env, timeout, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
      resolve({ code, stdout, stderr: err && code === 1 && !stderr ? String(err) : stderr });
    });
  });
}

interface LockEntry {
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
}

/** Installed package directories reachable from `roots` through dependencies (not peers), resolved like node does. */
function closure(consumer: string, roots: string[]): Set<string> {
  const lock = JSON.parse(readFileSync(path.join(consumer, 'node_modules', '.package-lock.json'), 'utf8')) as { packages: Record<string, LockEntry> };
  const resolve = (from: string, name: string): string | undefined => {
    for (let dir = from; ; dir = dir.includes('/node_modules/') ? dir.slice(0, dir.lastIndexOf('/node_modules/')) : '') {
      const key = dir ? `${dir}/node_modules/${name}` : `node_modules/${name}`;
      if (lock.packages[key]) return key;
      if (!dir) return undefined;
    }
  };
  const seen = new Set<string>();
  const queue = roots.map((r) => `node_modules/${r}`).filter((k) => lock.packages[k]);
  while (queue.length > 0) {
    const key = queue.pop() as string;
    if (seen.has(key)) continue;
    seen.add(key);
    const entry = lock.packages[key] as LockEntry;
    for (const name of Object.keys({ ...entry.dependencies, ...entry.optionalDependencies })) {
      const dep = resolve(key, name);
      if (dep) queue.push(dep);
    }
  }
  return seen;
}

/** Bytes of a package directory, without the packages nested in its node_modules (they are counted on their own). */
function packageBytes(dir: string): number {
  let total = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.name === 'node_modules') continue;
    const full = path.join(dir, entry.name);
    total += entry.isDirectory() ? packageBytes(full) : statSync(full).size;
  }
  return total;
}

const mb = (n: number): string => `${(n / 1024 / 1024).toFixed(2)} MB`;

describe('package install: @demiurge/runtime from its tarball in a fresh consumer (pg 8.16, express 5)', function () {
  this.timeout(600_000);
  let s: TestServices;
  let work: string;
  let consumer: string;
  let packedFiles: string[];

  before(async function () {
    s = requireServices(this);
    work = mkdtempSync(path.join(os.tmpdir(), 'demiurge-pkg-'));
    const packed = await run('npm', ['pack', '-w', 'runtime', '--pack-destination', work, '--json', '--silent'], ROOT);
    assert.equal(packed.code, 0, `npm pack -w runtime failed:\n${packed.stderr}`);
    const info = JSON.parse(packed.stdout.slice(packed.stdout.indexOf('['))) as Array<{ filename: string; files: Array<{ path: string }> }>;
    const tarball = path.join(work, (info[0] as { filename: string }).filename.replace(/^@/, '').replace('/', '-'));
    packedFiles = (info[0] as { files: Array<{ path: string }> }).files.map((f) => f.path);
    consumer = path.join(work, 'consumer');
    mkdirSync(consumer);
    writeFileSync(path.join(consumer, 'package.json'), JSON.stringify({ name: 'ganymede-consumer', version: '1.0.0', private: true }, null, 2));
    const installed = await run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error', tarball, ...CONSUMER_DEPS], consumer);
    assert.equal(installed.code, 0, `npm install in the consumer failed:\n${installed.stderr}`);
    copyFileSync(SNIPPET, path.join(consumer, 'ganymede.ts'));
    copyFileSync(SNIPPET, path.join(consumer, 'ganymede.mts'));
  });

  after(() => {
    if (work && !process.env.KEEP_PACKAGE_CONSUMER) rmSync(work, { recursive: true, force: true });
  });

  it('the tarball ships dist JavaScript, declarations, migrations, README and LICENSE, nothing else', () => {
    const unexpected = packedFiles.filter((f) => !/^(dist\/.+\.(js|d\.ts)|dist\/migrations\/[^/]+\.sql|package\.json|README\.md|LICENSE)$/.test(f));
    assert.deepEqual(unexpected, [], 'files outside the list consumers need');
    for (const f of ['README.md', 'LICENSE', 'dist/index.js', 'dist/index.d.ts', 'dist/migrations/001_gateway_pool.sql']) assert.ok(packedFiles.includes(f), `${f} is shipped`);
    const manifest = JSON.parse(readFileSync(path.join(ROOT, 'runtime', 'package.json'), 'utf8')) as { exports: Record<string, string | Record<string, string>>; bin: Record<string, string> };
    const targets = [...Object.values(manifest.exports).flatMap((t) => (typeof t === 'string' ? [t] : Object.values(t))), ...Object.values(manifest.bin)].map((t) => t.replace(/^\.\//, ''));
    const missing = [...new Set(targets)].filter((t) => !packedFiles.includes(t));
    assert.deepEqual(missing, [], 'every exports/bin target is in the tarball');
  });

  it('the install holds no @pulumi/*, and the runtime adds at most 15 packages and 10 MB besides express and pg', () => {
    const lock = JSON.parse(readFileSync(path.join(consumer, 'node_modules', '.package-lock.json'), 'utf8')) as { packages: Record<string, LockEntry> };
    const all = Object.keys(lock.packages);
    assert.deepEqual(all.filter((k) => k.includes('@pulumi/') || k.includes('@opentelemetry/') || k.includes('@grpc/')), [], 'no Pulumi (or its telemetry/grpc) in the consumer');
    const base = closure(consumer, ['express', 'pg']);
    const ours = [...closure(consumer, ['@demiurge/runtime'])].filter((k) => !base.has(k));
    const bytes = ours.reduce((n, k) => n + packageBytes(path.join(consumer, k)), 0);
    const allBytes = all.reduce((n, k) => n + packageBytes(path.join(consumer, k)), 0);
    const baseBytes = [...base].reduce((n, k) => n + packageBytes(path.join(consumer, k)), 0);
    console.log(
      `      @demiurge/runtime adds ${ours.length} packages, ${mb(bytes)} besides express + pg (${base.size} packages, ${mb(baseBytes)}): ${ours.map((k) => k.replace(/^.*node_modules\//, '')).join(', ')}\n` +
        `      whole consumer install (with typescript and @types/express): ${all.length} packages, ${mb(allBytes)}`,
    );
    assert.ok(ours.length <= MAX_PACKAGES, `${ours.length} packages > ${MAX_PACKAGES}`);
    assert.ok(bytes <= MAX_BYTES, `${mb(bytes)} > ${mb(MAX_BYTES)}`);
  });

  it('the README snippet compiles strict (exactOptionalPropertyTypes, noUncheckedIndexedAccess, skipLibCheck false) under node10, node16, nodenext and bundler', async () => {
    const failures: string[] = [];
    for (const [name, r] of Object.entries(RESOLUTIONS)) {
      const config = path.join(consumer, `tsconfig.${name}.json`);
      writeFileSync(config, JSON.stringify({ compilerOptions: { ...STRICT, module: r.module, moduleResolution: r.moduleResolution }, files: r.files }, null, 2));
      const tsc = await run(process.execPath, [path.join(consumer, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', config], consumer);
      if (tsc.code !== 0) failures.push(`${name}:\n${tsc.stdout}${tsc.stderr}`);
    }
    assert.deepEqual(failures, [], 'type errors in the consumer');
  });

  it('a CommonJS consumer requires every entry; none loads @pulumi/*; the CLIs answer --help', async () => {
    writeFileSync(
      path.join(consumer, 'entries.cjs'),
      `const manifest = require('@demiurge/runtime/package.json');
const loaded = {};
for (const entry of Object.keys(manifest.exports)) {
  if (entry === './package.json') continue;
  const name = entry === '.' ? '@demiurge/runtime' : '@demiurge/runtime/' + entry.slice(2);
  loaded[name] = Object.keys(require(name)).sort();
}
const pulumi = Object.keys(require.cache).filter((f) => f.includes('@pulumi'));
console.log(JSON.stringify({ loaded, pulumi }));
`,
    );
    const r = await run(process.execPath, ['entries.cjs'], consumer);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { loaded: Record<string, string[]>; pulumi: string[] };
    assert.deepEqual(out.pulumi, []);
    assert.ok(out.loaded['@demiurge/runtime']?.includes('GatewayAllocator'));
    assert.ok(!out.loaded['@demiurge/runtime']?.includes('SimulatedCrash'), 'test hooks are not in the main entry');
    assert.ok(out.loaded['@demiurge/runtime/express']?.includes('createGatewayRouter'));
    assert.ok(out.loaded['@demiurge/runtime/testing']?.includes('withFailpoints'));
    for (const bin of ['gateway-pool', 'demiurge-tls-renew', 'demiurge-api-server']) {
      const help = await run(path.join(consumer, 'node_modules', '.bin', bin), ['--help'], consumer);
      assert.equal(help.code, 0, `${bin} --help: ${help.stderr}`);
      assert.match(help.stdout + help.stderr, /usage/i, `${bin} --help prints its usage`);
    }
  });

  describe('allocate and release through the consumer\'s own pg.Pool', () => {
    let nginx: Stage1Nginx;
    let standIn: { port: number; close: () => Promise<void> };
    let domain: string;
    let database: string;
    let databaseUrl: string;

    before(async () => {
      domain = `pkg-${suiteId()}.test`;
      await createZone(s, domain);
      const [httpsPort, statusPort] = await freePorts(2);
      nginx = new Stage1Nginx(domain, httpsPort, statusPort);
      nginx.start();
      standIn = await startStandInGateways();
      // A database only the consumer's pool is pointed at; the test role cannot create databases, the cluster's admin can.
      database = `pkg_${suiteId()}`;
      execFileSync('su', ['postgres', '-c', `psql -v ON_ERROR_STOP=1 -qAt -p ${new URL(s.pgUrl).port} -d postgres -c 'CREATE DATABASE ${database} OWNER ${new URL(s.pgUrl).username}'`], { stdio: 'pipe' });
      const url = new URL(s.pgUrl);
      url.pathname = `/${database}`;
      databaseUrl = url.toString();
    });

    after(async () => {
      await standIn?.close();
      nginx?.destroy();
      if (s) await deleteZone(s, domain);
      if (database) execFileSync('su', ['postgres', '-c', `psql -qAt -p ${new URL(s.pgUrl).port} -d postgres -c 'DROP DATABASE IF EXISTS ${database} WITH (FORCE)'`], { stdio: 'pipe' });
    });

    it('the ESM consumer runs the compiled snippet: rows land in its database, none in the default one', async () => {
      // The snippet as the consumer builds it (nodenext, ESM), then an ESM driver that uses it.
      const emit = await run(process.execPath, [path.join(consumer, 'node_modules', 'typescript', 'bin', 'tsc'), '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', '--strict', '--outDir', 'out', 'ganymede.mts'], consumer);
      assert.equal(emit.code, 0, emit.stdout + emit.stderr);
      writeFileSync(
        path.join(consumer, 'allocate.mjs'),
        `import express from 'express';
import pg from 'pg';
import { createRequire } from 'node:module';
import { mountGateways } from './out/ganymede.mjs';
const cfg = JSON.parse(process.env.CONSUMER_CONFIG);
const pool = new pg.Pool({ connectionString: cfg.databaseUrl, max: 3 });
const app = express();
const allocator = await mountGateways(app, pool, cfg.settings, async (authorization) => (authorization === 'Bearer t' ? { id: 'u' } : null));
await allocator.registerGateways(cfg.inventory);
await allocator.markReady(cfg.inventory.map((g) => g.name));
const allocation = await allocator.allocate(cfg.organizationId);
const whileAllocated = (await pool.query('SELECT name, state FROM "' + cfg.schema + '".gateways WHERE organization_id = $1', [cfg.organizationId])).rows;
await allocator.release(cfg.organizationId);
await allocator.close();
// close() leaves the caller's pool open
const afterRelease = (await pool.query('SELECT state, count(*)::int AS n FROM "' + cfg.schema + '".gateways GROUP BY state')).rows;
await pool.end();
const pgVersion = createRequire(import.meta.url)('pg/package.json').version;
console.log(JSON.stringify({ pgVersion, allocation: { name: allocation.name, organizationId: allocation.organizationId }, whileAllocated, afterRelease }));
`,
      );
      const schema = `pkg_${suiteId()}`;
      const env = `pk${suiteId().slice(0, 4)}`;
      const { pg: _ours, ...settings } = testAllocatorOptions(s, nginx, { env, domain, schema });
      const inventory: GatewaySpec[] = [0, 1].map((i) => ({ name: `gw-pool-${env}-${i}`, host: gatewayHost(i), httpPort: standIn.port, vpnPort: 49300 + i }));
      const organizationId = randomOrg();
      // libpq defaults point at the default database: a pool built from them instead of the caller's would show up there.
      const defaults = new URL(s.pgUrl);
      const childEnv = {
        ...process.env,
        PGHOST: defaults.hostname,
        PGPORT: defaults.port,
        PGUSER: decodeURIComponent(defaults.username),
        PGPASSWORD: decodeURIComponent(defaults.password),
        PGDATABASE: defaults.pathname.slice(1),
        CONSUMER_CONFIG: JSON.stringify({ databaseUrl, settings, inventory, organizationId, schema }),
      };
      const r = await run(process.execPath, ['allocate.mjs'], consumer, childEnv, 120_000);
      assert.equal(r.code, 0, r.stderr);
      const out = JSON.parse(r.stdout.trim().split('\n').pop() as string) as {
        pgVersion: string;
        allocation: { name: string; organizationId: string };
        whileAllocated: Array<{ name: string; state: string }>;
        afterRelease: Array<{ state: string; n: number }>;
      };
      assert.match(out.pgVersion, /^8\.16\./, 'the consumer ran its own pg');
      assert.equal(out.allocation.organizationId, organizationId);
      assert.deepEqual(out.whileAllocated, [{ name: out.allocation.name, state: 'allocated' }]);
      assert.deepEqual(out.afterRelease, [{ state: 'ready', n: 2 }]);

      const own = new Pool({ connectionString: databaseUrl, max: 1 });
      const dflt = new Pool({ connectionString: s.pgUrl, max: 1 });
      try {
        const migrations = await own.query(`SELECT count(*)::int AS n FROM "${schema}".schema_migrations`);
        assert.ok((migrations.rows[0] as { n: number }).n >= 3, 'migrations ran in the consumer\'s database');
        const rows = await own.query(`SELECT name, state FROM "${schema}".gateways ORDER BY name`);
        assert.deepEqual(rows.rows, inventory.map((g) => ({ name: g.name, state: 'ready' })));
        const elsewhere = await dflt.query(`SELECT to_regclass($1) AS t`, [`"${schema}".gateways`]);
        assert.equal((elsewhere.rows[0] as { t: string | null }).t, null, 'nothing was written to the default database');
      } finally {
        await Promise.all([own.end(), dflt.end()]);
      }
    });
  });
});
