/**
 * The default app's "ready" line for gateway-reload (runtime/gateway-app/control.ts, notifyReady): the
 * reload waits on the image's candidate.events FIFO and is woken by it; every other case must leave
 * the app and the file system alone.
 */
import { strict as assert } from 'assert';
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { notifyReady } from '../../runtime/gateway-app/control';
import { loadSettings } from '../../runtime/gateway-app/settings';

describe('gateway app: ready line on the reload\'s FIFO', () => {
  let dir: string;
  let fifo: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gw-ready-'));
    fifo = path.join(dir, 'candidate.events');
    execFileSync('mkfifo', [fifo]);
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('writes "ready <pid>" when a reader holds the FIFO open', () => {
    // Read-write and non-blocking, as gateway-reload holds it (a reader that never blocks the open).
    const reader = fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    try {
      assert.equal(notifyReady(fifo), true);
      const buf = Buffer.alloc(64);
      const n = fs.readSync(reader, buf, 0, buf.length, null);
      assert.equal(buf.subarray(0, n).toString(), `ready ${process.pid}\n`);
    } finally {
      fs.closeSync(reader);
    }
  });

  it('returns false without blocking when no reload reads (ENXIO), for a missing path and for a regular file, which it leaves unchanged', () => {
    const t0 = Date.now();
    assert.equal(notifyReady(fifo), false);
    assert.ok(Date.now() - t0 < 1000, 'notifyReady blocked on a FIFO without a reader');
    assert.equal(notifyReady(path.join(dir, 'none')), false);
    const plain = path.join(dir, 'plain');
    fs.writeFileSync(plain, 'keep me');
    assert.equal(notifyReady(plain), false);
    assert.equal(fs.readFileSync(plain, 'utf8'), 'keep me');
  });

  it('settings: APP_READY_FIFO is optional', () => {
    const env = { GATEWAY_ID: 'gw-pool-dev-0', GATEWAY_TOKEN: 'a'.repeat(24), GANYMEDE_URL: 'http://ganymede:6000' };
    assert.equal(loadSettings(env).readyFifo, undefined);
    assert.equal(loadSettings({ ...env, APP_READY_FIFO: '/run/gateway/candidate.events' }).readyFifo, '/run/gateway/candidate.events');
  });
});
