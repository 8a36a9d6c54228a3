/**
 * requireServices-style gate for suites that need the Docker engine and the
 * offline base images: runs scripts/docker-setup.sh when something is missing
 * and we are root; then, if still missing, fails in CI (CI set) and skips
 * loudly elsewhere.
 */
import * as path from 'path';
import { REPO_ROOT, dockerOk, run } from './docker';

export const BASE_TAGS = ['debian:bookworm-slim', 'node:20-bookworm-slim', 'docker:cli'];

export async function requireDocker(ctx: Mocha.Context, suite: string, log: (line: string) => void, opts: { baseImages?: boolean } = {}): Promise<void> {
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  let missing: string[] = [];
  const check = async (): Promise<void> => {
    missing = [];
    if (!(await dockerOk(['info']))) missing.push('a running Docker engine (docker info fails)');
    else if (opts.baseImages !== false) for (const t of BASE_TAGS) if (!(await dockerOk(['image', 'inspect', t]))) missing.push(`base image ${t}`);
  };
  await check();
  if (missing.length > 0 && isRoot) {
    log(`missing: ${missing.join(', ')}: running scripts/docker-setup.sh`);
    const r = await run('bash', [path.join(REPO_ROOT, 'scripts', 'docker-setup.sh')], { timeoutMs: 900_000 });
    process.stdout.write(`${r.stdout.trimEnd().replace(/^/gm, '        ')}\n`);
    if (r.code !== 0) log(`docker-setup.sh failed (${r.code}): ${r.stderr.trim()}`);
    await check();
  }
  if (missing.length === 0) return;
  if (process.env.CI) throw new Error(`CI is set and the Docker engine is not usable for ${suite}: ${missing.join(', ')}`);
  process.stdout.write(
    `\n${'!'.repeat(78)}\n!! ${suite.toUpperCase()} CANNOT RUN: missing ${missing.join(', ')}.\n!! Run as root on Debian 12: bash scripts/docker-setup.sh\n${'!'.repeat(78)}\n`,
  );
  ctx.skip();
}
