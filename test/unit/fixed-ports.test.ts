import { strict as assert } from 'assert';
import { readFileSync, readdirSync } from 'fs';
import * as path from 'path';

/**
 * Every fixed listening port of the test set-up (services, soak, bench) lies below Linux's default
 * ephemeral range (32768-60999). Inside it, an outgoing connection (PowerDNS's persistent
 * PostgreSQL connections, a test's client) can get the port as its source port, and the listener's
 * bind() then fails with EADDRINUSE: CI of 7c258e4 lost the bench smoke to 127.0.0.1:59444 that way.
 * Suites that can pick their ports at run time do (test/helpers/ports.ts: random free ports, also
 * below the ephemeral range); these are the ones whose port is part of a documented set-up.
 */
const ROOT = path.resolve(__dirname, '..', '..');
const EPHEMERAL_LOW = 32768;

const SOURCES: Array<{ file: string; pattern: RegExp }> = [
  { file: 'scripts/test-services.sh', pattern: /_PORT="\$\{[A-Z_]+:-(\d+)\}"/g },
  { file: 'bench/config.ts', pattern: /export const [A-Z_]*PORT = (\d+);/g },
  { file: 'bench/routing-probe.ts', pattern: /\b[a-zA-Z]+: (\d{4,5})\b/g },
  { file: 'soak/run.ts', pattern: /const [A-Z_]*PORT = (\d+);/g },
];

describe('fixed ports of the test set-up', () => {
  for (const { file, pattern } of SOURCES) {
    it(`${file}: every fixed port is below ${EPHEMERAL_LOW}`, () => {
      const ports = [...readFileSync(path.join(ROOT, file), 'utf8').matchAll(pattern)].map((m) => Number(m[1]));
      assert.ok(ports.length >= 2, `${file}: found only ${ports.length} fixed ports; does the pattern still match the file?`);
      const inside = ports.filter((p) => p >= EPHEMERAL_LOW);
      assert.deepEqual(inside, [], `${file}: ports inside the ephemeral range: ${inside.join(', ')}`);
    });
  }

  it('integration suites pick their nginx ports at run time (test/helpers/ports.ts), not fixed numbers', () => {
    const dir = path.join(ROOT, 'test', 'integration');
    const fixed = readdirSync(dir)
      .filter((f) => f.endsWith('.ts'))
      .filter((f) => /const [A-Z_]*PORT = \d{4,5};/.test(readFileSync(path.join(dir, f), 'utf8')));
    assert.deepEqual(fixed, []);
  });
});
