/**
 * The pure decisions of the one undo path (allocation-lifecycle.ts: undo):
 * which effects to withdraw, where the gateway goes, and what a failed undo
 * throws, records on the lease and logs. No I/O here, so every case is unit-tested.
 */
import { AllocatorError, asAllocatorError, definitelyNotApplied } from './errors';
import type { Failpoint } from './failpoints';
import { GatewayStates } from './gateway-states';
import type { PoolReturn } from './pool-store';
import type { OrgCertificateState } from './tls/org-certificates';

/** Which effects an allocation may have applied (an undo withdraws only those). */
export interface AppliedEffects {
  dns: boolean;
  route: boolean;
  cert: boolean;
}

export const ALL_EFFECTS: Readonly<AppliedEffects> = { dns: true, route: true, cert: true };

/** Why a claimed gateway is undone. */
export type UndoReason =
  /** The allocation failed after its claim (`cause`); only what may have been applied is withdrawn. */
  | { kind: 'rollback'; cause: AllocatorError; applied: AppliedEffects }
  /** A release (`to`: ready, or registered for a quarantine). */
  | { kind: 'release'; to: PoolReturn }
  /** reconcile() or a waiting caller took over a transitional gateway whose owner is gone. */
  | { kind: 'recovery' };

export type DeferredEvent = 'gateway.rollback_deferred' | 'gateway.release_deferred';

export interface UndoPlan {
  applied: AppliedEffects;
  to: PoolReturn;
  /** Prefix of the message of an untyped failure. */
  what: string;
  /** The failure being undone (rollback): it is the reason recorded on the lease and the error the caller sees. */
  cause?: AllocatorError;
  /** Logged when the undo fails and reconcile() is left to finish it. */
  deferredEvent?: DeferredEvent;
  /** Test hook between withdrawing the effects and returning the gateway. */
  afterEffects?: Failpoint;
}

export function planUndo(reason: UndoReason): UndoPlan {
  switch (reason.kind) {
    case 'rollback':
      return { applied: reason.applied, to: GatewayStates.ready, what: 'rollback failed', cause: reason.cause, deferredEvent: 'gateway.rollback_deferred' };
    case 'release':
      return { applied: { ...ALL_EFFECTS }, to: reason.to, what: 'release failed', deferredEvent: 'gateway.release_deferred', afterEffects: 'release.afterEffects' };
    case 'recovery':
      return { applied: { ...ALL_EFFECTS }, to: GatewayStates.ready, what: 'recovery failed' };
  }
}

/** What a failed undo does: throws `error`, ends the lease with `leaseError`, and logs `deferred` if set. */
export interface UndoFailure {
  error: AllocatorError;
  leaseError: string;
  deferred?: { event: DeferredEvent; code: AllocatorError['code']; message: string };
}

export function undoFailure(plan: UndoPlan, err: unknown): UndoFailure {
  const error = asAllocatorError(err, 'DATABASE_FAILED', plan.what);
  const reason = plan.cause ?? error;
  const failure: UndoFailure = { error, leaseError: `${reason.code}: ${reason.message}` };
  if (plan.deferredEvent) {
    const message = plan.cause ? `undo failed, reconcile() will finish: ${error.message}` : error.message;
    failure.deferred = { event: plan.deferredEvent, code: reason.code, message };
  }
  return failure;
}

/**
 * Which effects of an allocation may have landed, from their settled results:
 * a DNS or route write that certainly changed nothing needs no undo; a
 * certificate file was written only if ensure() answered `ready` — or, when it
 * failed with a provider configured, perhaps.
 */
export function appliedEffects(
  dns: PromiseSettledResult<unknown>,
  route: PromiseSettledResult<unknown>,
  cert: PromiseSettledResult<OrgCertificateState>,
  hasProvider: boolean,
): AppliedEffects {
  return {
    dns: !(dns.status === 'rejected' && definitelyNotApplied(dns.reason)),
    route: !(route.status === 'rejected' && definitelyNotApplied(route.reason)),
    cert: cert.status === 'fulfilled' ? cert.value === 'ready' : hasProvider,
  };
}

/** The first failure among settled results, in their order (DNS before nginx before certificates); undefined if none. */
export function firstRejection(results: ReadonlyArray<PromiseSettledResult<unknown>>): PromiseRejectedResult | undefined {
  return results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
}
