import * as http from 'http';
import type { Duplex } from 'stream';
import { GatewayAgent, GatewayClientError, LoadedOrganization, OrganizationHooks, OrgSnapshot } from '../gateway-client';
import type { BuildInfo } from './build-info';
import { applyChange, emptyDocument, fromSnapshot, OrgDocument, parseChange, toSnapshot } from './org-document';
import { renderPage } from './page';
import { acceptEcho, encodeFrame, OPCODES } from './websocket';

const MAX_BODY = 64 * 1024;

/** The default app's organization state and its HTTP surface; the protocol is the agent's. */
export class DefaultApp {
  doc: OrgDocument = emptyDocument();
  orgConfig: Readonly<Record<string, unknown>> = {};
  agent: GatewayAgent | undefined;
  /** The app's log (main.ts: JSON lines with a time); a /collab/start it accepts is logged (cold-start profile). */
  log: (fields: Record<string, unknown>) => void = () => undefined;
  readonly startedAt = new Date().toISOString();
  /** Open WebSockets (closed with 1012 when a hot reload drains this process). */
  readonly webSockets = new Set<Duplex>();

  constructor(
    readonly buildInfo: BuildInfo,
    private readonly now: () => number = Date.now,
  ) {}

  readonly hooks: OrganizationHooks = {
    load: (org: LoadedOrganization) => {
      this.doc = fromSnapshot(org.data);
      this.orgConfig = org.config;
    },
    snapshot: (): OrgSnapshot => toSnapshot(this.doc),
    unload: () => {
      this.doc = emptyDocument();
      this.orgConfig = {};
    },
  };

  private get a(): GatewayAgent {
    if (!this.agent) throw new Error('DefaultApp: agent not attached');
    return this.agent;
  }

  status(): Record<string, unknown> {
    const s = this.a.status();
    return {
      state: s.state,
      organization_id: s.organizationId,
      gateway_id: s.gatewayId,
      build: this.buildInfo.buildId,
      data: s.organizationId ? this.doc : null,
      dirty: s.dirty,
      last_push: s.lastPush,
    };
  }

  handle = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const url = (req.url ?? '/').split('?')[0];
    const method = req.method ?? 'GET';
    // Probes and the API's own calls are not the organization's activity.
    if (url !== '/healthz' && url !== '/_app/status' && url !== '/collab/start') this.a.activity();
    if (url === '/healthz' && (method === 'GET' || method === 'HEAD')) {
      json(res, 200, { status: 'ok', pid: process.pid, startedAt: this.startedAt, buildId: this.buildInfo.buildId, buildInfo: this.buildInfo.fields, state: this.a.state });
      return;
    }
    if (url === '/_app/status' && method === 'GET') {
      json(res, 200, this.status());
      return;
    }
    if (url === '/' && (method === 'GET' || method === 'HEAD')) {
      const name = this.orgConfig.organization_name;
      const html = renderPage({
        gatewayId: this.a.client.gatewayId,
        buildId: this.buildInfo.buildId,
        state: this.a.state,
        organizationId: this.a.organizationId,
        organizationName: typeof name === 'string' ? name : null,
        doc: this.doc,
      });
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store', 'content-length': Buffer.byteLength(html) });
      res.end(method === 'HEAD' ? undefined : html);
      return;
    }
    if (url === '/collab/start' || url === '/_app/data') {
      if (method !== 'POST') {
        res.setHeader('allow', 'POST');
        json(res, 405, { success: false, code: 'METHOD_NOT_ALLOWED', message: `${url} accepts POST only` });
        return;
      }
      readJson(req)
        .then((body) => (url === '/collab/start' ? this.collabStart(res, body) : this.changeData(res, body)))
        .catch((err: unknown) => json(res, 400, { success: false, code: 'INVALID_REQUEST', message: err instanceof Error ? err.message : 'bad body' }));
      return;
    }
    json(res, 404, { success: false, code: 'NOT_FOUND', message: `no such page ${url.slice(0, 100)}` });
  };

  upgrade = (req: http.IncomingMessage, socket: Duplex, head: Buffer): void => {
    if ((req.url ?? '').split('?')[0] !== '/ws') {
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    this.a.activity();
    if (!acceptEcho(req, socket, head, () => this.a.activity())) return;
    this.webSockets.add(socket);
    socket.once('close', () => this.webSockets.delete(socket));
  };

  /**
   * Closes every WebSocket cleanly with `code` (1012 Service Restart: the new
   * build serves the reconnect); returns how many were open.
   */
  closeWebSockets(code = 1012): number {
    const n = this.webSockets.size;
    const body = Buffer.alloc(2);
    body.writeUInt16BE(code, 0);
    for (const s of this.webSockets) s.end(encodeFrame(OPCODES.close, body));
    return n;
  }

  private collabStart(res: http.ServerResponse, body: unknown): void {
    try {
      this.a.acceptHandshake(body);
    } catch (err) {
      if (err instanceof GatewayClientError) {
        json(res, err.status || 400, { success: false, code: err.code, message: err.message });
        return;
      }
      throw err;
    }
    json(res, 202, { success: true, accepted: true });
    const org = (body as { organization_id?: unknown }).organization_id;
    this.log({ event: 'app.collab_start_accepted', ...(typeof org === 'string' ? { organization_id: org } : {}) });
  }

  private changeData(res: http.ServerResponse, body: unknown): void {
    const state = this.a.state;
    if (state !== 'serving') {
      json(res, state === 'stopping' ? 503 : 409, { success: false, code: 'NOT_SERVING', message: `the gateway is ${state}, not serving an organization` });
      return;
    }
    const change = parseChange(body);
    if (typeof change === 'string') {
      json(res, 400, { success: false, code: 'INVALID_REQUEST', message: change });
      return;
    }
    this.doc = applyChange(this.doc, change, new Date(this.now()));
    this.a.markDirty();
    json(res, 200, { success: true, organization_id: this.a.organizationId, data: this.doc });
  }
}

function json(res: http.ServerResponse, status: number, body: unknown): void {
  const data = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', 'content-length': Buffer.byteLength(data) });
  res.end(data);
}

function readJson(req: http.IncomingMessage): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(new Error(`body over ${MAX_BODY} bytes`));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => {
      try {
        const text = Buffer.concat(chunks).toString('utf8');
        resolve(text ? JSON.parse(text) : {});
      } catch {
        reject(new Error('malformed JSON body'));
      }
    });
    req.on('error', reject);
  });
}
