/**
 * soak/build.ts (esbuild) compiles the soak and bench workers once per run:
 * the closure must include what a regex scan would miss, and the built
 * workers must start and answer their orchestrator.
 */
import { strict as assert } from 'assert';
import { fork, type ChildProcess } from 'child_process';
import { execFileSync } from 'child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'fs';
import * as path from 'path';
import { buildClosure, sourceClosure } from '../../soak/build';

const ROOT = path.resolve(__dirname, '..', '..');

/** The first IPC message of `child`, or a failure naming what did not arrive within `ms`. */
function firstMessage<T>(child: ChildProcess, what: string, ms = 15_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms);
    child.once('message', (m) => {
      clearTimeout(timer);
      resolve(m as T);
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`worker exited (${code}) before ${what}`));
    });
  });
}

describe('worker builder (soak/build.ts, esbuild)', function () {
  this.timeout(60_000);
  let out: string;

  beforeEach(() => {
    mkdirSync(path.join(ROOT, '.test-services'), { recursive: true });
    // Inside the repository tree, so the built workers find node_modules like soak/run.ts's do.
    out = mkdtempSync(path.join(ROOT, '.test-services', 'unit-build-'));
  });
  afterEach(() => rmSync(out, { recursive: true, force: true }));

  it('follows dynamic imports and directory imports (./lib → lib/index.ts), one output file per module', () => {
    const src = path.join(out, 'src');
    mkdirSync(path.join(src, 'lib'), { recursive: true });
    writeFileSync(path.join(src, 'main.ts'), "import { twice } from './lib';\nvoid import('./late').then((m) => console.log(twice(m.value)));\n");
    writeFileSync(path.join(src, 'lib', 'index.ts'), 'export const twice = (n: number): number => n * 2;\n');
    writeFileSync(path.join(src, 'late.ts'), 'export const value: number = 21;\n');
    assert.deepEqual(sourceClosure(src, 'main.ts').map((f) => path.relative(src, f)).sort(), ['late.ts', 'lib/index.ts', 'main.ts']);
    const js = buildClosure(src, 'main.ts', path.join(out, 'build'));
    assert.ok(existsSync(path.join(out, 'build', 'lib', 'index.js')) && existsSync(path.join(out, 'build', 'late.js')));
    assert.equal(execFileSync(process.execPath, [js], { encoding: 'utf8' }).trim(), '42');
  });

  it('the built soak worker starts and runs the allocator code (an invalid init is reported as a crash with INVALID_CONFIG)', async () => {
    const js = buildClosure(ROOT, 'soak/worker.ts', out);
    assert.ok(existsSync(path.join(out, 'runtime', 'migrations', '001_gateway_pool.sql')), 'migrations next to the built migrate.js');
    const child = fork(js, [], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'], execArgv: [] });
    try {
      const crash = firstMessage<{ t: string; message: string }>(child, 'crash report');
      child.send({ t: 'init', init: { slot: 0, generation: 0, envName: 'NOT VALID', domain: 'x.test', publicIp: '127.0.0.1', pgUrl: 'postgres://u@127.0.0.1:1/none', pgMax: 1, schema: 's', powerdns: { apiUrl: 'http://127.0.0.1:1', apiKey: 'k', zone: 'x.test', timeoutMs: 100 }, nginx: { confDir: '/nonexistent', tls: { certPath: '/c', keyPath: '/k' } } } });
      const m = await crash;
      assert.equal(m.t, 'crash');
      assert.match(m.message, /invalid allocator options/);
    } finally {
      child.kill();
    }
  });

  it('the built bench worker starts and answers a request', async () => {
    const js = buildClosure(ROOT, 'bench/worker.ts', out);
    const child = fork(js, [], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'], execArgv: [] });
    try {
      const answer = firstMessage<{ id: number; ok: boolean; type: string }>(child, 'answer to close');
      child.send({ id: 1, type: 'close' });
      assert.deepEqual(await answer, { id: 1, ok: true, type: 'close' });
    } finally {
      child.kill();
    }
  });
});
