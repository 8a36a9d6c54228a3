/**
 * Row 5, stage-1 routing overhead: wrk (Debian's) on loopback against stage 1
 * (TLS, regex server_name, shared-dict route lookup per request) for one allocated
 * organization, and against the same nginx proxying to a static upstream (same
 * TLS certificate and proxy directives, no lookup, no map), alternating, each run
 * for the same time with the same connections. Both reach the same stand-in
 * gateway nginx.
 */
import { execFile } from 'child_process';
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
