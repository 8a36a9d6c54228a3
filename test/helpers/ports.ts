import * as dgram from 'dgram';
import { readFileSync } from 'fs';
import * as net from 'net';

/**
 * Loopback ports for the daemons a suite starts (nginx, Pebble, PowerDNS, API
 * servers), free right now and chosen OUTSIDE the kernel's ephemeral range.
 *
 * Why not `listen(0)`: the kernel answers with an ephemeral port, the very
 * range it also gives every outgoing connection. A suite often binds its port
 * much later than it picks it (the stage-1 status port only at the allocator's
 * first configuration, after a 30 s ACME order), and meanwhile any connection
 * (and its 60 s TIME_WAIT) may have used that port as its source: nginx's
 * reload then fails to bind (EADDRINUSE, logged in its error log only) while
 * `nginx -t` passes, and the suite sees "nginx did not load …". A port below
 * the ephemeral range is never a connection's source.
 *
 * Ports are random within the range (two checkouts running the same suite at
 * once rarely meet, and a meeting is caught by the bind check), never handed
 * out twice in one process, and checked by binding TCP (and, with `udp`, UDP
 * too: a DNS server needs both protocols on one port).
 */
const LOWEST = 10_000;
const handedOut = new Set<number>();

/** The kernel's ephemeral range (`net.ipv4.ip_local_port_range`); Linux's default if unreadable. */
export function ephemeralRange(): [number, number] {
  try {
    const [lo, hi] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    if (Number.isInteger(lo) && Number.isInteger(hi) && lo <= hi) return [lo, hi];
  } catch {
    /* not Linux, or no procfs: the default */
  }
  return [32768, 60999];
}

/** The range ports are drawn from: [LOWEST, 65535] minus the ephemeral range (the larger side of it). */
function candidateRange(): [number, number] {
  const [lo, hi] = ephemeralRange();
  const below: [number, number] = [LOWEST, lo - 1];
  const above: [number, number] = [hi + 1, 65535];
  const size = (r: [number, number]): number => r[1] - r[0] + 1;
  const best = size(below) >= size(above) ? below : above;
  if (size(best) < 1000) throw new Error(`fewer than 1000 ports outside the ephemeral range ${lo}-${hi} above ${LOWEST}: narrow net.ipv4.ip_local_port_range`);
  return best;
}

function tcpFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen({ port, host: '127.0.0.1', exclusive: true }, () => srv.close(() => resolve(true)));
  });
}

function udpFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = dgram.createSocket('udp4');
    sock.once('error', () => resolve(false));
    sock.bind(port, '127.0.0.1', () => sock.close(() => resolve(true)));
  });
}

/** `n` distinct loopback ports, free right now, outside the ephemeral range. */
export async function freePorts(n: number, opts: { udp?: boolean } = {}): Promise<number[]> {
  const [from, to] = candidateRange();
  const ports: number[] = [];
  for (let attempt = 0; ports.length < n; attempt += 1) {
    if (attempt >= 50 * n) throw new Error(`no ${n} free loopback port(s) in ${from}-${to} after ${attempt} attempts`);
    const port = from + Math.floor(Math.random() * (to - from + 1));
    if (handedOut.has(port)) continue;
    if (!(await tcpFree(port)) || (opts.udp && !(await udpFree(port)))) continue;
    handedOut.add(port);
    ports.push(port);
  }
  return ports;
}

/** One port, as `freePorts(1, opts)`. */
export async function freePort(opts: { udp?: boolean } = {}): Promise<number> {
  return (await freePorts(1, opts))[0];
}
