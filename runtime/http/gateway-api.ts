import type { Allocation, AllocatorLogger, GatewayAllocator, TokenHolder } from '../allocator';
import { isAllocatorError } from '../errors';
import { GatewaySessions, SessionKey } from '../gateway-sessions';
import { isCanonicalOrgId } from '../naming';
import { JsonValue, OrgDataStore } from '../org-data-store';
import { isValidGatewayName } from '../validation';
import { GatewayApiError, toErrorResponse } from './api-errors';
import { requestJson } from '../json-http';

/** What the handlers need of an HTTP request; any framework can build it. */
export interface ApiRequest {
  headers: Readonly<Record<string, string | string[] | undefined>>;
  /** The parsed JSON body (undefined when there was none). */
  body: unknown;
}

export interface ApiResponse {
  status: number;
  body: { success: boolean; [key: string]: unknown };
}

/** What the gateway is sent on /collab/start. */
export interface CollabStartPayload {
  handshake_token: string;
  organization_id: string;
  gateway_id: string;
  /** Where the gateway calls back (/gateway/config, /gateway/data/*), when the host configured it. */
  ganymede_url?: string;
}

export interface GatewayTarget {
  name: string;
  host: string;
  httpPort: number;
  fqdn: string;
}

/** The organization's configuration handed to the gateway with its token; the host's own data. */
export type OrganizationConfig = { [key: string]: JsonValue };

export interface GatewayApiOptions<User = unknown> {
  allocator: GatewayAllocator;
  /**
   * The host's user authentication for /gateway/start: return the user, or a
   * falsy value for 401. Throw `new GatewayApiError('FORBIDDEN', …)` when the
   * user may not start this organization.
   */
  authenticateUser: (req: ApiRequest, ctx: { organizationId: string }) => Promise<User | null | undefined | false> | User | null | undefined | false;
  /** Optional separate authorisation step: false → 403. */
  authorizeOrganization?: (user: User, organizationId: string) => Promise<boolean> | boolean;
  /** The organization's config for /gateway/config (name, projects, members…); default `{}`. */
  organizationConfig?: (organizationId: string) => Promise<OrganizationConfig> | OrganizationConfig;
  /** Delivers the handshake to the gateway; default POST http://<host>:<httpPort>/collab/start. */
  startGateway?: (target: GatewayTarget, payload: CollabStartPayload) => Promise<void>;
  /** Public URL of this API (sent to gateways as ganymede_url). */
  publicUrl?: string;
  /** Data store; default one on the allocator's database. */
  data?: OrgDataStore;
  /** Largest snapshot accepted; default 16 MiB (ignored when `data` is given). */
  maxSnapshotBytes?: number;
  /** How long a handshake token stays usable; default 60 s. */
  handshakeTtlMs?: number;
  /** A gateway that consumed its handshake but has not reported the organization loaded after this long is sent a new one; default 120 s. */
  loadTimeoutMs?: number;
  /** Timeout of the /collab/start call; default 5 s. */
  gatewayTimeoutMs?: number;
  /** Structured events (never tokens); default: the allocator's logger convention (JSON on stderr); null silences. */
  logger?: AllocatorLogger | null;
}

type Handler = (req: ApiRequest) => Promise<ApiResponse>;

/** The seven endpoints, by path relative to the router's mount point. */
export const GATEWAY_ROUTES = ['/start', '/config', '/ready', '/stop', '/heartbeat', '/data/push', '/data/pull'] as const;
export type GatewayRoute = (typeof GATEWAY_ROUTES)[number];

function bearer(req: ApiRequest): string | undefined {
  const raw = req.headers.authorization ?? req.headers.Authorization;
  const value = Array.isArray(raw) ? raw[0] : raw;
  if (typeof value !== 'string') return undefined;
  const m = /^Bearer ([A-Za-z0-9._~+/=-]{16,200})$/.exec(value.trim());
  return m ? m[1] : undefined;
}

function bodyObject(req: ApiRequest, optional = false): Record<string, unknown> {
  if (req.body === undefined || req.body === null || (typeof req.body === 'object' && !Array.isArray(req.body) && Object.keys(req.body as object).length === 0)) {
    if (optional) return {};
  }
  if (typeof req.body !== 'object' || req.body === null || Array.isArray(req.body)) {
    throw new GatewayApiError('INVALID_REQUEST', 'the request body must be a JSON object');
  }
  return req.body as Record<string, unknown>;
}

function orgField(body: Record<string, unknown>, required: boolean): string | undefined {
  const v = body.organization_id;
  if (v === undefined && !required) return undefined;
  if (typeof v !== 'string') throw new GatewayApiError('INVALID_REQUEST', 'organization_id must be a string (a UUID)');
  if (!isCanonicalOrgId(v)) throw new GatewayApiError('INVALID_REQUEST', 'organization_id must be a canonical lowercase UUID');
  return v;
}

function gatewayField(body: Record<string, unknown>, required: boolean): string | undefined {
  const v = body.gateway_id;
  if (v === undefined && !required) return undefined;
  if (typeof v !== 'string' || !isValidGatewayName(v)) throw new GatewayApiError('INVALID_REQUEST', 'gateway_id must be a gateway name (a lowercase DNS label)');
  return v;
}

function timestampField(body: Record<string, unknown>): Date | undefined {
  const v = body.timestamp;
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string' || !/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/.test(v) || Number.isNaN(Date.parse(v))) {
    throw new GatewayApiError('INVALID_REQUEST', 'timestamp must be an ISO 8601 date-time such as 2025-01-15T10:30:00Z');
  }
  return new Date(v);
}

async function defaultStartGateway(target: GatewayTarget, payload: CollabStartPayload, timeoutMs: number): Promise<void> {
  const res = await requestJson({ method: 'POST', url: `http://${target.host}:${target.httpPort}/collab/start`, body: payload, timeoutMs });
  // The gateway's own answer is not ours to interpret beyond success.
  if (res.status < 200 || res.status >= 300) throw new Error(`gateway answered ${res.status} to /collab/start`);
}

/**
 * Framework-free handlers of the gateway life cycle (the seed's Ganymede
 * endpoints). Each takes the parsed request and returns a status and a JSON
 * body; every failure is `{ success: false, code, message, retryable }` with a
 * stable code (runtime/http/api-errors.ts), never a stack trace or a secret.
 */
export class GatewayApi<User = unknown> {
  readonly data: OrgDataStore;
  readonly sessions: GatewaySessions;
  private readonly allocator: GatewayAllocator;
  private readonly opts: GatewayApiOptions<User>;
  private readonly handshakeTtlMs: number;
  private readonly loadTimeoutMs: number;
  private readonly log: AllocatorLogger;
  private readonly handlers: Record<GatewayRoute, Handler>;

  constructor(opts: GatewayApiOptions<User>) {
    if (!opts.allocator) throw new GatewayApiError('INVALID_CONFIG', 'GatewayApi needs an allocator');
    if (typeof opts.authenticateUser !== 'function') throw new GatewayApiError('INVALID_CONFIG', 'GatewayApi needs an authenticateUser callback');
    this.allocator = opts.allocator;
    this.opts = opts;
    this.data = opts.data ?? new OrgDataStore({ pg: opts.allocator.pgPool, schema: opts.allocator.schema, maxBytes: opts.maxSnapshotBytes });
    this.sessions = new GatewaySessions(opts.allocator.pgPool, opts.allocator.schema);
    this.handshakeTtlMs = opts.handshakeTtlMs ?? 60_000;
    this.loadTimeoutMs = opts.loadTimeoutMs ?? 120_000;
    const env = opts.allocator.envName;
    this.log =
      opts.logger === null
        ? () => undefined
        : (opts.logger ?? ((e) => process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), ...e, env })}\n`)));
    this.handlers = {
      '/start': (r) => this.start(r),
      '/config': (r) => this.config(r),
      '/ready': (r) => this.ready(r),
      '/stop': (r) => this.stop(r),
      '/heartbeat': (r) => this.heartbeat(r),
      '/data/push': (r) => this.push(r),
      '/data/pull': (r) => this.pull(r),
    };
  }

  /** Runs one endpoint; never throws. */
  async handle(route: GatewayRoute, req: ApiRequest): Promise<ApiResponse> {
    const handler = this.handlers[route];
    if (!handler) return this.fail(new GatewayApiError('NOT_FOUND', `no such endpoint ${String(route)}`), route);
    try {
      return await handler(req);
    } catch (err) {
      return this.fail(err, route);
    }
  }

  /** Answers for failures that happen before a handler runs (body parsing, unknown paths). */
  fail(err: unknown, route: string): ApiResponse {
    const { status, body, internal } = toErrorResponse(err);
    if (internal) this.log({ event: 'api.error', env: this.allocator.envName, route, error: body.code, message: err instanceof Error ? err.message : String(err) });
    return { status, body };
  }

  // ------------------------------------------------------------ user side

  /** POST /start {organization_id}: allocate (idempotent), then hand the gateway its organization. */
  async start(req: ApiRequest): Promise<ApiResponse> {
    const body = bodyObject(req);
    const organizationId = orgField(body, true) as string;
    const user = await this.opts.authenticateUser(req, { organizationId });
    if (!user) throw new GatewayApiError('UNAUTHENTICATED', 'user authentication required');
    if (this.opts.authorizeOrganization && !(await this.opts.authorizeOrganization(user, organizationId))) {
      throw new GatewayApiError('FORBIDDEN', `not allowed to start organization ${organizationId}`);
    }
    const allocation = await this.allocator.allocate(organizationId);
    const key: SessionKey = { gateway: allocation.name, allocationId: allocation.allocationId, organizationId };
    const session = await this.sessions.state(key);
    let status: 'ready' | 'starting';
    if (session?.loadedAt) {
      status = 'ready';
    } else if (session && !session.consumedAt && !session.handshakeExpired) {
      status = 'starting'; // a handshake is on its way; do not send a second one
    } else if (session?.consumedAt && Date.now() - session.consumedAt.getTime() < this.loadTimeoutMs) {
      status = 'starting'; // the gateway has its config and is loading
    } else {
      await this.handOver(allocation, key);
      status = 'starting';
    }
    return {
      status: 200,
      body: {
        success: true,
        organization_id: organizationId,
        gateway_id: allocation.name,
        gateway_url: `https://${allocation.fqdn}`,
        fqdn: allocation.fqdn,
        created: allocation.created,
        status,
      },
    };
  }

  /**
   * Sends the gateway a fresh handshake. If it cannot be delivered the gateway
   * is presumed broken: the allocation is released (fenced on its id) with the
   * gateway quarantined until it calls /gateway/ready again, and the caller is
   * told to retry, which allocates another gateway.
   */
  private async handOver(allocation: Allocation, key: SessionKey): Promise<void> {
    const token = await this.sessions.issueHandshake(key, this.handshakeTtlMs);
    const payload: CollabStartPayload = { handshake_token: token, organization_id: key.organizationId, gateway_id: key.gateway };
    if (this.opts.publicUrl) payload.ganymede_url = this.opts.publicUrl;
    const target: GatewayTarget = { name: allocation.name, host: allocation.host, httpPort: allocation.httpPort, fqdn: allocation.fqdn };
    try {
      await (this.opts.startGateway ? this.opts.startGateway(target, payload) : defaultStartGateway(target, payload, this.opts.gatewayTimeoutMs ?? 5000));
      this.log({ event: 'gateway.handshake_sent', env: this.allocator.envName, gateway: key.gateway, organizationId: key.organizationId });
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      this.log({ event: 'gateway.unreachable', env: this.allocator.envName, gateway: key.gateway, organizationId: key.organizationId, message: reason });
      await this.sessions.cancelHandshake(key).catch(() => undefined);
      await this.allocator.release(key.organizationId, { allocationId: key.allocationId, quarantine: true }).catch((e: unknown) => {
        this.log({ event: 'gateway.quarantine_failed', env: this.allocator.envName, gateway: key.gateway, organizationId: key.organizationId, message: e instanceof Error ? e.message : String(e) });
      });
      throw new GatewayApiError('GATEWAY_UNREACHABLE', `gateway ${key.gateway} did not accept the organization; it was taken out of the pool, retry to get another one`);
    }
  }

  // ------------------------------------------------------------ gateway side

  /** POST /config (handshake token, bearer or body): the organization's config and the gateway token. Single use. */
  async config(req: ApiRequest): Promise<ApiResponse> {
    const body = bodyObject(req, true);
    const fromBody = body.handshake_token;
    if (fromBody !== undefined && typeof fromBody !== 'string') throw new GatewayApiError('INVALID_REQUEST', 'handshake_token must be a string');
    const token = bearer(req) ?? (fromBody as string | undefined);
    if (!token) throw new GatewayApiError('UNAUTHENTICATED', 'a handshake token is required (Authorization: Bearer <token> or handshake_token)');
    const peek = await this.sessions.peekHandshake(token);
    if (peek.kind === 'invalid') throw new GatewayApiError('HANDSHAKE_INVALID', 'the handshake token is unknown, expired or already used');
    // Prepared before the token is used up, so a failing host callback leaves the handshake usable.
    const orgConfig = this.opts.organizationConfig ? await this.opts.organizationConfig(peek.session.organizationId) : {};
    const used = await this.sessions.consumeHandshake(token);
    if (used.kind === 'invalid') throw new GatewayApiError('HANDSHAKE_INVALID', 'the handshake token is unknown, expired or already used');
    if (used.kind === 'ended') throw new GatewayApiError('NOT_ALLOCATED', `the allocation this handshake was issued for has ended`);
    const { gateway, organizationId, allocationId } = used.session;
    const gatewayToken = await this.allocator.rotateToken(organizationId, { allocationId });
    this.log({ event: 'gateway.configured', env: this.allocator.envName, gateway, organizationId });
    return {
      status: 200,
      body: { ...orgConfig, success: true, organization_id: organizationId, gateway_id: gateway, gateway_token: gatewayToken },
    };
  }

  /**
   * POST /ready. With the gateway's registration token (the stack's
   * GATEWAY_TOKEN) and `gateway_id`: the gateway can be allocated. With its
   * allocation token: it has loaded its organization.
   */
  async ready(req: ApiRequest): Promise<ApiResponse> {
    const body = bodyObject(req, true);
    const gatewayId = gatewayField(body, false);
    const token = bearer(req);
    if (!token) throw new GatewayApiError('UNAUTHENTICATED', 'Authorization: Bearer <token> is required');
    const inspected = await this.allocator.inspectToken(token);
    if (inspected.status === 'valid') {
      const holder = inspected.holder;
      if (gatewayId !== undefined && gatewayId !== holder.gateway) throw new GatewayApiError('FORBIDDEN', 'gateway_id does not match the token');
      const organizationId = orgField(body, false);
      if (organizationId !== undefined && organizationId !== holder.organizationId) throw new GatewayApiError('FORBIDDEN', 'organization_id does not match the token');
      await this.sessions.markLoaded(holder);
      this.log({ event: 'gateway.loaded', env: this.allocator.envName, gateway: holder.gateway, organizationId: holder.organizationId });
      return { status: 200, body: { success: true, gateway_id: holder.gateway, organization_id: holder.organizationId, state: 'allocated', loaded: true } };
    }
    if (inspected.status === 'retired') throw new GatewayApiError('TOKEN_REVOKED', 'this gateway token belongs to a released allocation');
    if (gatewayId === undefined) throw new GatewayApiError('UNAUTHENTICATED', 'unknown token (a registration token needs gateway_id)');
    if (!(await this.allocator.verifyRegistration(gatewayId, token))) throw new GatewayApiError('UNAUTHENTICATED', 'invalid registration token for this gateway');
    const states = await this.allocator.markReady(gatewayId);
    return { status: 200, body: { success: true, gateway_id: gatewayId, state: states[gatewayId], loaded: false } };
  }

  /** POST /stop (gateway token): stores the final snapshot if one is sent, then releases. A second stop is harmless. */
  async stop(req: ApiRequest): Promise<ApiResponse> {
    const token = bearer(req);
    if (!token) throw new GatewayApiError('UNAUTHENTICATED', 'Authorization: Bearer <gateway token> is required');
    const body = bodyObject(req, true);
    const inspected = await this.allocator.inspectToken(token);
    if (inspected.status === 'retired') {
      return { status: 200, body: { success: true, released: false, already_released: true, gateway_id: inspected.gateway, organization_id: inspected.organizationId } };
    }
    if (inspected.status !== 'valid') throw new GatewayApiError('UNAUTHENTICATED', 'unknown gateway token');
    const holder = inspected.holder;
    this.checkOwnership(body, holder);
    let pushed: number | undefined;
    if (body.data !== undefined) {
      // Nothing is released unless the final snapshot is safe.
      pushed = (await this.data.push(holder.organizationId, body.data, { gateway: holder.gateway, allocationId: holder.allocationId }, timestampField(body))).version;
    }
    try {
      await this.allocator.release(holder.organizationId, { allocationId: holder.allocationId });
    } catch (err) {
      if (!isAllocatorError(err, 'NOT_ALLOCATED')) throw err;
      return { status: 200, body: { success: true, released: false, already_released: true, gateway_id: holder.gateway, organization_id: holder.organizationId } };
    }
    return { status: 200, body: { success: true, released: true, gateway_id: holder.gateway, organization_id: holder.organizationId, ...(pushed ? { version: pushed } : {}) } };
  }

  /** POST /heartbeat: the token check itself refreshes `last_heartbeat_at` (as it does for every gateway call). */
  async heartbeat(req: ApiRequest): Promise<ApiResponse> {
    const holder = await this.gatewayAuth(req);
    this.checkOwnership(bodyObject(req, true), holder);
    return { status: 200, body: { success: true, gateway_id: holder.gateway, organization_id: holder.organizationId } };
  }

  /** POST /data/push {organization_id, gateway_id?, timestamp?, data}: only for the organization the token's gateway holds. */
  async push(req: ApiRequest): Promise<ApiResponse> {
    const holder = await this.gatewayAuth(req);
    const body = bodyObject(req);
    this.checkOwnership(body, holder, true);
    if (body.data === undefined) throw new GatewayApiError('INVALID_REQUEST', 'data is required: { yjs_state, gateway_state }');
    const result = await this.data.push(holder.organizationId, body.data, { gateway: holder.gateway, allocationId: holder.allocationId }, timestampField(body));
    return { status: 200, body: { success: true, stored_at: result.storedAt, size_bytes: result.bytes, version: result.version, sha256: result.sha256 } };
  }

  /** POST /data/pull {organization_id, gateway_id?}: the latest snapshot, or nulls for a new organization. */
  async pull(req: ApiRequest): Promise<ApiResponse> {
    const holder = await this.gatewayAuth(req);
    this.checkOwnership(bodyObject(req), holder, true);
    const r = await this.data.pull(holder.organizationId);
    return { status: 200, body: { success: true, timestamp: r.timestamp, data: r.data, version: r.version, sha256: r.sha256 } };
  }

  // ------------------------------------------------------------ helpers

  private async gatewayAuth(req: ApiRequest): Promise<TokenHolder> {
    const token = bearer(req);
    if (!token) throw new GatewayApiError('UNAUTHENTICATED', 'Authorization: Bearer <gateway token> is required');
    const inspected = await this.allocator.inspectToken(token);
    if (inspected.status === 'retired') throw new GatewayApiError('TOKEN_REVOKED', 'this gateway token belongs to a released allocation');
    if (inspected.status !== 'valid') throw new GatewayApiError('UNAUTHENTICATED', 'unknown gateway token');
    return inspected.holder;
  }

  /** Body fields, when sent, must name the token's own organization and gateway. */
  private checkOwnership(body: Record<string, unknown>, holder: TokenHolder, orgRequired = false): void {
    const organizationId = orgField(body, orgRequired);
    const gatewayId = gatewayField(body, false);
    if (organizationId !== undefined && organizationId !== holder.organizationId) throw new GatewayApiError('FORBIDDEN', "this token's gateway does not hold that organization");
    if (gatewayId !== undefined && gatewayId !== holder.gateway) throw new GatewayApiError('FORBIDDEN', 'gateway_id does not match the token');
  }
}
