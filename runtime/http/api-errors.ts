import { AllocatorError, AllocatorErrorCode, RETRYABLE_CODES } from '../errors';

/** Codes of the HTTP API besides the allocator's own. */
export type ApiOnlyCode =
  | 'INVALID_REQUEST'
  | 'UNAUTHENTICATED'
  | 'TOKEN_REVOKED'
  | 'HANDSHAKE_INVALID'
  | 'FORBIDDEN'
  | 'NOT_FOUND'
  | 'METHOD_NOT_ALLOWED'
  | 'UNSUPPORTED_MEDIA_TYPE'
  | 'GATEWAY_UNREACHABLE'
  | 'INTERNAL';

export type ApiErrorCode = ApiOnlyCode | AllocatorErrorCode;

/** HTTP status of every code; one table, so the same failure always looks the same. */
export const STATUS_OF: Readonly<Record<ApiErrorCode, number>> = {
  INVALID_REQUEST: 400,
  INVALID_ORGANIZATION_ID: 400,
  INVALID_GATEWAY: 400,
  INVENTORY_CONFLICT: 409,
  INVALID_SNAPSHOT: 400,
  UNKNOWN_VERSION: 404,
  UNAUTHENTICATED: 401,
  TOKEN_REVOKED: 401,
  HANDSHAKE_INVALID: 401,
  FORBIDDEN: 403,
  NOT_FOUND: 404,
  UNKNOWN_GATEWAY: 404,
  METHOD_NOT_ALLOWED: 405,
  NOT_ALLOCATED: 409,
  ALLOCATION_IN_PROGRESS: 409,
  STALE_SNAPSHOT: 409,
  ORGANIZATION_ACTIVE: 409,
  PAYLOAD_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  INTERNAL: 500,
  INVALID_CONFIG: 500,
  CLOSED: 503,
  GATEWAY_UNREACHABLE: 502,
  DNS_FAILED: 502,
  NGINX_FAILED: 502,
  TLS_FAILED: 502,
  ALLOCATION_LOST: 503,
  DATABASE_FAILED: 503,
  POOL_EXHAUSTED: 503,
};

/**
 * The allocator's retryable codes (runtime/errors.ts), plus what an HTTP client (a gateway, a browser's
 * app) should retry after a back-off although a library caller should not loop on it: an unreachable
 * gateway (the retry allocates another) and a full pool (a release frees one).
 */
const RETRYABLE: ReadonlySet<ApiErrorCode> = new Set<ApiErrorCode>([...RETRYABLE_CODES, 'GATEWAY_UNREACHABLE', 'POOL_EXHAUSTED']);
/** An error the API answers with as it is: a code, a message safe to show, no stack, no secrets. */
export class GatewayApiError extends Error {
  readonly code: ApiErrorCode;
  readonly status: number;
  readonly retryable: boolean;

  constructor(code: ApiErrorCode, message: string) {
    super(message);
    this.name = 'GatewayApiError';
    this.code = code;
    this.status = STATUS_OF[code];
    this.retryable = RETRYABLE.has(code);
  }
}

export interface ErrorBody {
  success: false;
  code: ApiErrorCode;
  message: string;
  retryable: boolean;
  [key: string]: unknown;
}

/**
 * Turns anything thrown into the answer a client sees. Allocator errors keep
 * their code and message (they name organizations and gateways, never secrets);
 * anything else is INTERNAL with a generic message, the detail goes to the log only.
 */
export function toErrorResponse(err: unknown): { status: number; body: ErrorBody; internal: boolean } {
  if (err instanceof GatewayApiError) {
    return { status: err.status, body: { success: false, code: err.code, message: err.message, retryable: err.retryable }, internal: false };
  }
  if (err instanceof AllocatorError) {
    // Low-level messages (pg, HTTP clients) can carry connection strings or hostnames of internals: keep them out of answers.
    const message = ['DATABASE_FAILED', 'DNS_FAILED', 'NGINX_FAILED', 'INVALID_CONFIG'].includes(err.code) ? `${err.code.toLowerCase().replace(/_/g, ' ')}; retry later` : err.message;
    return { status: STATUS_OF[err.code], body: { success: false, code: err.code, message, retryable: RETRYABLE.has(err.code) }, internal: STATUS_OF[err.code] >= 500 };
  }
  return { status: 500, body: { success: false, code: 'INTERNAL', message: 'internal error', retryable: false }, internal: true };
}
