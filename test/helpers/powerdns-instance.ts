import { ChildProcess, spawn } from 'child_process';
import { randomBytes } from 'crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import axios from 'axios';
import { freePort } from './ports';
import { stopChild } from './stop-child';

const ROOT = path.resolve(__dirname, '..', '..');
const ENTRYPOINT = path.join(ROOT, 'images/powerdns/rootfs/usr/local/bin/pdns-entrypoint');

/** The cache settings the PowerDNS image writes (pdns-entrypoint), so a suite runs with exactly those. */
export function imageCacheSettings(): string[] {
  const lines = readFileSync(ENTRYPOINT, 'utf8')
    .split('\n')
    .filter((l) => /^(cache-ttl|query-cache-ttl|negquery-cache-ttl|zone-cache-refresh-interval)=/.test(l));
  if (lines.length < 3) throw new Error(`pdns-entrypoint sets only ${lines.length} cache settings: ${lines.join(', ')}`);
  return lines;
}

/**
 * A suite's own PowerDNS on the test services' gpgsql database (the same one
 * the shared test PowerDNS serves), with free DNS and API ports and the
 * image's cache settings instead of the shared instance's cache-less ones.
 */
export class PowerDnsInstance {
  dnsPort = 0;
  apiPort = 0;
  readonly apiKey = randomBytes(16).toString('hex');
  private child: ChildProcess | undefined;
  private readonly dir: string;
  private log = '';

  constructor(private readonly extraConfig: string[]) {
    this.dir = mkdtempSync(path.join(os.tmpdir(), 'demiurge-pdns-'));
  }

  get apiUrl(): string {
    return `http://127.0.0.1:${this.apiPort}`;
  }

  async start(): Promise<void> {
    this.dnsPort = await freePort({ udp: true });
    this.apiPort = await freePort();
    const shared = readFileSync(path.join(ROOT, '.test-services/pdns/pdns.conf'), 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('gpgsql-'));
    mkdirSync(path.join(this.dir, 'socket'));
    writeFileSync(
      path.join(this.dir, 'pdns.conf'),
      [
        'launch=gpgsql',
        ...shared,
        'local-address=127.0.0.1',
        `local-port=${this.dnsPort}`,
        'api=yes',
        `api-key=${this.apiKey}`,
        'webserver=yes',
        'webserver-address=127.0.0.1',
        `webserver-port=${this.apiPort}`,
        'webserver-allow-from=127.0.0.0/8',
        `socket-dir=${this.dir}/socket`,
        'default-api-rectify=no',
        'security-poll-suffix=',
        'loglevel=4',
        ...this.extraConfig,
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    const child = spawn('pdns_server', [`--config-dir=${this.dir}`, '--daemon=no', '--guardian=no', '--disable-syslog'], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout?.on('data', (d: Buffer) => (this.log += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (this.log += d.toString()));
    this.child = child;
    const end = Date.now() + 15_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`pdns_server exited with ${child.exitCode}: ${this.log.slice(-2000)}`);
      const ok = await axios
        .get(`${this.apiUrl}/api/v1/servers/localhost`, { headers: { 'X-API-Key': this.apiKey }, timeout: 1000, validateStatus: () => true })
        .then((r) => r.status === 200)
        .catch(() => false);
      if (ok) return;
      if (Date.now() > end) throw new Error(`PowerDNS API did not answer on ${this.apiUrl} within 15 s: ${this.log.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async stop(): Promise<void> {
    const child = this.child;
    this.child = undefined;
    await stopChild(child);
    rmSync(this.dir, { recursive: true, force: true });
  }
}
