/** The error every AcmeIssuer failure is (see acme-issuer.ts). No @pulumi imports. */
import type { BackoffState } from './backoff';

export type AcmeErrorKind = 'backoff' | 'rateLimited' | 'failed' | 'aborted';

export class AcmeIssueError extends Error {
  constructor(
    message: string,
    readonly kind: AcmeErrorKind,
    readonly names: string[],
    /** When a new order for these names may be placed. */
    readonly retryAfter?: Date,
    readonly backoff?: BackoffState,
  ) {
    super(message);
    this.name = 'AcmeIssueError';
  }
}

export function isAcmeIssueError(err: unknown): err is AcmeIssueError {
  return err instanceof AcmeIssueError;
}
