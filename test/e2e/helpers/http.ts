/** Small HTTP helpers (no keep-alive, explicit timeouts) for probing published ports. */
import * as http from 'http';
import * as net from 'net';

export interface HttpResult {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

export function httpRequest(url: string, opts: { method?: string; headers?: Record<string, string>; timeoutMs?: number } = {}): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: opts.method ?? 'GET', headers: opts.headers, agent: false, timeout: opts.timeoutMs ?? 3000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`timeout ${url}`)));
    req.on('error', reject);
    req.end();
  });
}

export interface Healthz {
  status: string;
  pid: number;
  buildId?: string;
}

/** /healthz through a gateway's published port; undefined unless it is the stand-in's 200 JSON. */
export async function healthz(port: number): Promise<Healthz | undefined> {
  const r = await httpRequest(`http://127.0.0.1:${port}/healthz`, { timeoutMs: 2000 });
  if (r.status !== 200) return undefined;
  return JSON.parse(r.body) as Healthz;
}

/** Raw WebSocket-style upgrade through a port; resolves with the status line and the echoed payload. */
export function upgradeEcho(port: number, payload: string): Promise<{ statusLine: string; headers: string; echoed: string }> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    let buf = '';
    let headerDone = false;
    let headers = '';
    const timer = setTimeout(() => { sock.destroy(); reject(new Error(`upgrade timeout; got ${JSON.stringify(buf)}`)); }, 4000);
    sock.on('connect', () => {
      sock.write(`GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`);
    });
    sock.on('data', (d: Buffer) => {
      buf += d.toString('utf8');
      if (!headerDone && buf.includes('\r\n\r\n')) {
        headerDone = true;
        headers = buf.slice(0, buf.indexOf('\r\n\r\n'));
        buf = buf.slice(buf.indexOf('\r\n\r\n') + 4);
        sock.write(payload);
      }
      if (headerDone && buf.length >= payload.length) {
        clearTimeout(timer);
        sock.destroy();
        resolve({ statusLine: headers.split('\r\n')[0], headers, echoed: buf });
      }
    });
    sock.on('error', (e) => { clearTimeout(timer); reject(e); });
  });
}

/** True if something accepts TCP connections on host:port. */
export function tcpOpen(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, host);
    s.setTimeout(1000);
    s.on('connect', () => { s.destroy(); resolve(true); });
    s.on('timeout', () => { s.destroy(); resolve(false); });
    s.on('error', () => resolve(false));
  });
}

/** True if the port can be bound on the host (i.e. nothing else uses it). */
export function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '0.0.0.0', () => srv.close(() => resolve(true)));
  });
}
