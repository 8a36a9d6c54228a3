import type { FetchLike } from '../../runtime/gateway-client';

/** What a scripted endpoint answers: a JSON answer, a connection failure, or no answer until aborted. */
export type FakeReply =
  | { status: number; body?: unknown; raw?: string; headers?: Record<string, string> }
  | { networkError: string }
  | { hang: true };

export interface FakeCall {
  path: string;
  token: string | undefined;
  body: Record<string, unknown>;
}

const REG = 'registration-token-0123456789';
const ALLOC = 'allocation-token-abcdefghijklmnop';

/**
 * An in-memory API server behind an injected fetch: it plays the documented
 * answers of /gateway/* (tokens checked like the real one), and a test can
 * queue one-off replies per endpoint (failures, hangs) in front of them.
 */
export class FakeApiFetch {
  static readonly registrationToken = REG;
  static readonly allocationToken = ALLOC;
  readonly calls: FakeCall[] = [];
  readonly script = new Map<string, FakeReply[]>();
  stored: { data: unknown; timestamp: string; version: number } | undefined;
  allocationLive = true;
  organizationId = '6f1b7c1e-2a44-4d7e-9b1f-0c3a5d7e9f11';
  handshake = 'handshake-token-0123456789abcdef';
  config: Record<string, unknown> = { organization_name: 'Acme' };

  constructor(readonly gatewayId = 'gw-pool-t-0') {}

  /** Queues replies for one endpoint (`/ready`, `/data/push`…), used before the default behaviour. */
  queue(path: string, ...replies: FakeReply[]): this {
    this.script.set(path, [...(this.script.get(path) ?? []), ...replies]);
    return this;
  }

  paths(): string[] {
    return this.calls.map((c) => c.path);
  }

  readonly fetch: FetchLike = async (url, init) => {
    const path = new URL(url).pathname.replace(/^\/gateway/, '');
    const auth = init.headers.authorization;
    const token = auth?.startsWith('Bearer ') ? auth.slice(7) : undefined;
    const body = JSON.parse(init.body) as Record<string, unknown>;
    this.calls.push({ path, token, body });
    const scripted = this.script.get(path)?.shift();
    const reply = scripted ?? this.answer(path, token, body);
    if ('networkError' in reply) throw Object.assign(new TypeError('fetch failed'), { cause: Object.assign(new Error(reply.networkError), { code: reply.networkError }) });
    if ('hang' in reply) {
      return new Promise((_resolve, reject) => {
        init.signal.addEventListener('abort', () => reject(Object.assign(new Error('This operation was aborted'), { name: 'AbortError' })), { once: true });
      });
    }
    const text = reply.raw ?? JSON.stringify(reply.body ?? {});
    const headers = new Map(Object.entries(reply.headers ?? {}).map(([k, v]) => [k.toLowerCase(), v]));
    return { status: reply.status, headers: { get: (n: string) => headers.get(n.toLowerCase()) ?? null }, text: async () => text };
  };

  private answer(path: string, token: string | undefined, body: Record<string, unknown>): FakeReply {
    const err = (status: number, code: string, retryable = false): FakeReply => ({ status, body: { success: false, code, message: `fake ${code}`, retryable } });
    const session = (): FakeReply | undefined => {
      if (token !== ALLOC) return err(401, 'UNAUTHENTICATED');
      if (!this.allocationLive) return err(401, 'TOKEN_REVOKED');
      return undefined;
    };
    switch (path) {
      case '/ready':
        if (token === REG && body.gateway_id === this.gatewayId) return { status: 200, body: { success: true, gateway_id: this.gatewayId, state: 'ready', loaded: false } };
        return session() ?? { status: 200, body: { success: true, gateway_id: this.gatewayId, organization_id: this.organizationId, state: 'allocated', loaded: true } };
      case '/config':
        if (body.handshake_token !== this.handshake) return err(401, 'HANDSHAKE_INVALID');
        this.allocationLive = true;
        return { status: 200, body: { ...this.config, success: true, organization_id: this.organizationId, gateway_id: this.gatewayId, gateway_token: ALLOC } };
      case '/data/pull':
        return session() ?? { status: 200, body: { success: true, timestamp: this.stored?.timestamp ?? null, data: this.stored?.data ?? null, version: this.stored?.version ?? null, sha256: null } };
      case '/data/push': {
        const denied = session();
        if (denied) return denied;
        this.stored = { data: body.data, timestamp: String(body.timestamp), version: (this.stored?.version ?? 0) + 1 };
        return { status: 200, body: { success: true, stored_at: body.timestamp, size_bytes: 10, version: this.stored.version, sha256: 'x' } };
      }
      case '/heartbeat':
        return session() ?? { status: 200, body: { success: true } };
      case '/stop': {
        if (token === ALLOC && !this.allocationLive) return { status: 200, body: { success: true, released: false, already_released: true } };
        const denied = session();
        if (denied) return denied;
        this.allocationLive = false;
        return { status: 200, body: { success: true, released: true } };
      }
      default:
        return err(404, 'NOT_FOUND');
    }
  }
}
