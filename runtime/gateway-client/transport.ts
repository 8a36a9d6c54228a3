import { backoffDelay, RetryPolicy } from './backoff';
import { GatewayClientError, isApiErrorCode } from './errors';
import { Scheduler, sleep } from './scheduler';

/** The subset of the global fetch the client uses (inject a fake in tests). */
export type FetchLike = (url: string, init: { method: string; headers: Record<string, string>; body: string; signal: AbortSignal; redirect: 'manual' }) => Promise<{
  status: number;
  headers: { get(name: string): string | null };
  text(): Promise<string>;
}>;

/** Structured client events; never carry a token. */
export interface GatewayClientEvent {
  event: 'gateway_client.retry' | 'gateway_client.failed';
  endpoint: string;
  attempt: number;
  code: string;
  status: number;
  delay_ms?: number;
}
export type GatewayClientLogger = (e: GatewayClientEvent) => void;

export interface TransportOptions {
  baseUrl: string;
  fetch: FetchLike;
  scheduler: Scheduler;
  random: () => number;
  timeoutMs: number;
  logger: GatewayClientLogger;
}

export interface CallOptions {
  policy: RetryPolicy;
  /** Repeating it cannot do harm (everything but /config). */
  idempotent: boolean;
  signal?: AbortSignal;
}

/** Connection failures in which the request certainly never reached the server. */
const NOT_SENT = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_CONNECT_TIMEOUT']);

function causeCode(err: unknown): string | undefined {
  let e: unknown = err;
  for (let depth = 0; depth < 4 && e && typeof e === 'object'; depth += 1) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string') return code;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

function retryAfter(value: string | null): number | undefined {
  if (!value) return undefined;
  if (/^\d{1,6}$/.test(value.trim())) return Number(value.trim()) * 1000;
  return undefined;
}

/** One POST to `/gateway<path>`, with timeout and retries; resolves with the answer's JSON body. */
export async function postJson(t: TransportOptions, path: string, body: unknown, token: string | undefined, opts: CallOptions): Promise<Record<string, unknown>> {
  const endpoint = `/gateway${path}`;
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await once(t, endpoint, body, token, opts.signal);
    } catch (raw) {
      const err = raw as GatewayClientError;
      err.attempts = attempt;
      const repeatable = err.retryable && (opts.idempotent || err.safeToRepeat);
      if (!repeatable || attempt >= opts.policy.maxAttempts || opts.signal?.aborted) {
        t.logger({ event: 'gateway_client.failed', endpoint, attempt, code: err.code, status: err.status });
        throw err;
      }
      const delay = Math.min(opts.policy.maxDelayMs, err.retryAfterMs ?? backoffDelay(attempt - 1, opts.policy, t.random));
      t.logger({ event: 'gateway_client.retry', endpoint, attempt, code: err.code, status: err.status, delay_ms: delay });
      try {
        await sleep(t.scheduler, delay, opts.signal);
      } catch {
        throw new GatewayClientError('ABORTED', `${endpoint}: cancelled while waiting to retry`, { endpoint, attempts: attempt });
      }
    }
  }
}

async function once(t: TransportOptions, endpoint: string, body: unknown, token: string | undefined, signal: AbortSignal | undefined): Promise<Record<string, unknown>> {
  if (signal?.aborted) throw new GatewayClientError('ABORTED', `${endpoint}: cancelled`, { endpoint });
  const ac = new AbortController();
  let timedOut = false;
  const timer = t.scheduler.setTimeout(() => {
    timedOut = true;
    ac.abort();
  }, t.timeoutMs);
  const onAbort = (): void => ac.abort();
  signal?.addEventListener('abort', onAbort, { once: true });
  const headers: Record<string, string> = { 'content-type': 'application/json', accept: 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  let status: number;
  let text: string;
  let retryAfterMs: number | undefined;
  try {
    const res = await t.fetch(`${t.baseUrl}${endpoint}`, { method: 'POST', headers, body: JSON.stringify(body ?? {}), signal: ac.signal, redirect: 'manual' });
    status = res.status;
    retryAfterMs = retryAfter(res.headers.get('retry-after'));
    text = await res.text();
  } catch (err) {
    if (timedOut) throw new GatewayClientError('TIMEOUT', `${endpoint}: no answer within ${t.timeoutMs} ms`, { endpoint, retryable: true });
    if (signal?.aborted) throw new GatewayClientError('ABORTED', `${endpoint}: cancelled`, { endpoint });
    const code = causeCode(err);
    // The message names the cause only (never the request, which carries the token).
    throw new GatewayClientError('NETWORK_ERROR', `${endpoint}: cannot reach the API (${code ?? 'network error'})`, {
      endpoint,
      retryable: true,
      safeToRepeat: code !== undefined && NOT_SENT.has(code),
    });
  } finally {
    t.scheduler.clearTimeout(timer);
    signal?.removeEventListener('abort', onAbort);
  }
  let parsed: unknown;
  try {
    parsed = text.length > 0 ? JSON.parse(text) : undefined;
  } catch {
    parsed = undefined;
  }
  const obj = parsed && typeof parsed === 'object' && !Array.isArray(parsed) ? (parsed as Record<string, unknown>) : undefined;
  if (status >= 200 && status < 300) {
    if (!obj || obj.success !== true) throw new GatewayClientError('BAD_RESPONSE', `${endpoint}: answer ${status} is not the API's JSON`, { endpoint, status });
    return obj;
  }
  const transient = status === 429 || status >= 500;
  if (obj && typeof obj.code === 'string' && typeof obj.retryable === 'boolean') {
    // The API's envelope: its code and its word on retrying (a retryable API error changed nothing).
    const message = typeof obj.message === 'string' ? obj.message.slice(0, 500) : obj.code;
    if (isApiErrorCode(obj.code)) {
      throw new GatewayClientError(obj.code, `${endpoint}: ${message}`, { endpoint, status, retryable: obj.retryable, safeToRepeat: obj.retryable, retryAfterMs });
    }
    throw new GatewayClientError('HTTP_ERROR', `${endpoint}: ${status} ${obj.code.slice(0, 60)}: ${message}`, { endpoint, status, retryable: obj.retryable, safeToRepeat: obj.retryable, apiCode: obj.code.slice(0, 60), retryAfterMs });
  }
  // No envelope: a proxy (nginx 502/503/504) or something that is not the API.
  throw new GatewayClientError('HTTP_ERROR', `${endpoint}: HTTP ${status} without the API's JSON error`, { endpoint, status, retryable: transient, safeToRepeat: status === 503 || status === 429, retryAfterMs });
}
