/**
 * A real browser for the stack suite: Debian's chromium driven by
 * playwright-core. It trusts the environment's dev CA the way a developer's
 * machine does (an NSS database with the CA, in a fresh HOME), and reaches
 * every name under the environment's domain at the published stage-1 port
 * (host-resolver-rules), so URLs stay `https://org-<uuid>.<domain>/`.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import { chromium, type Browser } from 'playwright-core';
import { HEADLESS_ARGS, trustCaInHome } from '../../helpers/browser';

export const CHROMIUM = process.env.E2E_CHROMIUM ?? '/usr/bin/chromium';

export interface BrowserTarget {
  domain: string;
  /** Where stage 1's HTTPS port is published. */
  httpsHost: string;
  httpsPort: number;
  /** The dev CA (PEM file); undefined: system trust only. */
  caFile: string | undefined;
  /** A fresh directory for the browser's HOME (NSS db). */
  homeDir: string;
}

/** Why the browser check cannot run here (undefined: it can). */
export function browserUnavailable(): string | undefined {
  if (!fs.existsSync(CHROMIUM)) return `${CHROMIUM} is missing (apt-get install chromium; scripts/docker-setup.sh installs it)`;
  if (!commandExists('certutil')) return 'certutil is missing (apt-get install libnss3-tools; scripts/docker-setup.sh installs it)';
  return undefined;
}

function commandExists(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

export async function launchBrowser(t: BrowserTarget): Promise<Browser> {
  fs.mkdirSync(t.homeDir, { recursive: true });
  if (t.caFile) trustCaInHome(t.homeDir, t.caFile, 'demiurge-dev-ca');
  const to = `${t.httpsHost}:${t.httpsPort}`;
  return chromium.launch({
    executablePath: CHROMIUM,
    env: { ...process.env, HOME: t.homeDir },
    timeout: 60_000,
    args: [
      ...HEADLESS_ARGS,
      // Every name of the environment goes to the published stage-1 port; nothing else resolves.
      `--host-resolver-rules=MAP *.${t.domain}:443 ${to}, MAP ${t.domain}:443 ${to}, EXCLUDE localhost`,
    ],
  });
}
