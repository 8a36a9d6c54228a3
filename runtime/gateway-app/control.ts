import * as fs from 'fs';
import * as http from 'http';
import { AgentHandOff, GatewayAgent, GatewayClientError } from '../gateway-client';
import type { DefaultApp } from './server';

/** A hand-off holds an organization's whole snapshot. */
const MAX_HAND_OFF_BYTES = 256 * 1024 * 1024;

/**
 * The default app's control socket for the image's gateway-reload (a unix
 * socket in /run/gateway, never reachable through stage-2 nginx):
 *   POST /hand-off  the old app gives its session up (200 JSON AgentHandOff; 503 BUSY: ask again)
 *   POST /adopt     the new app takes it over (200; 409 BUSY if it started already)
 *   POST /drain     closes the WebSockets with 1012 (200 {"closed":n})
 * The hand-off carries the allocation token: it is never logged.
 */
export function createControlServer(app: DefaultApp, agent: GatewayAgent, log: (fields: Record<string, unknown>) => void): http.Server {
  return http.createServer((req, res) => {
    const reply = (status: number, body: unknown): void => {
      const data = JSON.stringify(body);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) });
      res.end(data);
    };
    const failed = (err: unknown): void => {
      if (err instanceof GatewayClientError) reply(err.code === 'BUSY' ? (err.status || 503) : 400, { ok: false, code: err.code, message: err.message });
      else reply(500, { ok: false, code: 'INTERNAL', message: err instanceof Error ? err.message : String(err) });
    };
    if (req.method !== 'POST') return reply(405, { ok: false, code: 'METHOD_NOT_ALLOWED' });
    const url = req.url ?? '';
    if (url === '/hand-off') {
      agent.handOff().then((h) => {
        log({ event: 'app.handed_off', organization_id: h.organizationId, dirty: h.dirty });
        reply(200, h);
      }, failed);
      return;
    }
    if (url === '/drain') {
      const closed = app.closeWebSockets(1012);
      log({ event: 'app.drained', websockets_closed: closed });
      return reply(200, { ok: true, closed });
    }
    if (url === '/adopt') {
      const chunks: Buffer[] = [];
      let size = 0;
      req.on('data', (c: Buffer) => {
        size += c.length;
        if (size > MAX_HAND_OFF_BYTES) req.destroy();
        else chunks.push(c);
      });
      req.on('end', () => {
        let h: AgentHandOff;
        try {
          h = JSON.parse(Buffer.concat(chunks).toString('utf8')) as AgentHandOff;
        } catch {
          return reply(400, { ok: false, code: 'INVALID_ARGUMENT', message: 'malformed JSON' });
        }
        agent.adopt(h).then(() => {
          log({ event: 'app.adopted', organization_id: h.organizationId ?? null, state: agent.state });
          reply(200, { ok: true, state: agent.state, organization_id: agent.organizationId });
        }, failed);
      });
      return;
    }
    reply(404, { ok: false, code: 'NOT_FOUND' });
  });
}

/** Listens on `socketPath` (a stale file of an earlier process is replaced), mode 0600. */
export function listenControl(server: http.Server, socketPath: string): Promise<void> {
  fs.rmSync(socketPath, { force: true });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => {
      fs.chmodSync(socketPath, 0o600);
      resolve();
    });
  });
}

/**
 * Tells the waiting gateway-reload that this candidate listens: one line `ready <pid>` on the FIFO
 * the supervisor names in APP_READY_FIFO (the image's candidate.events). Never blocks and never
 * fails the app: without a FIFO there, or with no reader (ENXIO) or a full pipe (EAGAIN), the reload
 * notices the listening port by itself within 50 ms. Returns whether the line was written.
 */
export function notifyReady(fifo: string): boolean {
  let fd: number | undefined;
  try {
    // A regular file of that name is left alone (O_WRONLY on it would overwrite its start).
    if (!fs.statSync(fifo).isFIFO()) return false;
    fd = fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
    fs.writeSync(fd, `ready ${process.pid}\n`);
    return true;
  } catch {
    return false;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}
