/**
 * The stage-1 base configuration (`<confDir>/demiurge-orgs.conf`, with the route table's Lua, + routes.js): written
 * only when it differs from what nginx runs, validated with `nginx -t` (the
 * previous files are put back if rejected), reloaded, and confirmed once the
 * workers report its version.
 */
import { execFile } from 'child_process';
import { promises as fs } from 'fs';
import * as path from 'path';
import type { Pool } from 'pg';
import { AllocatorError } from './errors';
import { configVersion, ORGS_CONF, renderOrgsConf, renderRoutesJs, ROUTES_JS, type Stage1RenderOptions } from './nginx-config';
import { withNginxLock } from './nginx-lock';
import { readOrUndefined, restore, writeAtomic } from './owned-files';
import type { Stage1Status } from './stage1-status';

export interface BaseConfigOptions {
  render: Stage1RenderOptions;
  /** Validates the whole configuration (`nginx -t -q`). */
  testCommand: string[];
  /** Makes nginx load it (`nginx -s reload`). */
  reloadCommand: string[];
  commandTimeoutMs: number;
  /** `<confDir>/routes`: created before nginx loads a config that names it (as is `render.orgCertDir`). */
  routesDir: string;
}

function run(cmd: string[], timeoutMs: number): Promise<{ ok: boolean; output: string }> {
  return new Promise((resolve) => {
    execFile(cmd[0], cmd.slice(1), { timeout: timeoutMs, maxBuffer: 1024 * 1024 }, (err, stdout, stderr) => {
      resolve({ ok: !err, output: `${stdout}${stderr}`.trim() || (err ? err.message : '') });
    });
  });
}

function lastLines(output: string): string {
  return output.split('\n').slice(-3).join(' | ').slice(0, 600);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class BaseConfig {
  private readonly conf: string;
  private readonly js: string;
  /** Covers both files, so a change to either is confirmed after reload. */
  readonly version: string;
  reloads = 0;
  tests = 0;

  constructor(
    private readonly pool: Pool,
    private readonly opts: BaseConfigOptions,
    private readonly status: Stage1Status,
  ) {
    this.js = renderRoutesJs(opts.render);
    this.version = configVersion(renderOrgsConf(opts.render) + this.js);
    this.conf = renderOrgsConf(opts.render, this.version);
  }

  /**
   * Makes sure nginx runs this base configuration: writes it if it differs,
   * validates with `nginx -t` (restoring the previous files if rejected),
   * reloads, and waits until the workers report its version. Returns true if
   * it had to change anything.
   */
  async ensure(): Promise<boolean> {
    await fs.mkdir(this.opts.routesDir, { recursive: true });
    const certDir = this.opts.render.orgCertDir;
    // Workers open bundles by name (no listing needed); the bundles themselves are 0600.
    if (certDir && (await fs.mkdir(certDir, { recursive: true })) !== undefined) await fs.chmod(certDir, 0o711);
    const confFile = path.join(this.opts.render.confDir, ORGS_CONF);
    const jsFile = path.join(this.opts.render.confDir, ROUTES_JS);
    const live = await this.status.lookup([]);
    if (live?.version === this.version && (await readOrUndefined(confFile)) === this.conf && (await readOrUndefined(jsFile)) === this.js) {
      await this.checkBaseCertificateReadable();
      return false;
    }
    await withNginxLock(this.pool, this.opts.render.confDir, async () => {
      const previous = [
        { file: confFile, content: await readOrUndefined(confFile) },
        { file: jsFile, content: await readOrUndefined(jsFile) },
      ];
      await writeAtomic(jsFile, this.js);
      await writeAtomic(confFile, this.conf);
      try {
        await this.testAndReload();
      } catch (err) {
        // The running nginx never loaded the rejected files: put the previous ones back.
        for (const p of previous) await restore(p.file, p.content).catch(() => undefined);
        throw err;
      }
    });
    let seen: string | undefined;
    await this.status.waitFor(
      async () => (seen = (await this.status.lookup([]))?.version) === this.version,
      () =>
        `nginx did not load base configuration ${this.version} (nginx -t passed, the reload was signalled): ` +
        (seen === undefined
          ? `its status server ${this.status.listen} does not answer; nginx's error log says why the reload was refused (e.g. a listen address in use)`
          : `its workers still run ${seen}; nginx's error log says why the reload was refused`),
    );
    // nginx's master keeps old workers accepting for ~100 ms after new ones start; let them go.
    await sleep(150);
    await this.checkBaseCertificateReadable();
    return true;
  }

  /**
   * With per-org certificates nginx loads the base certificate in the workers
   * at every handshake, not in the root master at reload: an unreadable base
   * key would fail every TLS handshake of the org server. Throws NGINX_FAILED
   * naming the fix; a no-op without per-org certificates.
   */
  async checkBaseCertificateReadable(): Promise<void> {
    if (!this.opts.render.orgCertDir) return;
    const live = await this.status.lookup([]);
    if (live && live.base === false) {
      const { certPath, keyPath } = this.opts.render;
      throw new AllocatorError(
        'NGINX_FAILED',
        `nginx workers cannot read the base certificate ${certPath} / key ${keyPath}: with per-organization certificates nginx loads certificates in the workers per handshake, so the key must be readable by the worker user (e.g. chown www-data, mode 0600)`,
        { stage: 'tls' },
      );
    }
  }

  private async testAndReload(): Promise<void> {
    this.tests += 1;
    const test = await run(this.opts.testCommand, this.opts.commandTimeoutMs);
    if (!test.ok) throw new AllocatorError('NGINX_FAILED', `nginx -t rejected the configuration: ${lastLines(test.output)}`, { stage: 'test', notApplied: true });
    this.reloads += 1;
    const reload = await run(this.opts.reloadCommand, this.opts.commandTimeoutMs);
    if (!reload.ok) throw new AllocatorError('NGINX_FAILED', `nginx reload failed: ${lastLines(reload.output)}`, { stage: 'reload', notApplied: true });
  }
}
