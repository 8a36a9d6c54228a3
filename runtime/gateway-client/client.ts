import { isCanonicalOrgId } from '../naming';
import { httpFetch } from './http-fetch';
import { isValidGatewayName } from '../validation';
import { DEFAULT_RETRY, resolvePolicy, RetryPolicy } from './backoff';
import { GatewayClientError } from './errors';
import { realScheduler, Scheduler } from './scheduler';
import { FetchLike, GatewayClientLogger, postJson, TransportOptions } from './transport';

/** Tokens as the API's bearer parser accepts them. */
const TOKEN_RE = /^[A-Za-z0-9._~+/=-]{16,200}$/;

export function isBearerToken(value: unknown): value is string {
  return typeof value === 'string' && TOKEN_RE.test(value);
}

/** An organization's data as the API stores it (see README "API-server integration"). */
export interface OrgSnapshot {
  /** Project id → base64 Yjs state. */
  yjs_state: Record<string, string>;
  gateway_state: Record<string, unknown>;
}

export interface GatewayClientOptions {
  /** The API's base URL, without `/gateway` (e.g. `http://demiurge-dev-dev:6000`). */
  baseUrl: string;
  /** This gateway's name (GATEWAY_ID). */
  gatewayId: string;
  /** The gateway's registration token (GATEWAY_TOKEN): used for /gateway/ready only. */
  registrationToken: string;
  /** Default: node:http(s) (httpFetch; the global fetch refuses the API server's port 6000). */
  fetch?: FetchLike;
  scheduler?: Scheduler;
  /** Jitter source, [0, 1); default Math.random. */
  random?: () => number;
  /** Per-request timeout; default 10 s. */
  timeoutMs?: number;
  /** Retries of every call but `ready({ untilAnswered })`. */
  retry?: Partial<RetryPolicy>;
  /** Retries of `ready({ untilAnswered: true })`: unlimited attempts, back-off up to 30 s by default. */
  registrationRetry?: Partial<RetryPolicy>;
  /** Retry and failure events (no tokens); default none. */
  logger?: GatewayClientLogger | null;
}

export interface ReadyResult {
  gatewayId: string;
  /** The pool state the API reports (ready, or allocated when it still holds an organization). */
  state: string;
}

export interface PulledSnapshot {
  /** ISO time of the stored snapshot; null for an organization without data. */
  timestamp: string | null;
  data: OrgSnapshot | null;
  version: number | null;
  sha256: string | null;
}

export interface PushReceipt {
  storedAt: string;
  sizeBytes: number;
  version: number;
  sha256: string;
}

export interface StopResult {
  /** False when the allocation had already ended (a second stop, a reaped gateway). */
  released: boolean;
  version?: number;
}

export interface CallSignal {
  signal?: AbortSignal;
}

function str(v: unknown): string | null {
  return typeof v === 'string' ? v : null;
}

function num(v: unknown): number | null {
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

/**
 * The gateway's side of the API server's /gateway endpoints (Node built-ins
 * only: it is bundled into gateways). Two kinds of token never mix: the
 * registration token (GATEWAY_TOKEN) proves which gateway this is to
 * /gateway/ready; the allocation token from /gateway/config lives in a
 * GatewaySession and authenticates everything done for that organization.
 * Tokens are never logged, never in error messages, never in JSON.stringify.
 */
export class GatewayClient {
  readonly gatewayId: string;
  readonly baseUrl: string;
  readonly scheduler: Scheduler;
  readonly #registrationToken: string;
  readonly #transport: TransportOptions;
  readonly #policy: RetryPolicy;
  readonly #registrationPolicy: RetryPolicy;

  constructor(opts: GatewayClientOptions) {
    const bad = (msg: string): never => {
      throw new GatewayClientError('INVALID_ARGUMENT', msg);
    };
    let url: URL | undefined;
    try {
      url = new URL(opts.baseUrl);
    } catch {
      bad('baseUrl must be an absolute http(s) URL');
    }
    if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:')) bad('baseUrl must be an http or https URL');
    if (url && (url.username || url.password || url.search || url.hash)) bad('baseUrl must not carry credentials, a query or a fragment');
    if (!isValidGatewayName(opts.gatewayId)) bad('gatewayId must be a gateway name (a lowercase DNS label)');
    if (!isBearerToken(opts.registrationToken)) bad('registrationToken must be 16..200 characters of [A-Za-z0-9._~+/=-]');
    // node:http by default: the global fetch refuses port 6000, the API server's (see http-fetch.ts).
    const fetchImpl = opts.fetch ?? httpFetch;
    if (typeof fetchImpl !== 'function') bad('no fetch available (Node >= 20 has one, or pass options.fetch)');
    const timeoutMs = opts.timeoutMs ?? 10_000;
    if (!(Number.isFinite(timeoutMs) && timeoutMs > 0)) bad('timeoutMs must be a positive number');
    this.gatewayId = opts.gatewayId;
    this.baseUrl = opts.baseUrl.replace(/\/+$/, '');
    this.scheduler = opts.scheduler ?? realScheduler;
    this.#registrationToken = opts.registrationToken;
    this.#policy = resolvePolicy(DEFAULT_RETRY, opts.retry);
    this.#registrationPolicy = resolvePolicy({ ...DEFAULT_RETRY, maxAttempts: Infinity, maxDelayMs: 30_000 }, opts.registrationRetry);
    this.#transport = {
      baseUrl: this.baseUrl,
      fetch: fetchImpl as FetchLike,
      scheduler: this.scheduler,
      random: opts.random ?? Math.random,
      timeoutMs,
      logger: opts.logger ?? (() => undefined),
    };
  }

  /**
   * POST /gateway/ready with the registration token: this gateway can be
   * allocated. With `untilAnswered` it retries (back-off, jitter) until the API
   * answers; a refusal (wrong token, unknown gateway) still fails at once.
   */
  async ready(opts: CallSignal & { untilAnswered?: boolean } = {}): Promise<ReadyResult> {
    const body = await postJson(this.#transport, '/ready', { gateway_id: this.gatewayId }, this.#registrationToken, {
      policy: opts.untilAnswered ? this.#registrationPolicy : this.#policy,
      idempotent: true,
      signal: opts.signal,
    });
    return { gatewayId: str(body.gateway_id) ?? this.gatewayId, state: str(body.state) ?? 'unknown' };
  }

  /**
   * POST /gateway/config with the handshake token from /collab/start (single
   * use): returns the session holding the allocation token and the
   * organization's config. Repeated only when the API certainly did not use it.
   */
  async config(handshakeToken: string, opts: CallSignal = {}): Promise<GatewaySession> {
    if (!isBearerToken(handshakeToken)) throw new GatewayClientError('INVALID_ARGUMENT', 'the handshake token is malformed');
    const body = await postJson(this.#transport, '/config', { handshake_token: handshakeToken }, undefined, { policy: this.#policy, idempotent: false, signal: opts.signal });
    const { success: _s, organization_id: org, gateway_id: gw, gateway_token: token, ...config } = body;
    void _s;
    if (!isCanonicalOrgId(org) || gw !== this.gatewayId || !isBearerToken(token)) {
      throw new GatewayClientError('BAD_RESPONSE', '/gateway/config: the answer lacks organization_id, this gateway_id or a gateway_token', { endpoint: '/gateway/config', status: 200 });
    }
    return new GatewaySession(this.#transport, this.#policy, this.gatewayId, org, token, config);
  }

  /** A session from an allocation token obtained elsewhere (e.g. kept across a restart by the host). */
  resume(organizationId: string, gatewayToken: string, config: Record<string, unknown> = {}): GatewaySession {
    if (!isCanonicalOrgId(organizationId)) throw new GatewayClientError('INVALID_ARGUMENT', 'organizationId must be a canonical lowercase UUID');
    if (!isBearerToken(gatewayToken)) throw new GatewayClientError('INVALID_ARGUMENT', 'the gateway token is malformed');
    return new GatewaySession(this.#transport, this.#policy, this.gatewayId, organizationId, gatewayToken, config);
  }

  toJSON(): Record<string, unknown> {
    return { gatewayId: this.gatewayId, baseUrl: this.baseUrl };
  }
}

/** One allocation of this gateway to one organization; everything it does uses the allocation token. */
export class GatewaySession {
  readonly #transport: TransportOptions;
  readonly #policy: RetryPolicy;
  readonly #token: string;
  #ended = false;

  constructor(
    transport: TransportOptions,
    policy: RetryPolicy,
    readonly gatewayId: string,
    readonly organizationId: string,
    token: string,
    /** The host's organization config from /gateway/config (name, projects, members…). */
    readonly config: Readonly<Record<string, unknown>>,
  ) {
    this.#transport = transport;
    this.#policy = policy;
    this.#token = token;
  }

  /** True after a stop, or after the API said the token's allocation is over. */
  get ended(): boolean {
    return this.#ended;
  }

  /** POST /gateway/ready with the allocation token: the organization is loaded. */
  async loaded(opts: CallSignal = {}): Promise<void> {
    await this.call('/ready', { gateway_id: this.gatewayId, organization_id: this.organizationId }, opts);
  }

  async pull(opts: CallSignal = {}): Promise<PulledSnapshot> {
    const b = await this.call('/data/pull', { organization_id: this.organizationId, gateway_id: this.gatewayId }, opts);
    const data = b.data && typeof b.data === 'object' && !Array.isArray(b.data) ? (b.data as OrgSnapshot) : null;
    return { timestamp: str(b.timestamp), data, version: num(b.version), sha256: str(b.sha256) };
  }

  /** Stores a snapshot; `timestamp` (default now) lets the API refuse one older than what it has (STALE_SNAPSHOT). */
  async push(data: OrgSnapshot, opts: CallSignal & { timestamp?: Date } = {}): Promise<PushReceipt> {
    const timestamp = (opts.timestamp ?? new Date(this.#transport.scheduler.now())).toISOString();
    const b = await this.call('/data/push', { organization_id: this.organizationId, gateway_id: this.gatewayId, timestamp, data }, opts);
    return { storedAt: str(b.stored_at) ?? '', sizeBytes: num(b.size_bytes) ?? 0, version: num(b.version) ?? 0, sha256: str(b.sha256) ?? '' };
  }

  async heartbeat(opts: CallSignal & { retry?: boolean } = {}): Promise<void> {
    await this.call('/heartbeat', { organization_id: this.organizationId, gateway_id: this.gatewayId }, opts, opts.retry === false ? { ...this.#policy, maxAttempts: 1 } : undefined);
  }

  /** POST /gateway/stop (with a final snapshot if given): releases the gateway. A second stop answers released: false. */
  async stop(opts: CallSignal & { data?: OrgSnapshot; timestamp?: Date } = {}): Promise<StopResult> {
    const body: Record<string, unknown> = { organization_id: this.organizationId, gateway_id: this.gatewayId };
    if (opts.data) {
      body.data = opts.data;
      body.timestamp = (opts.timestamp ?? new Date(this.#transport.scheduler.now())).toISOString();
    }
    const b = await this.call('/stop', body, opts);
    this.#ended = true;
    const version = num(b.version);
    return { released: b.released === true, ...(version !== null ? { version } : {}) };
  }

  /**
   * The allocation token, for GatewayAgent.handOff only (a hot reload hands the
   * session to the new process over the gateway's local control socket).
   */
  handOffToken(): string {
    return this.#token;
  }

  toJSON(): Record<string, unknown> {
    return { gatewayId: this.gatewayId, organizationId: this.organizationId, ended: this.#ended };
  }

  private async call(path: string, body: unknown, opts: CallSignal, policy?: RetryPolicy): Promise<Record<string, unknown>> {
    if (this.#ended) throw new GatewayClientError('SESSION_ENDED', `/gateway${path}: this session has ended`, { endpoint: `/gateway${path}` });
    try {
      return await postJson(this.#transport, path, body, this.#token, { policy: policy ?? this.#policy, idempotent: true, signal: opts.signal });
    } catch (err) {
      if (err instanceof GatewayClientError && err.sessionEnded) this.#ended = true;
      throw err;
    }
  }
}
