import { execFileSync } from 'child_process';

/**
 * The path of a tool the test set-up installs (scripts/test-services.sh), or:
 * in CI (CI set) a failure, elsewhere a loud skip of the calling suite.
 */
export function requireTool(ctx: Mocha.Context, tool: string, why: string): string {
  let found = '';
  try {
    found = execFileSync('bash', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).trim();
  } catch {
    found = '';
  }
  if (found) return found;
  const msg = `${tool} is not installed (${why}); scripts/test-services.sh up installs it (root on Debian 12)`;
  if (process.env.CI) throw new Error(`CI: ${msg}`);
  console.error(`\n!!! SKIPPING: ${msg}\n`);
  ctx.skip();
  throw new Error('unreachable');
}
