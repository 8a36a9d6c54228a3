import { accessSync, constants } from 'fs';
import * as path from 'path';

/** The executable `tool` on PATH (or in Debian's sbin folders, where daemons live), or undefined. */
export function findTool(tool: string): string | undefined {
  for (const dir of [...(process.env.PATH ?? '').split(path.delimiter), '/usr/sbin', '/sbin']) {
    if (!dir) continue;
    const file = path.join(dir, tool);
    try {
      accessSync(file, constants.X_OK);
      return file;
    } catch {
      /* not here */
    }
  }
  return undefined;
}

/**
 * The path of a tool the test set-up installs (scripts/test-services.sh), or:
 * in CI (CI set) a failure, elsewhere a loud skip of the calling suite.
 */
export function requireTool(ctx: Mocha.Context, tool: string, why: string): string {
  const found = findTool(tool);
  if (found) return found;
  const msg = `${tool} is not installed (${why}); scripts/test-services.sh up installs it (root on Debian 12)`;
  if (process.env.CI) throw new Error(`CI: ${msg}`);
  console.error(`\n!!! SKIPPING: ${msg}\n`);
  ctx.skip();
  throw new Error('unreachable');
}
