import type { ApiErrorCode } from '../http/api-errors';

/** Failures the client detects itself (no API answer to take a code from). */
export type ClientOnlyCode =
  /** The request could not reach the API (connection refused, DNS, reset). */
  | 'NETWORK_ERROR'
  /** No answer within the client's timeout. */
  | 'TIMEOUT'
  /** Cancelled by the caller's AbortSignal (shutdown). */
  | 'ABORTED'
  /** An HTTP error without the API's JSON envelope (a proxy page, an unknown code). */
  | 'HTTP_ERROR'
  /** A 2xx answer that is not the documented JSON. */
  | 'BAD_RESPONSE'
  /** The caller passed something the API would refuse anyway (checked before any request). */
  | 'INVALID_ARGUMENT'
  /** The session was used after it ended (stop, revoked token). */
  | 'SESSION_ENDED'
  /** The agent cannot take the request in its current state (stopping, shut down, hand-over queue full). */
  | 'BUSY';

export type GatewayClientErrorCode = ApiErrorCode | ClientOnlyCode;

/** Every code the API server answers with (runtime/http/api-errors.ts STATUS_OF), checked both ways by the compiler. */
const API_CODES = [
  'INVALID_REQUEST', 'INVALID_ORGANIZATION_ID', 'INVALID_GATEWAY', 'INVENTORY_CONFLICT', 'INVALID_SNAPSHOT', 'UNKNOWN_VERSION',
  'UNAUTHENTICATED', 'TOKEN_REVOKED', 'HANDSHAKE_INVALID', 'FORBIDDEN', 'NOT_FOUND', 'UNKNOWN_GATEWAY',
  'METHOD_NOT_ALLOWED', 'NOT_ALLOCATED', 'ALLOCATION_IN_PROGRESS', 'STALE_SNAPSHOT', 'ORGANIZATION_ACTIVE',
  'PAYLOAD_TOO_LARGE', 'UNSUPPORTED_MEDIA_TYPE', 'INTERNAL', 'INVALID_CONFIG', 'CLOSED', 'GATEWAY_UNREACHABLE',
  'DNS_FAILED', 'NGINX_FAILED', 'TLS_FAILED', 'ALLOCATION_LOST', 'DATABASE_FAILED', 'POOL_EXHAUSTED',
] as const satisfies readonly ApiErrorCode[];
type Missing = Exclude<ApiErrorCode, (typeof API_CODES)[number]>;
// Fails to compile when the API gains a code this list lacks.
const exhaustive: Missing extends never ? true : Missing = true;
void exhaustive;
const API_CODE_SET: ReadonlySet<string> = new Set(API_CODES);

export function isApiErrorCode(value: unknown): value is ApiErrorCode {
  return typeof value === 'string' && API_CODE_SET.has(value);
}

/**
 * Codes that mean "this gateway's allocation is over": the session's token is
 * retired or unknown, or the organization no longer holds the gateway. The
 * agent ends the session and goes back to the pool on any of them.
 */
export const SESSION_ENDED_CODES: ReadonlySet<GatewayClientErrorCode> = new Set<GatewayClientErrorCode>([
  'TOKEN_REVOKED',
  'NOT_ALLOCATED',
  'UNAUTHENTICATED',
  'SESSION_ENDED',
]);

export interface GatewayClientErrorDetails {
  /** HTTP status of the answer; 0 when there was none (network, timeout, abort, argument checks). */
  status?: number;
  retryable?: boolean;
  /** The API endpoint, e.g. `/gateway/data/push`. */
  endpoint?: string;
  /** Attempts made, retries included. */
  attempts?: number;
  /**
   * True when the API certainly did not act on the request (the connection was
   * refused, or it answered with a retryable error): only then is a request
   * that is not idempotent (the single-use /config) sent again.
   */
  safeToRepeat?: boolean;
  /** The server's own code when it is not one this client knows (code is then HTTP_ERROR). */
  apiCode?: string;
  /** Seconds from a Retry-After header. */
  retryAfterMs?: number;
}

/**
 * What every client call throws: a stable `code` (the API's own code when it
 * answered with one), the HTTP `status` (0 without an answer), whether a retry
 * can help, and a message that never contains a token.
 */
export class GatewayClientError extends Error {
  readonly code: GatewayClientErrorCode;
  readonly status: number;
  readonly retryable: boolean;
  readonly endpoint: string | undefined;
  attempts: number;
  readonly safeToRepeat: boolean;
  readonly apiCode: string | undefined;
  readonly retryAfterMs: number | undefined;

  constructor(code: GatewayClientErrorCode, message: string, details: GatewayClientErrorDetails = {}) {
    super(message);
    this.name = 'GatewayClientError';
    this.code = code;
    this.status = details.status ?? 0;
    this.retryable = details.retryable ?? false;
    this.endpoint = details.endpoint;
    this.attempts = details.attempts ?? 1;
    this.safeToRepeat = details.safeToRepeat ?? false;
    this.apiCode = details.apiCode;
    this.retryAfterMs = details.retryAfterMs;
  }

  /** True when the error means the gateway's allocation is over (see SESSION_ENDED_CODES). */
  get sessionEnded(): boolean {
    return SESSION_ENDED_CODES.has(this.code);
  }
}

export function isGatewayClientError(err: unknown, code?: GatewayClientErrorCode): err is GatewayClientError {
  return err instanceof GatewayClientError && (code === undefined || err.code === code);
}
