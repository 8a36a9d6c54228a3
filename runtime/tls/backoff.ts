/**
 * Back-off for ACME orders, per name set. Pure (no I/O), so it is unit-tested
 * and shared by the base-certificate renewal and the per-organization manager.
 *
 * Why: Let's Encrypt's limits are easy to hit by a retry loop and then lock
 * an account or a whole registered domain out for hours or a week:
 *   - 50 certificates per registered domain per week (every org certificate
 *     under <domain> counts against the same 50),
 *   - 300 new orders per account per 3 hours,
 *   - 5 failed validations per account, per hostname, per hour,
 *   - 5 duplicate certificates (same exact name set) per week.
 * So a failed or rate-limited order must not be retried at once: the name set
 * gets a `retryAfter`, growing exponentially with consecutive failures up to a
 * cap; when the server says when to come back (Retry-After header, or the
 * "retry after <time>" Let's Encrypt puts into rateLimited problem details,
 * which is how it reaches us through lego) that time wins if it is later.
 */

export interface BackoffPolicy {
  /** First delay after a failure. Default 5 minutes. */
  initialMs: number;
  /** Multiplier per consecutive failure. Default 2. */
  factor: number;
  /** Cap. Default 24 hours (a day-long stall is visible; a week-long one is a locked-out domain). */
  maxMs: number;
  /** Delay after a rateLimited answer without any time in it. Default 1 hour. */
  rateLimitedMs: number;
}

export const DEFAULT_BACKOFF: BackoffPolicy = {
  initialMs: 5 * 60_000,
  factor: 2,
  maxMs: 24 * 3_600_000,
  rateLimitedMs: 3_600_000,
};

export interface BackoffState {
  /** Consecutive failures of this name set. */
  failures: number;
  /** No new order for this name set before this time. */
  retryAfter: Date;
  /** Last error, for reports. */
  lastError: string;
  rateLimited: boolean;
}

/** Canonical key of a name set: order does not matter, case does not matter. */
export function nameSetKey(names: readonly string[]): string {
  return [...new Set(names.map((n) => n.toLowerCase()))].sort().join(',');
}

/**
 * The time a server asked us to wait until, from a Retry-After header value
 * (seconds or HTTP date) or from an ACME problem detail such as Let's
 * Encrypt's "…: retry after 2024-06-13T17:47:44Z" / "retry after 2025-01-28
 * 22:10:54 UTC". undefined when there is none.
 */
export function parseRetryAfter(text: string | undefined, now: Date = new Date()): Date | undefined {
  if (text === undefined) return undefined;
  const t = text.trim();
  if (/^[0-9]+$/.test(t)) return new Date(now.getTime() + Number(t) * 1000);
  const header = Date.parse(t);
  if (/^[A-Za-z]{3}, /.test(t) && !Number.isNaN(header)) return new Date(header);
  const m = /retry after ([0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?)\s*(Z|UTC|[+-][0-9]{2}:?[0-9]{2})?/i.exec(t);
  if (m) {
    const zone = m[2] === undefined || m[2].toUpperCase() === 'UTC' ? 'Z' : m[2];
    const parsed = Date.parse(`${m[1].replace(' ', 'T')}${zone}`);
    if (!Number.isNaN(parsed)) return new Date(parsed);
  }
  return undefined;
}

/** Delay after the n-th consecutive failure (n ≥ 1). */
export function backoffDelay(failures: number, policy: BackoffPolicy = DEFAULT_BACKOFF): number {
  const exp = policy.initialMs * Math.pow(policy.factor, Math.max(0, failures - 1));
  return Math.min(policy.maxMs, exp);
}

export interface FailureInfo {
  message: string;
  rateLimited?: boolean;
  /** What the server asked for, if anything. */
  retryAfter?: Date;
}

/** In-memory back-off table (one per issuer/process; the org manager may persist states). */
export class IssuanceBackoff {
  private readonly states = new Map<string, BackoffState>();

  constructor(
    private readonly policy: BackoffPolicy = DEFAULT_BACKOFF,
    private readonly now: () => Date = () => new Date(),
  ) {}

  /** The active back-off of a name set, or undefined when an order may be placed now. */
  blocked(names: readonly string[]): BackoffState | undefined {
    const s = this.states.get(nameSetKey(names));
    return s !== undefined && s.retryAfter.getTime() > this.now().getTime() ? s : undefined;
  }

  state(names: readonly string[]): BackoffState | undefined {
    return this.states.get(nameSetKey(names));
  }

  recordFailure(names: readonly string[], info: FailureInfo): BackoffState {
    const key = nameSetKey(names);
    const failures = (this.states.get(key)?.failures ?? 0) + 1;
    const now = this.now().getTime();
    let until = now + backoffDelay(failures, this.policy);
    if (info.rateLimited === true) until = Math.max(until, now + this.policy.rateLimitedMs);
    // The server knows its windows better than our guess, but never retry sooner than our own back-off.
    if (info.retryAfter !== undefined) until = Math.max(until, info.retryAfter.getTime());
    const state: BackoffState = { failures, retryAfter: new Date(until), lastError: info.message, rateLimited: info.rateLimited === true };
    this.states.set(key, state);
    return state;
  }

  recordSuccess(names: readonly string[]): void {
    this.states.delete(nameSetKey(names));
  }

  /** Restores a persisted state (e.g. from PostgreSQL) so back-off survives restarts. */
  restore(names: readonly string[], state: BackoffState): void {
    this.states.set(nameSetKey(names), state);
  }
}
