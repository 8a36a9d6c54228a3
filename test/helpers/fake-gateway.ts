import * as http from 'http';
import type { AddressInfo } from 'net';
import axios from 'axios';

export interface ApiAnswer {
  status: number;
  body: Record<string, unknown>;
}

/** POST to the API as anyone; never throws on HTTP errors. */
export async function callApi(apiUrl: string, path: string, body: unknown, headers: Record<string, string> = {}, raw = false): Promise<ApiAnswer> {
  const res = await axios.post(`${apiUrl}/gateway${path}`, raw ? body : JSON.stringify(body), {
    headers: { 'content-type': 'application/json', ...headers },
    validateStatus: () => true,
    transformRequest: (d: unknown) => d,
    maxBodyLength: Infinity,
    maxContentLength: Infinity,
  });
  return { status: res.status, body: res.data as Record<string, unknown> };
}

/**
 * Plays a gateway's side of the life cycle against the API, over HTTP:
 * /collab/start → /gateway/config (handshake) → /gateway/data/pull → /gateway/ready.
 * Also answers GET /healthz with its name, so a request through stage-1 nginx shows where it landed.
 */
export class FakeGateway {
  port = 0;
  token: string | undefined;
  organizationId: string | undefined;
  lastHandshake: string | undefined;
  /** The last /collab/start body (handshake_token, organization_id, gateway_id, ganymede_url). */
  lastStart: Record<string, unknown> | undefined;
  lastConfig: Record<string, unknown> | undefined;
  lastPull: Record<string, unknown> | undefined;
  loadedOrg: string | undefined;
  handshakeError: string | undefined;
  /** When false, /collab/start answers 503 (a broken gateway). */
  accepting = true;
  private server: http.Server | undefined;

  constructor(
    readonly name: string,
    readonly registrationToken: string,
    public apiUrl: string,
  ) {}

  async listen(): Promise<void> {
    this.server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        res.setHeader('content-type', 'application/json');
        if (req.url === '/collab/start' && req.method === 'POST') {
          if (!this.accepting) {
            res.statusCode = 503;
            res.end('{"error":"not accepting"}');
            return;
          }
          const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { handshake_token: string; organization_id: string };
          this.lastHandshake = body.handshake_token;
          this.lastStart = body;
          res.statusCode = 202;
          res.end('{"accepted":true}');
          void this.handshake(body.handshake_token, body.organization_id);
          return;
        }
        res.end(JSON.stringify({ gateway: this.name, organizationId: this.loadedOrg ?? null, path: req.url }));
      });
    });
    await new Promise<void>((r) => this.server?.listen(0, '127.0.0.1', r));
    this.port = (this.server?.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }

  /** The pool-ready signal, with the stack's registration token. */
  ready(): Promise<ApiAnswer> {
    return callApi(this.apiUrl, '/ready', { gateway_id: this.name }, { authorization: `Bearer ${this.registrationToken}` });
  }

  private async handshake(handshakeToken: string, orgId: string): Promise<void> {
    try {
      const cfg = await callApi(this.apiUrl, '/config', { handshake_token: handshakeToken });
      if (cfg.status !== 200) throw new Error(`config ${cfg.status} ${JSON.stringify(cfg.body)}`);
      this.lastConfig = cfg.body;
      this.token = cfg.body.gateway_token as string;
      this.organizationId = orgId;
      const pull = await this.call('/data/pull', { organization_id: orgId, gateway_id: this.name });
      if (pull.status !== 200) throw new Error(`pull ${pull.status} ${JSON.stringify(pull.body)}`);
      this.lastPull = pull.body;
      const ready = await this.call('/ready', { gateway_id: this.name, organization_id: orgId });
      if (ready.status !== 200) throw new Error(`ready ${ready.status} ${JSON.stringify(ready.body)}`);
      this.loadedOrg = orgId;
    } catch (err) {
      this.handshakeError = err instanceof Error ? err.message : String(err);
    }
  }

  /** A gateway-token call. */
  call(path: string, body: unknown, token = this.token): Promise<ApiAnswer> {
    return callApi(this.apiUrl, path, body, token ? { authorization: `Bearer ${token}` } : {});
  }

  async waitLoaded(orgId: string, timeoutMs = 10_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (this.loadedOrg !== orgId) {
      if (this.handshakeError) throw new Error(`${this.name}: handshake failed: ${this.handshakeError}`);
      if (Date.now() > end) throw new Error(`${this.name} did not load ${orgId} within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Forgets the organization (as after its process exits). */
  reset(): void {
    this.token = undefined;
    this.organizationId = undefined;
    this.loadedOrg = undefined;
    this.lastPull = undefined;
    this.handshakeError = undefined;
  }
}
