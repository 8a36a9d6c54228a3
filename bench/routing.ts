/**
 * Row 5, stage-1 routing overhead: wrk (Debian's) on loopback against stage 1
 * (TLS, regex server_name, shared-dict route lookup per request) for one allocated
 * organization, and against the same nginx proxying to a static upstream (same
 * TLS certificate and proxy directives, no lookup, no map), alternating, each run
 * for the same time with the same connections. Both reach the same stand-in
 * gateway nginx.
 */
import { execFile } from 'child_process';
import * as tls from 'tls';
import { readFileSync, readdirSync, writeFileSync } from 'fs';
import * as path from 'path';
import { proxyDirectives } from '../runtime/nginx-config';
import type { Stage1Nginx } from '../test/helpers/stage1-nginx';
import { extraConfDir } from './system';

export interface WrkRun {
  requestsPerS: number;
  p50Ms: number;
  p99Ms: number;
  requests: number;
  /** Non-2xx answers plus socket errors. */
  errors: number;
}

/** The comparison server; call before nginx starts (or reload after). */
export function writeStaticProxy(nginx: Stage1Nginx, port: number, upstream: string): void {
  writeFileSync(
    path.join(extraConfDir(nginx), 'zz-bench-static-proxy.conf'),
    `# bench only (row 5): the stage-1 proxy directives to one static upstream, no njs
# (its own copy of stage 1's Connection map: this file is loaded before the allocator writes its base config)
map $http_upgrade $bench_static_connection_upgrade {
    default upgrade;
    "" close;
}

server {
    listen 127.0.0.1:${port} ssl;
    ssl_certificate ${nginx.certFile};
    ssl_certificate_key ${nginx.keyFile};
    location / {
        proxy_pass http://${upstream};
${proxyDirectives('$bench_static_connection_upgrade')}
    }
}
`,
  );
}

function ms(v: string, unit: string): number {
  const x = Number(v);
  return unit === 'us' ? x / 1000 : unit === 's' ? x * 1000 : unit === 'm' ? x * 60_000 : x;
}

/** Parses `wrk --latency` output. */
export function parseWrk(out: string): WrkRun {
  const pct = (p: string): number => {
    const m = new RegExp(`^\\s*${p}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, 'm').exec(out);
    if (!m) throw new Error(`wrk output has no ${p}% line:\n${out}`);
    return ms(m[1], m[2]);
  };
  const rps = /^Requests\/sec:\s+([\d.]+)/m.exec(out);
  const total = /^\s*(\d+) requests in/m.exec(out);
  if (!rps || !total) throw new Error(`wrk output not understood:\n${out}`);
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(out)?.[1] ?? 0);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const sockErrors = sock ? sock.slice(1).reduce((n, x) => n + Number(x), 0) : 0;
  return { requestsPerS: Number(rps[1]), p50Ms: pct('50'), p99Ms: pct('99'), requests: Number(total[1]), errors: non2xx + sockErrors };
}

export function runWrk(url: string, host: string, seconds: number, connections: number): Promise<WrkRun> {
  const args = ['-t1', `-c${connections}`, `-d${seconds}s`, '--latency', '-H', `Host: ${host}`, url];
  return new Promise((resolve, reject) =>
    execFile('wrk', args, { timeout: (seconds + 30) * 1000 }, (err, out, stderr) => {
      if (err) return reject(new Error(`wrk ${args.join(' ')}: ${stderr || err.message}`));
      try {
        resolve(parseWrk(out));
      } catch (e) {
        reject(e);
      }
    }),
  );
}

/**
 * CPU (user + system, microseconds) the stage-1 nginx's workers have used so far: the children of its
 * master. Per request, it is the routing's cost with the machine's other load taken out (requests/s on a
 * shared 2-core machine is not; docs/bench.md, row 5).
 */
export function workersCpuUs(nginx: { prefix: string }): number {
  const master = readFileSync(path.join(nginx.prefix, 'nginx.pid'), 'utf8').trim();
  const hz = 100; // USER_HZ on Linux
  let ticks = 0;
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (f[1] === master) ticks += Number(f[11]) + Number(f[12]);
    } catch {
      /* exited meanwhile */
    }
  }
  return (ticks * 1e6) / hz;
}

/** One side's latencies of an alternating run (ms, in request order), and its failed requests. */
export interface AlternatingSide {
  latenciesMs: number[];
  errors: number;
}

/** One kept-alive TLS connection doing sequential GETs; resolves each with the status code. */
class KeptAliveClient {
  private buf: Buffer = Buffer.alloc(0);
  /** The server said `Connection: close` (nginx's keepalive_requests): open a new connection before the next request. */
  closing = false;
  private pending?: { resolve: (status: number) => void; reject: (e: Error) => void };
  private readonly request: Buffer;

  private constructor(
    private readonly socket: tls.TLSSocket,
    host: string,
  ) {
    this.request = Buffer.from(`GET / HTTP/1.1\r\nHost: ${host}\r\nUser-Agent: demiurge-bench\r\n\r\n`);
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('error', (e) => this.fail(e));
    socket.on('close', () => this.fail(new Error('connection closed before the answer')));
  }

  static open(url: string, host: string): Promise<KeptAliveClient> {
    const u = new URL(url);
    return new Promise((resolve, reject) => {
      const socket = tls.connect({ host: u.hostname, port: Number(u.port), servername: host, rejectUnauthorized: false }, () => resolve(new KeptAliveClient(socket, host)));
      socket.once('error', reject);
    });
  }

  get(): Promise<number> {
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject };
      this.socket.write(this.request);
    });
  }

  close(): void {
    this.pending = undefined;
    this.socket.destroy();
  }

  private onData(d: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    const end = this.buf.indexOf('\r\n\r\n');
    if (end < 0 || !this.pending) return;
    const head = this.buf.subarray(0, end).toString('latin1');
    const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? NaN);
    if (!Number.isFinite(length)) return this.fail(new Error(`no Content-Length in the answer: ${head.slice(0, 200)}`));
    if (this.buf.length < end + 4 + length) return;
    this.buf = this.buf.subarray(end + 4 + length);
    if (/\r\nconnection:\s*close/i.test(head)) this.closing = true;
    const p = this.pending;
    this.pending = undefined;
    p.resolve(Number(head.slice(9, 12)));
  }

  private fail(e: Error): void {
    const p = this.pending;
    this.pending = undefined;
    p?.reject(e);
  }
}

/**
 * Latency of two servers measured together: one client, one kept-alive TLS connection to each, sequential
 * requests alternating between them (a, b, then b, a, …) for `seconds`. Whatever stalls the machine (a VM's
 * host, a GC pause, another process) falls on either side alike, so the difference of their p99s is the
 * routing's own time; measured one after the other, each p99 is the stalls of its own seconds (on a shared VM,
 * ±1 ms from run to run, five times the 0.2-ms target). The client's own time is in both sides.
 */
export async function alternatingLatency(urlA: string, urlB: string, host: string, seconds: number): Promise<{ a: AlternatingSide; b: AlternatingSide }> {
  const clients = { a: await KeptAliveClient.open(urlA, host), b: await KeptAliveClient.open(urlB, host) };
  const sides = { a: { latenciesMs: [] as number[], errors: 0 }, b: { latenciesMs: [] as number[], errors: 0 } };
  const one = async (which: 'a' | 'b', side: AlternatingSide): Promise<void> => {
    if (clients[which].closing) {
      clients[which].close();
      clients[which] = await KeptAliveClient.open(which === 'a' ? urlA : urlB, host); // not timed
    }
    const c = clients[which];
    const t0 = process.hrtime.bigint();
    const status = await c.get();
    side.latenciesMs.push(Number(process.hrtime.bigint() - t0) / 1e6);
    if (status !== 200) side.errors++;
  };
  try {
    const warmUp = { latenciesMs: [], errors: 0 }; // not kept
    for (let i = 0; i < 50; i++) {
      await one('a', warmUp);
      await one('b', warmUp);
    }
    const until = performance.now() + seconds * 1000;
    for (let i = 0; performance.now() < until; i++) {
      if (i % 2 === 0) {
        await one('a', sides.a);
        await one('b', sides.b);
      } else {
        await one('b', sides.b);
        await one('a', sides.a);
      }
    }
  } finally {
    clients.a.close();
    clients.b.close();
  }
  return sides;
}
