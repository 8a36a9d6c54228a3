import { strict as assert } from 'assert';
import { readFileSync } from 'fs';
import * as path from 'path';

const ROOT = path.resolve(__dirname, '..', '..');
/** Entrypoints that define their own log/fail: images are separate build contexts and cannot share a shell file. */
const ENTRYPOINTS = { dev: 'images/dev/rootfs/usr/local/bin/dev-entrypoint', pdns: 'images/powerdns/rootfs/usr/local/bin/pdns-entrypoint' };

function logAndFail(file: string, tag: string): string[] {
  const lines = readFileSync(path.join(ROOT, file), 'utf8')
    .split('\n')
    .filter((l) => /^(log|fail)\(\) /.test(l));
  assert.equal(lines.length, 2, `${file}: expected one log() and one fail() line, got ${JSON.stringify(lines)}`);
  return lines.map((l) => l.replace(`[${tag}]`, '[<image>]'));
}

describe('image entrypoints: the per-image log/fail copies stay alike', () => {
  it('dev-entrypoint and pdns-entrypoint define log/fail identically but for the image tag', () => {
    const dev = logAndFail(ENTRYPOINTS.dev, 'dev');
    assert.deepEqual(logAndFail(ENTRYPOINTS.pdns, 'pdns'), dev);
    assert.match(dev[0], /\[<image>\]/, 'log() prints the image tag');
    assert.match(dev[1], /FATAL: .*exit 64/, 'fail() logs FATAL and exits 64');
  });
});
