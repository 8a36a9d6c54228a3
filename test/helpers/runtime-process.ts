import { ChildProcess, spawn } from 'child_process';
import { chmodSync, cpSync, mkdirSync, writeFileSync } from 'fs';
import * as path from 'path';
import { build } from 'esbuild';
import type { TestServices } from './services';
import type { Stage1Nginx } from './stage1-nginx';

const ROOT = path.resolve(__dirname, '..', '..');

/**
 * Bundles a runtime entry the way the program ships it (one file, express and
 * pg inside, pg-native left out) into `outDir`, with the migrations next to it
 * (runtime/migrate.ts reads `<dir of the bundle>/migrations/`).
 */
export async function bundleRuntime(entry: string, outDir: string, name: string): Promise<string> {
  const outfile = path.join(outDir, name);
  await build({ entryPoints: [path.join(ROOT, entry)], bundle: true, platform: 'node', target: 'node20', outfile, external: ['pg-native'], logLevel: 'silent' });
  mkdirSync(path.join(outDir, 'migrations'), { recursive: true });
  cpSync(path.join(ROOT, 'runtime/migrations'), path.join(outDir, 'migrations'), { recursive: true });
  return outfile;
}

export interface SuiteRuntimeFiles {
  config: Record<string, unknown>;
  secrets: Record<string, unknown>;
}

/** config.json + secrets.json (the contract's shape) for a suite's pool on the test services and its stage-1 nginx. */
export function suiteRuntimeFiles(
  s: TestServices,
  nginx: Stage1Nginx,
  p: { env: string; domain: string; schema: string },
  inventory: Array<{ name: string; host: string; httpPort: number; vpnPort: number }>,
  tokens: Record<string, string>,
  extra: { operatorToken: string; apiPort: number; tls?: Record<string, unknown>; api?: Record<string, unknown>; orgCertificateKey?: string | null },
): SuiteRuntimeFiles {
  const pg = new URL(s.pgUrl);
  const pdnsDb = new URL(s.pdnsDbUrl);
  const n = nginx.nginxOptions();
  return {
    config: {
      version: 1,
      envName: p.env,
      domain: p.domain,
      publicIp: '127.0.0.1',
      schema: p.schema,
      database: { host: pg.hostname, port: Number(pg.port), database: pg.pathname.slice(1), user: decodeURIComponent(pg.username) },
      // As the environment's config: records go to PowerDNS's tables, the API creates zones and purges caches.
      powerdns: {
        apiUrl: s.pdnsApiUrl,
        zone: p.domain,
        database: { host: pdnsDb.hostname, port: Number(pdnsDb.port), database: pdnsDb.pathname.slice(1), user: decodeURIComponent(pdnsDb.username) },
      },
      nginx: { confDir: n.confDir, tls: n.tls, listen: n.listen, statusListen: n.statusListen, testCommand: n.testCommand, reloadCommand: n.reloadCommand },
      userContainerNaming: 'nested',
      inventory,
      tls: extra.tls ?? { mode: 'none' },
      api: {
        listen: `127.0.0.1:${extra.apiPort}`,
        publicUrl: `https://ganymede.${p.domain}`,
        gatewayUrl: `http://127.0.0.1:${extra.apiPort}`,
        reconcileIntervalSeconds: 60,
        reaper: { intervalSeconds: 30, silenceSeconds: 600 },
        ...extra.api,
      },
      secretsFile: 'secrets.json',
    },
    secrets: {
      databasePassword: decodeURIComponent(pg.password),
      powerdnsApiKey: s.pdnsApiKey,
      powerdnsDatabasePassword: decodeURIComponent(pdnsDb.password),
      operatorToken: extra.operatorToken,
      orgCertificateKey: extra.orgCertificateKey ?? null,
      gatewayRegistrationTokens: tokens,
    },
  };
}

/** Writes config.json (0644) and secrets.json (0600) into dir; returns the config path. */
export function writeRuntimeFiles(dir: string, files: SuiteRuntimeFiles): string {
  const config = path.join(dir, 'config.json');
  writeFileSync(config, JSON.stringify(files.config, null, 2));
  const secrets = path.join(dir, 'secrets.json');
  writeFileSync(secrets, JSON.stringify(files.secrets), { mode: 0o600 });
  chmodSync(secrets, 0o600);
  return config;
}

export type LogLine = Record<string, unknown> & { event?: string };

/** The bundled API server as a child process, its stdout parsed as JSON log lines. */
export class ApiServerProcess {
  readonly logs: LogLine[] = [];
  readonly rawStdout: string[] = [];
  stderr = '';
  private child: ChildProcess | undefined;
  private exited: Promise<number | null> | undefined;
  private waiters: Array<() => void> = [];

  constructor(
    readonly bundle: string,
    readonly configFile: string,
  ) {}

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Starts it and resolves on its `server.listening` line (rejects on exit or after timeoutMs). */
  async start(timeoutMs = 60_000): Promise<LogLine> {
    const from = this.logs.length;
    const child = spawn(process.execPath, [this.bundle, '--config', this.configFile], { env: { PATH: process.env.PATH, HOME: process.env.HOME }, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    let buf = '';
    child.stdout?.on('data', (d: Buffer) => {
      buf += d.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        this.rawStdout.push(line);
        try {
          this.logs.push(JSON.parse(line) as LogLine);
        } catch {
          this.logs.push({ event: 'NOT_JSON', line });
        }
        this.waiters.splice(0).forEach((w) => w());
      }
    });
    child.stderr?.on('data', (d: Buffer) => (this.stderr += d.toString()));
    this.exited = new Promise((r) => child.once('exit', (code) => {
      this.waiters.splice(0).forEach((w) => w());
      r(code);
    }));
    return this.waitLog((l) => l.event === 'server.listening', 'the server.listening line', timeoutMs, from, true);
  }

  /** Waits for a log line (from index `from`) matching pred. */
  waitLog(pred: (l: LogLine) => boolean, what: string, timeoutMs = 20_000, from = 0, failOnExit = false): Promise<LogLine> {
    return new Promise((resolve, reject) => {
      const deadline = setTimeout(() => reject(new Error(`API server: no ${what} within ${timeoutMs} ms; stdout:\n${this.rawStdout.slice(-30).join('\n')}\nstderr:\n${this.stderr}`)), timeoutMs);
      const check = (): void => {
        const hit = this.logs.slice(from).find(pred);
        if (hit) {
          clearTimeout(deadline);
          resolve(hit);
          return;
        }
        if (failOnExit && !this.running) {
          clearTimeout(deadline);
          reject(new Error(`API server exited (${this.child?.exitCode ?? this.child?.signalCode}) before ${what}; stderr:\n${this.stderr}\nstdout:\n${this.rawStdout.join('\n')}`));
          return;
        }
        this.waiters.push(check);
      };
      check();
    });
  }

  /** Sends a signal and waits for the exit; resolves the exit code (null when killed by the signal). */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    const child = this.child;
    if (!child || !this.running) return child?.exitCode ?? null;
    child.kill(signal);
    return (await this.exited) ?? null;
  }
}
