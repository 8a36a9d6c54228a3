/**
 * A closed-loop load generator for gateways: per target, `concurrency` loops that
 * each send one GET after the other (a failed request is any error, timeout or
 * status other than 200), and optionally one WebSocket held open for the whole run.
 * A WebSocket that the server closes with 1012 (Service Restart) or 1001 (Going
 * Away) is a clean close: it is reconnected at once and counted; any other end
 * (no close frame, another code, a refused reconnect) is a failure.
 * Used by the images e2e suite (stage-2 ports, plain HTTP) and the realised bench
 * (stage 1, verified TLS). Node built-ins only.
 */
import * as http from 'http';
import * as https from 'https';
import * as net from 'net';
import * as tls from 'tls';
import { randomBytes } from 'crypto';

export interface LoadTarget {
  /** Label in the results (e.g. the gateway or organization). */
  name: string;
  /** Full URL of the GET, e.g. http://127.0.0.1:7100/healthz or https://org-….test:443/ */
  url: string;
  /** Host header / TLS server name when it differs from the URL's host (a name resolved to 127.0.0.1). */
  host?: string;
  /** Path of the WebSocket held open; none: no WebSocket. */
  webSocketPath?: string;
}

export interface LoadOptions {
  targets: LoadTarget[];
  /** Loops per target (default 2). */
  concurrency?: number;
  /** CA certificates to verify TLS against (https targets). */
  ca?: string | Buffer;
  /** Reuse connections (default false: a new connection per request, as stage 1 reaches stage 2). */
  keepAlive?: boolean;
  timeoutMs?: number;
  /** Pause of each loop between two requests (pacing; default 0: back to back). */
  pauseMs?: number;
  /** Called with every 200 answer (e.g. to see which build served it). */
  onResponse?: (target: LoadTarget, body: string, atMs: number) => void;
}

export interface WebSocketRecord {
  opened: number;
  /** Closes with 1012/1001, each followed by a reconnect. */
  cleanCloses: number;
  closeCodes: number[];
  /** Ends without a close frame, other codes, failed (re)connects. */
  failures: string[];
}

export interface TargetRecord {
  requests: number;
  failed: number;
  /** First few failures, for the report. */
  failures: string[];
  webSocket: WebSocketRecord | null;
}

export interface LoadRun {
  /** Stops the loops (after their request in flight) and closes the WebSockets; resolves with the counts. */
  stop(): Promise<LoadResult>;
  /** Counts so far. */
  snapshot(): LoadResult;
}

export interface LoadResult {
  durationMs: number;
  requests: number;
  failed: number;
  webSocketFailures: number;
  webSocketCleanCloses: number;
  byTarget: Record<string, TargetRecord>;
}

const CLEAN_CLOSE_CODES = new Set([1001, 1012]);

export function startLoad(opts: LoadOptions): LoadRun {
  const concurrency = opts.concurrency ?? 2;
  const timeoutMs = opts.timeoutMs ?? 5000;
  const t0 = Date.now();
  let running = true;
  const records: Record<string, TargetRecord> = {};
  const loops: Promise<void>[] = [];
  const sockets = new Set<net.Socket>();
  const httpAgent = new http.Agent({ keepAlive: opts.keepAlive === true, maxSockets: concurrency });
  const httpsAgent = new https.Agent({ keepAlive: opts.keepAlive === true, maxSockets: concurrency, ...(opts.ca ? { ca: opts.ca } : {}) });

  const get = (t: LoadTarget): Promise<string> =>
    new Promise((resolve, reject) => {
      const u = new URL(t.url);
      const isHttps = u.protocol === 'https:';
      const headers: Record<string, string> = { 'user-agent': 'demiurge-load' };
      if (t.host) headers.host = t.host;
      if (opts.keepAlive !== true) headers.connection = 'close';
      const options: https.RequestOptions = {
        method: 'GET',
        hostname: u.hostname,
        port: u.port || (isHttps ? 443 : 80),
        path: `${u.pathname}${u.search}`,
        headers,
        agent: isHttps ? httpsAgent : httpAgent,
        timeout: timeoutMs,
        ...(isHttps ? { servername: t.host ?? u.hostname } : {}),
      };
      const req = (isHttps ? https : http).request(options, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const body = Buffer.concat(chunks).toString('utf8');
          if (res.statusCode === 200) resolve(body);
          else reject(new Error(`HTTP ${res.statusCode}: ${body.slice(0, 120)}`));
        });
        res.on('error', reject);
      });
      req.on('timeout', () => req.destroy(new Error(`timeout after ${timeoutMs} ms`)));
      req.on('error', reject);
      req.end();
    });

  const loop = async (t: LoadTarget, rec: TargetRecord): Promise<void> => {
    while (running) {
      rec.requests += 1;
      try {
        const body = await get(t);
        opts.onResponse?.(t, body, Date.now() - t0);
      } catch (err) {
        rec.failed += 1;
        if (rec.failures.length < 5) rec.failures.push(`${Date.now() - t0} ms: ${err instanceof Error ? err.message : String(err)}`);
      }
      if (opts.pauseMs) await new Promise((r) => setTimeout(r, opts.pauseMs));
    }
  };

  const holdWebSocket = (t: LoadTarget, ws: WebSocketRecord): void => {
    const u = new URL(t.url);
    const isHttps = u.protocol === 'https:';
    const port = Number(u.port || (isHttps ? 443 : 80));
    const host = t.host ?? u.hostname;
    const sock: net.Socket = isHttps
      ? tls.connect({ host: u.hostname, port, servername: host, ...(opts.ca ? { ca: opts.ca } : {}) })
      : net.connect(port, u.hostname);
    sockets.add(sock);
    let buf = Buffer.alloc(0);
    let upgraded = false;
    let closeCode: number | null = null;
    const key = randomBytes(16).toString('base64');
    sock.once(isHttps ? 'secureConnect' : 'connect', () => {
      sock.write(`GET ${t.webSocketPath} HTTP/1.1\r\nHost: ${host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${key}\r\n\r\n`);
    });
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (!upgraded) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const status = buf.subarray(0, buf.indexOf('\r\n')).toString();
        if (!/^HTTP\/1\.1 101/.test(status)) {
          ws.failures.push(`${Date.now() - t0} ms: upgrade refused: ${status}`);
          sock.destroy();
          return;
        }
        upgraded = true;
        ws.opened += 1;
        buf = buf.subarray(end + 4);
      }
      // Server frames are unmasked: a close frame is 0x88, length, then the 2-byte code.
      const at = buf.indexOf(0x88);
      if (at >= 0 && buf.length >= at + 4 && (buf[at + 1] & 0x7f) >= 2) closeCode = buf.readUInt16BE(at + 2);
    });
    sock.on('error', () => undefined);
    sock.on('close', () => {
      sockets.delete(sock);
      if (!running) return;
      if (closeCode !== null) ws.closeCodes.push(closeCode);
      if (closeCode !== null && CLEAN_CLOSE_CODES.has(closeCode)) {
        ws.cleanCloses += 1;
        holdWebSocket(t, ws);
        return;
      }
      ws.failures.push(`${Date.now() - t0} ms: ${upgraded ? (closeCode === null ? 'closed without a close frame' : `closed with code ${closeCode}`) : 'no upgrade'}`);
      // Keep holding one: the next failure is counted too.
      if (running) setTimeout(() => running && holdWebSocket(t, ws), 100);
    });
  };

  for (const t of opts.targets) {
    const rec: TargetRecord = { requests: 0, failed: 0, failures: [], webSocket: t.webSocketPath ? { opened: 0, cleanCloses: 0, closeCodes: [], failures: [] } : null };
    records[t.name] = rec;
    for (let i = 0; i < concurrency; i += 1) loops.push(loop(t, rec));
    if (rec.webSocket) holdWebSocket(t, rec.webSocket);
  }

  const snapshot = (): LoadResult => {
    const all = Object.values(records);
    return {
      durationMs: Date.now() - t0,
      requests: all.reduce((a, r) => a + r.requests, 0),
      failed: all.reduce((a, r) => a + r.failed, 0),
      webSocketFailures: all.reduce((a, r) => a + (r.webSocket?.failures.length ?? 0), 0),
      webSocketCleanCloses: all.reduce((a, r) => a + (r.webSocket?.cleanCloses ?? 0), 0),
      byTarget: JSON.parse(JSON.stringify(records)) as Record<string, TargetRecord>,
    };
  };

  return {
    snapshot,
    async stop(): Promise<LoadResult> {
      running = false;
      await Promise.all(loops);
      const result = snapshot();
      for (const s of sockets) s.destroy();
      httpAgent.destroy();
      httpsAgent.destroy();
      return result;
    },
  };
}

/** Waits until every target's WebSocket is open (bounded); throws naming the ones that are not. */
export async function webSocketsOpen(run: LoadRun, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = run.snapshot();
    const closed = Object.entries(s.byTarget).filter(([, r]) => r.webSocket && r.webSocket.opened === 0).map(([n]) => n);
    if (closed.length === 0) return;
    if (Date.now() > deadline) throw new Error(`WebSockets not open after ${timeoutMs} ms: ${closed.join(', ')}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
