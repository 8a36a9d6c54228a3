import { execFileSync } from 'child_process';
import * as path from 'path';
import { readEnvFile, testServicesOf, type TestServices } from './services-env';

export type { TestServices } from './services-env';

const ROOT = path.resolve(__dirname, '..', '..');
let cached: TestServices | undefined;

/**
 * Starts (idempotently) the real PostgreSQL and PowerDNS the integration
 * suites use. In CI a failure is a failure; elsewhere the caller's suite is
 * skipped with a loud message naming what is missing.
 */
export function requireServices(ctx: Mocha.Context): TestServices {
  if (cached) return cached;
  try {
    execFileSync('bash', [path.join(ROOT, 'scripts/test-services.sh'), 'up'], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 600_000 });
    cached = testServicesOf(readEnvFile(path.join(ROOT, '.test-services/env')));
    return cached;
  } catch (err) {
    const reason = err instanceof Error ? `${err.message}\n${(err as { stderr?: Buffer }).stderr?.toString() ?? ''}` : String(err);
    if (process.env.CI) throw new Error(`integration services unavailable in CI: ${reason}`);
    console.error(`\n!!! SKIPPING integration suite: PostgreSQL/PowerDNS could not be started (needs root on Debian 12 with apt): ${reason}\n`);
    ctx.skip();
    throw new Error('unreachable');
  }
}

export function servicesScript(cmd: string): void {
  execFileSync('bash', [path.join(ROOT, 'scripts/test-services.sh'), cmd], { stdio: 'ignore', timeout: 60_000 });
}
