/**
 * A real browser for the stack suite: Debian's chromium driven by
 * playwright-core. It trusts the environment's dev CA the way a developer's
 * machine does (an NSS database with the CA, in a fresh HOME), and reaches
 * every name under the environment's domain at the published stage-1 port
 * (host-resolver-rules), so URLs stay `https://org-<uuid>.<domain>/`.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { chromium, type Browser } from 'playwright-core';

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

/** An NSS database in `<home>/.pki/nssdb` trusting the CA for TLS servers: what chromium on Linux reads. */
export function trustCa(homeDir: string, caFile: string): void {
  const db = path.join(homeDir, '.pki', 'nssdb');
  fs.mkdirSync(db, { recursive: true });
  execFileSync('certutil', ['-d', `sql:${db}`, '-N', '--empty-password'], { stdio: 'pipe' });
  execFileSync('certutil', ['-d', `sql:${db}`, '-A', '-t', 'C,,', '-n', 'demiurge-dev-ca', '-i', caFile], { stdio: 'pipe' });
}

export async function launchBrowser(t: BrowserTarget): Promise<Browser> {
  fs.mkdirSync(t.homeDir, { recursive: true });
  if (t.caFile) trustCa(t.homeDir, t.caFile);
  const to = `${t.httpsHost}:${t.httpsPort}`;
  return chromium.launch({
    executablePath: CHROMIUM,
    env: { ...process.env, HOME: t.homeDir },
    timeout: 60_000,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      // Every name of the environment goes to the published stage-1 port; nothing else resolves.
      `--host-resolver-rules=MAP *.${t.domain}:443 ${to}, MAP ${t.domain}:443 ${to}, EXCLUDE localhost`,
    ],
  });
}
