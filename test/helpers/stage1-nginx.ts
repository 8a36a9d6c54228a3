import { execFileSync, execFile } from 'child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { NginxOptions } from '../../runtime';
import { STAGE1_LOAD_MODULES } from '../../runtime/nginx-config';
import { portClosed, processGone, waitFor } from './wait-for';

/** Instances not yet destroyed: test/helpers/nginx-failure-report.ts shows their new error-log lines after a failed test. */
const live = new Set<Stage1Nginx>();

export function liveStage1Nginx(): Stage1Nginx[] {
  return [...live];
}

/** A real stage-1 nginx for one suite: own prefix, own ports, mkcert-issued wildcard for the suite's domain. */
export class Stage1Nginx {
  readonly prefix: string;
  readonly confDir: string;
  readonly caFile: string;
  readonly certFile: string;
  readonly keyFile: string;
  /** Extra server blocks of a suite (not the allocator's confDir): included after it. */
  readonly sitesDir: string;
  private readonly conf: string;
  /** How much of the error log `newErrorLogLines` has already returned. */
  private errorLogSeen = 0;

  constructor(
    readonly domain: string,
    readonly httpsPort: number,
    readonly statusPort: number,
  ) {
    this.prefix = mkdtempSync(path.join(os.tmpdir(), 'demiurge-stage1-'));
    live.add(this);
    // nginx workers (user nobody) read route files when the allocator has them loaded: the tree must be world-readable.
    chmodSync(this.prefix, 0o755);
    this.confDir = path.join(this.prefix, 'demiurge');
    this.conf = path.join(this.prefix, 'nginx.conf');
    const caroot = path.join(this.prefix, 'ca');
    mkdirSync(caroot);
    mkdirSync(path.join(this.prefix, 'logs'));
    mkdirSync(this.confDir);
    this.sitesDir = path.join(this.prefix, 'sites');
    mkdirSync(this.sitesDir);
    this.certFile = path.join(this.prefix, 'cert.pem');
    this.keyFile = path.join(this.prefix, 'key.pem');
    execFileSync('mkcert', ['-cert-file', this.certFile, '-key-file', this.keyFile, domain, `*.${domain}`], {
      env: { ...process.env, CAROOT: caroot },
      stdio: 'ignore',
    });
    this.caFile = path.join(caroot, 'rootCA.pem');
    writeFileSync(
      this.conf,
      `${STAGE1_LOAD_MODULES}
worker_processes 2;
pid ${this.prefix}/nginx.pid;
worker_shutdown_timeout 10s;
# JIT-compiled regexes (server_name, map $host): measured cheaper per request (docs/bench.md, row 5).
pcre_jit on;
error_log ${this.prefix}/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    server_names_hash_bucket_size 128;
    client_body_temp_path ${this.prefix}/tmp-body;
    proxy_temp_path ${this.prefix}/tmp-proxy;
    include ${this.confDir}/*.conf;
    include ${this.sitesDir}/*.conf;
}
`,
    );
  }

  nginxOptions(): NginxOptions {
    return {
      confDir: this.confDir,
      tls: { certPath: this.certFile, keyPath: this.keyFile },
      listen: `127.0.0.1:${this.httpsPort} ssl`,
      statusListen: `127.0.0.1:${this.statusPort}`,
      testCommand: ['nginx', '-t', '-q', '-p', this.prefix, '-c', this.conf],
      reloadCommand: ['nginx', '-s', 'reload', '-p', this.prefix, '-c', this.conf],
    };
  }

  start(): void {
    execFileSync('nginx', ['-p', this.prefix, '-c', this.conf], { stdio: 'pipe' });
  }

  /** `nginx -s reload` (SIGHUP to the master): new workers, the same shared-memory zones. */
  reload(): void {
    execFileSync('nginx', ['-s', 'reload', '-p', this.prefix, '-c', this.conf], { stdio: 'pipe' });
  }

  /** nginx's error log so far (a refused reload is reported only there). */
  errorLog(): string {
    try {
      return readFileSync(path.join(this.prefix, 'logs', 'error.log'), 'utf8');
    } catch {
      return '';
    }
  }

  /** The error log's lines written since the last call (at most the last `max`). */
  newErrorLogLines(max = 20): string[] {
    const log = this.errorLog();
    const fresh = log.slice(this.errorLogSeen);
    this.errorLogSeen = log.length;
    return fresh.split('\n').filter(Boolean).slice(-max);
  }

  /** The master's pid (from its pid file). */
  masterPid(): number {
    return Number(readFileSync(path.join(this.prefix, 'nginx.pid'), 'utf8'));
  }

  stop(): void {
    try {
      const pid = Number(readFileSync(path.join(this.prefix, 'nginx.pid'), 'utf8'));
      process.kill(pid, 'SIGTERM');
    } catch {
      /* not running */
    }
  }

  /** Stops nginx and waits until its master has exited and the HTTPS port refuses connections. */
  async stopAndWait(timeoutMs = 15_000): Promise<void> {
    let pid: number | undefined;
    try {
      pid = Number(readFileSync(path.join(this.prefix, 'nginx.pid'), 'utf8'));
    } catch {
      /* no pid file: not running */
    }
    this.stop();
    await waitFor(`stage-1 nginx (pid ${pid ?? 'none'}) to exit and close port ${this.httpsPort}`, timeoutMs, async () => (pid === undefined || processGone(pid)) && (await portClosed(this.httpsPort)));
  }

  destroy(): void {
    live.delete(this);
    this.stop();
    rmSync(this.prefix, { recursive: true, force: true });
  }
}

export interface HttpsResult {
  status: number;
  body: string;
}

/** curl through the stage-1 nginx with the suite's CA (no -k), resolving the name to loopback. */
export function curlThroughStage1(nginx: Stage1Nginx, hostname: string, urlPath = '/healthz'): Promise<HttpsResult> {
  return new Promise((resolve, reject) => {
    execFile(
      'curl',
      ['-sS', '--max-time', '5', '--cacert', nginx.caFile, '--resolve', `${hostname}:${nginx.httpsPort}:127.0.0.1`, '-w', '\n%{http_code}', `https://${hostname}:${nginx.httpsPort}${urlPath}`],
      (err, stdout, stderr) => {
        if (err) return reject(new Error(`curl ${hostname} failed: ${stderr || err.message}`));
        const i = stdout.lastIndexOf('\n');
        resolve({ status: Number(stdout.slice(i + 1)), body: stdout.slice(0, i) });
      },
    );
  });
}

/** `dig` against the real PowerDNS: the A records, or 'NXDOMAIN'. */
export function dig(port: number, name: string): Promise<string[] | 'NXDOMAIN'> {
  return new Promise((resolve, reject) => {
    execFile('dig', ['@127.0.0.1', '-p', String(port), '+tries=1', '+time=2', '+noall', '+comments', '+answer', name, 'A'], (err, stdout) => {
      if (err) return reject(err);
      const status = /status: ([A-Z]+)/.exec(stdout)?.[1];
      if (status === 'NXDOMAIN') return resolve('NXDOMAIN');
      if (status !== 'NOERROR') return reject(new Error(`dig ${name}: status ${status}\n${stdout}`));
      resolve(
        stdout
          .split('\n')
          .filter((l) => l && !l.startsWith(';'))
          .map((l) => l.split(/\s+/))
          .filter((f) => f[3] === 'A')
          .map((f) => f[4]),
      );
    });
  });
}
