/** Stable error codes: callers (the API server, the CLI) branch on these, never on messages. */
export type AllocatorErrorCode =
  | 'INVALID_ORGANIZATION_ID'
  | 'INVALID_GATEWAY'
  /** The inventory declares an endpoint (host:httpPort) that a gateway it does not list still holds. */
  | 'INVENTORY_CONFLICT'
  | 'INVALID_CONFIG'
  | 'POOL_EXHAUSTED'
  | 'NOT_ALLOCATED'
  | 'UNKNOWN_GATEWAY'
  | 'ALLOCATION_IN_PROGRESS'
  | 'ALLOCATION_LOST'
  | 'DNS_FAILED'
  | 'NGINX_FAILED'
  | 'DATABASE_FAILED'
  | 'TLS_FAILED'
  | 'INVALID_SNAPSHOT'
  | 'PAYLOAD_TOO_LARGE'
  | 'STALE_SNAPSHOT'
  | 'UNKNOWN_VERSION'
  | 'ORGANIZATION_ACTIVE'
  | 'CLOSED';

/**
 * Codes a caller may retry after a short back-off; the others need different input or an operator.
 * The one set: the CLI's exit code 3 and the HTTP API's `retryable` derive from it.
 */
export const RETRYABLE_CODES: ReadonlySet<AllocatorErrorCode> = new Set<AllocatorErrorCode>([
  'ALLOCATION_IN_PROGRESS',
  'ALLOCATION_LOST',
  'DNS_FAILED',
  'NGINX_FAILED',
  'DATABASE_FAILED',
  'TLS_FAILED',
]);

export class AllocatorError extends Error {
  readonly code: AllocatorErrorCode;
  readonly retryable: boolean;
  readonly details?: Readonly<Record<string, unknown>>;

  constructor(code: AllocatorErrorCode, message: string, details?: Record<string, unknown>, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'AllocatorError';
    this.code = code;
    this.retryable = RETRYABLE_CODES.has(code);
    this.details = details;
  }

  toJSON(): { code: AllocatorErrorCode; message: string; retryable: boolean; details?: Readonly<Record<string, unknown>> } {
    return { code: this.code, message: this.message, retryable: this.retryable, details: this.details };
  }
}

/**
 * True when a failed effect certainly changed nothing (connection refused, an
 * error answer to an atomic PATCH, a config restored after `nginx -t` failed),
 * so a rollback need not undo it. Timeouts are not: the effect may have landed.
 */
export function definitelyNotApplied(err: unknown): boolean {
  return err instanceof AllocatorError && err.details?.notApplied === true;
}

export function isAllocatorError(err: unknown, code?: AllocatorErrorCode): err is AllocatorError {
  return err instanceof AllocatorError && (code === undefined || err.code === code);
}

/** Wraps an unknown low-level failure into a typed error, keeping typed ones as they are. */
export function asAllocatorError(err: unknown, code: AllocatorErrorCode, what: string): AllocatorError {
  if (err instanceof AllocatorError) return err;
  const reason = err instanceof Error ? err.message : String(err);
  return new AllocatorError(code, `${what}: ${reason}`, undefined, err);
}
