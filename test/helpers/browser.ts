import { execFileSync } from 'child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';

/** Debian's Chromium (scripts/test-services.sh installs it), driven by npm playwright-core. */
export const CHROMIUM_PATH = '/usr/bin/chromium';
const ROOT = path.resolve(__dirname, '..', '..');
/** Screenshots and other evidence of browser checks (gitignored). */
export const ARTIFACTS_DIR = path.join(ROOT, '.test-artifacts');

/** Headless Chromium without the background traffic (updates, sync) a test must not wait on. */
export const HEADLESS_ARGS: readonly string[] = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/**
 * Trusts a CA (PEM file) for TLS servers in `<home>/.pki/nssdb`, the NSS
 * database Chromium on Linux reads (not the profile), with Debian's certutil
 * (libnss3-tools): what a person who installed the dev CA has.
 */
export function trustCaInHome(home: string, caFile: string, nickname: string): void {
  const dir = path.join(home, '.pki', 'nssdb');
  mkdirSync(dir, { recursive: true });
  execFileSync('certutil', ['-d', `sql:${dir}`, '-N', '--empty-password'], { stdio: 'pipe' });
  execFileSync('certutil', ['-d', `sql:${dir}`, '-A', '-t', 'C,,', '-n', nickname, '-i', caFile], { stdio: 'pipe' });
}

export interface BrowserOptions {
  /**
   * Chromium `--host-resolver-rules`, e.g. `MAP * 127.0.0.1:27443` to send every
   * name to one loopback port (no DNS, no /etc/hosts). Without it names resolve normally.
   */
  hostResolverRules?: string;
  /** Accept any certificate (a suite's own CA is not in the profile's trust store). */
  ignoreCertificateErrors?: boolean;
  /**
   * Trust this CA (PEM file), as a person who installed the dev CA would: it goes into
   * the NSS database of the browser's own HOME (Chromium on Linux reads `$HOME/.pki/nssdb`,
   * not the profile), with Debian's certutil (libnss3-tools). Certificate errors stay errors.
   */
  caFile?: string;
}

export interface PageVisit {
  status: number | undefined;
  contentType: string | undefined;
  cacheControl: string | undefined;
  /** Suggested file names of downloads the navigation started (a page must start none). */
  downloads: string[];
  title: string;
  /** Visible text of the page. */
  text: string;
  /** Navigation error (e.g. a download instead of a page, a TLS error), if any. */
  error?: string;
}

/** A headless Chromium with a fresh profile; close() removes the profile. */
export class TestBrowser {
  private constructor(
    private readonly context: BrowserContext,
    private readonly profile: string,
  ) {}

  static async launch(opts: BrowserOptions = {}): Promise<TestBrowser> {
    const profile = mkdtempSync(path.join(os.tmpdir(), 'demiurge-chromium-'));
    const args = [...HEADLESS_ARGS];
    if (opts.hostResolverRules) args.push(`--host-resolver-rules=${opts.hostResolverRules}`);
    if (opts.ignoreCertificateErrors) args.push('--ignore-certificate-errors');
    // A fresh profile per launch (playwright passes it as --user-data-dir), and a HOME of its own
    // so a trusted CA lands in this browser's NSS database only.
    const home = path.join(profile, 'home');
    mkdirSync(home);
    if (opts.caFile) trustCaInHome(home, opts.caFile, 'demiurge-test-ca');
    const context = await chromium.launchPersistentContext(path.join(profile, 'user-data'), {
      executablePath: CHROMIUM_PATH,
      env: { ...process.env, HOME: home },
      args,
      timeout: 60_000,
      acceptDownloads: true,
      ignoreHTTPSErrors: opts.ignoreCertificateErrors ?? false,
    });
    return new TestBrowser(context, profile);
  }

  newPage(): Promise<Page> {
    return this.context.newPage();
  }

  /** Opens `url` in a new page and reports what a person would get; the page stays open for a screenshot. */
  async visit(url: string, timeoutMs = 15_000): Promise<{ page: Page; visit: PageVisit }> {
    const page = await this.newPage();
    const downloads: string[] = [];
    page.on('download', (d) => downloads.push(d.suggestedFilename()));
    let error: string | undefined;
    const response = await page.goto(url, { waitUntil: 'load', timeout: timeoutMs }).catch((e: Error) => {
      error = e.message;
      return null;
    });
    const headers = response ? await response.allHeaders() : {};
    const visit: PageVisit = {
      status: response?.status(),
      contentType: headers['content-type'],
      cacheControl: headers['cache-control'],
      downloads,
      title: error ? '' : await page.title(),
      text: error ? '' : await page.innerText('body').catch(() => ''),
      ...(error ? { error } : {}),
    };
    return { page, visit };
  }

  async close(): Promise<void> {
    await this.context.close().catch(() => undefined);
    rmSync(this.profile, { recursive: true, force: true });
  }
}

/** Saves a full-page screenshot as `.test-artifacts/<name>.png`; returns its path. */
export async function screenshot(page: Page, name: string): Promise<string> {
  mkdirSync(ARTIFACTS_DIR, { recursive: true });
  const file = path.join(ARTIFACTS_DIR, `${name.replace(/[^a-zA-Z0-9._-]+/g, '-')}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}
