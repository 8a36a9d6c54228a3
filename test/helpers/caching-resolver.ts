import { ChildProcess, execFile, spawn } from 'child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { freePort } from './ports';
import { stopChild } from './stop-child';

export interface DnsAnswer {
  status: string;
  /** A records of the answer. */
  addresses: string[];
  /** TTL the resolver reports: of the A records, or of the SOA in the authority section for a negative answer. */
  ttl: number | undefined;
}

/** One query with dig: status, A records and the TTL the server reports. */
export function digQuery(server: string, port: number, name: string): Promise<DnsAnswer> {
  return new Promise((resolve, reject) => {
    execFile('dig', [`@${server}`, '-p', String(port), '+tries=1', '+time=2', '+noall', '+comments', '+answer', '+authority', name, 'A'], (err, stdout) => {
      if (err) return reject(new Error(`dig ${name} @${server}:${port}: ${err.message}`));
      const status = /status: ([A-Z]+)/.exec(stdout)?.[1] ?? 'NO-ANSWER';
      const rows = stdout
        .split('\n')
        .filter((l) => l && !l.startsWith(';'))
        .map((l) => l.split(/\s+/));
      const a = rows.filter((f) => f[3] === 'A');
      const soa = rows.find((f) => f[3] === 'SOA');
      resolve({ status, addresses: a.map((f) => f[4]), ttl: a.length > 0 ? Number(a[0][1]) : soa ? Number(soa[1]) : undefined });
    });
  });
}

/**
 * Debian's unbound as an ordinary caching resolver on a free loopback port,
 * with its own config in a temp dir and default cache settings, sending the
 * queries for `zone` to an authoritative server on loopback (stub zone).
 * `.test` is an RFC 6761 name unbound answers itself unless told
 * `local-zone: "test." nodefault`.
 */
export class CachingResolver {
  port = 0;
  private child: ChildProcess | undefined;
  private readonly dir: string;
  private log = '';

  constructor(
    private readonly zone: string,
    private readonly authoritative: { address: string; port: number },
    private readonly binary = 'unbound',
  ) {
    this.dir = mkdtempSync(path.join(os.tmpdir(), 'demiurge-unbound-'));
  }

  async start(): Promise<void> {
    this.port = await freePort({ udp: true });
    const conf = path.join(this.dir, 'unbound.conf');
    writeFileSync(
      conf,
      `server:
  interface: 127.0.0.1
  port: ${this.port}
  do-ip6: no
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "${this.dir}"
  pidfile: "${this.dir}/unbound.pid"
  use-syslog: no
  logfile: ""
  verbosity: 1
  num-threads: 1
  access-control: 127.0.0.0/8 allow
  # the authoritative server is on loopback, which unbound refuses to ask by default
  do-not-query-localhost: no
  # no DNSSEC: the zone is not signed and there is no trust anchor here
  module-config: "iterator"
  local-zone: "test." nodefault
stub-zone:
  name: "${this.zone}"
  stub-addr: ${this.authoritative.address}@${this.authoritative.port}
remote-control:
  control-enable: no
`,
    );
    const child = spawn(this.binary, ['-d', '-c', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout?.on('data', (d: Buffer) => (this.log += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (this.log += d.toString()));
    this.child = child;
    const end = Date.now() + 10_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`unbound exited with ${child.exitCode}: ${this.log}`);
      try {
        const a = await digQuery('127.0.0.1', this.port, this.zone);
        if (a.status !== 'NO-ANSWER') return;
      } catch {
        /* not listening yet */
      }
      if (Date.now() > end) throw new Error(`unbound did not answer on 127.0.0.1:${this.port} within 10 s: ${this.log}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  query(name: string): Promise<DnsAnswer> {
    return digQuery('127.0.0.1', this.port, name);
  }

  async stop(): Promise<void> {
    const child = this.child;
    this.child = undefined;
    await stopChild(child);
    rmSync(this.dir, { recursive: true, force: true });
  }
}
