/** How a retryable failure is retried: exponential back-off with jitter, capped. */
export interface RetryPolicy {
  /** Attempts in all, the first included; Infinity retries until the API answers. */
  maxAttempts: number;
  /** Delay before the first retry (before jitter). */
  baseDelayMs: number;
  /** Ceiling of any delay, Retry-After included. */
  maxDelayMs: number;
  /** Growth per retry. */
  factor: number;
  /** Fraction of the delay taken away at random (0: none, 0.5: delay in (d/2, d]). */
  jitter: number;
}

export const DEFAULT_RETRY: Readonly<RetryPolicy> = Object.freeze({
  maxAttempts: 5,
  baseDelayMs: 250,
  maxDelayMs: 10_000,
  factor: 2,
  jitter: 0.5,
});

/** Delay before retry number `retry` (0 for the first retry); `random` returns [0, 1). */
export function backoffDelay(retry: number, policy: RetryPolicy, random: () => number): number {
  const exp = Math.min(policy.maxDelayMs, policy.baseDelayMs * Math.pow(policy.factor, retry));
  const r = Math.min(Math.max(random(), 0), 1);
  return Math.max(0, Math.round(exp * (1 - policy.jitter * r)));
}

export function resolvePolicy(base: Readonly<RetryPolicy>, override: Partial<RetryPolicy> | undefined): RetryPolicy {
  const p: RetryPolicy = { ...base, ...(override ?? {}) };
  const bad = (what: string): never => {
    throw new RangeError(`retry policy: ${what}`);
  };
  if (!(p.maxAttempts >= 1)) bad('maxAttempts must be >= 1');
  if (!(Number.isFinite(p.baseDelayMs) && p.baseDelayMs >= 0)) bad('baseDelayMs must be >= 0');
  if (!(Number.isFinite(p.maxDelayMs) && p.maxDelayMs >= p.baseDelayMs)) bad('maxDelayMs must be >= baseDelayMs');
  if (!(Number.isFinite(p.factor) && p.factor >= 1)) bad('factor must be >= 1');
  if (!(p.jitter >= 0 && p.jitter <= 1)) bad('jitter must be within [0, 1]');
  return p;
}
