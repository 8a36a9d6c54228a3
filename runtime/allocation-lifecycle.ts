import { db, failpoint, sleep, type AllocatorContext } from './allocator-context';
import type { Allocation, ReleaseOptions } from './allocator-types';
import { toAllocation } from './allocator-views';
import { AllocatorError, asAllocatorError } from './errors';
import { GatewayStates, type ActionCondition } from './gateway-states';
import type { GatewayRow, PoolReturn } from './pool-store';
import { hashToken, newToken } from './tokens';
import { appliedEffects, firstRejection, planUndo, undoFailure, type AppliedEffects, type UndoPlan } from './undo-plan';
import { assertOrganizationId } from './validation';

/** How often a caller waiting for another process's operation on the same organization looks again. */
const WAIT_POLL_MS = 20;

/** Checks release options before any side effect; true when the release is conditional (fenced or silence-checked). */
export function assertReleaseOptions(options: ReleaseOptions): boolean {
  if (options.allocationId !== undefined && !/^\d{1,19}$/.test(options.allocationId)) throw new AllocatorError('INVALID_GATEWAY', 'allocationId must be a decimal integer');
  if (options.silentForMs !== undefined && !(Number.isFinite(options.silentForMs) && options.silentForMs >= 0)) throw new AllocatorError('INVALID_CONFIG', 'silentForMs must be a non-negative number');
  return options.allocationId !== undefined || options.silentForMs !== undefined;
}

function inProgress(orgId: string, row: GatewayRow): AllocatorError {
  return new AllocatorError('ALLOCATION_IN_PROGRESS', `gateway ${row.name} is ${row.state} for organization ${orgId}; retry shortly`, {
    organizationId: orgId,
    gateway: row.name,
    state: row.state,
  });
}

/**
 * The life of an allocation: claim → effects (DNS, route, certificate) →
 * allocated, and back: release → withdraw → ready. Every failure after a
 * claim, a release and every take-over of an abandoned operation end in the
 * one `undo` below (its decisions: undo-plan.ts).
 */
export class AllocationLifecycle {
  private readonly inflight = new Map<string, Promise<Allocation>>();
  private baseConfig: Promise<void> | undefined;

  constructor(private readonly c: AllocatorContext) {}

  /** Idempotent per organization: a concurrent call in this process shares the running one (without its token). */
  allocate(organizationId: string): Promise<Allocation> {
    try {
      this.c.open.assertOpen();
      assertOrganizationId(organizationId);
    } catch (err) {
      return Promise.reject(err);
    }
    const running = this.inflight.get(organizationId);
    if (running) return running.then((a) => ({ ...a, token: null, created: false }));
    const p = this.allocateOnce(organizationId).finally(() => this.inflight.delete(organizationId));
    this.inflight.set(organizationId, p);
    return p;
  }

  /** Waits for the allocations in flight (close). */
  async settle(): Promise<void> {
    await Promise.allSettled([...this.inflight.values()]);
  }

  private async allocateOnce(orgId: string): Promise<Allocation> {
    await this.ensureBaseConfig();
    const deadline = Date.now() + this.c.waitTimeoutMs;
    for (;;) {
      const existing = await db(() => this.c.store.findByOrganization(orgId), 'pool lookup failed');
      if (existing) {
        if (existing.state === GatewayStates.allocated) return toAllocation(existing, this.c.domain, null, false, await this.c.certificates.repair(existing));
        if (existing.leaseExpired) {
          await this.recover(existing, false);
          continue;
        }
        if (Date.now() > deadline) throw inProgress(orgId, existing);
        await sleep(WAIT_POLL_MS);
        continue;
      }
      const token = newToken();
      const outcome = await db(() => this.c.store.claim(orgId, hashToken(token), this.c.leaseMs), 'claim failed');
      if (outcome.kind === 'org-taken') continue; // another process claimed for this org: wait for it above
      if (outcome.kind === 'exhausted') {
        // SKIP LOCKED also skips rows that other claims hold only for an instant.
        if ((await db(() => this.c.store.countReady(), 'pool lookup failed')) > 0 && Date.now() < deadline) continue;
        throw new AllocatorError('POOL_EXHAUSTED', `no ready gateway in pool ${this.c.envName} for organization ${orgId}`, { organizationId: orgId });
      }
      return this.completeAllocation(outcome.row, token);
    }
  }

  private async completeAllocation(row: GatewayRow, token: string): Promise<Allocation> {
    const started = Date.now();
    const orgId = row.organizationId as string;
    const allocationId = row.allocationId as string;
    this.c.log({ event: 'gateway.claimed', env: this.c.envName, gateway: row.name, organizationId: orgId, from: GatewayStates.ready, to: GatewayStates.allocating });
    await failpoint(this.c, 'allocate.afterClaim');
    const claim: ActionCondition = { kind: 'claim', allocationId };
    // The certificate (dev CA: minted in ≈11 ms; ACME: started in the background) goes in parallel with DNS and route.
    const settled = await Promise.allSettled([
      // Fenced on the claim: if reconcile() took the gateway over meanwhile, these write nothing.
      this.c.dns.publish(orgId, claim),
      this.c.routes.set({ orgId, onlyIf: claim, target: { gatewayName: row.name, host: row.host, port: row.httpPort } }),
      this.c.certificates.ensure(orgId),
    ]);
    const [dnsResult, routeResult, certResult] = settled;
    const applied = appliedEffects(dnsResult, routeResult, certResult, !!this.c.certs);
    const failed = firstRejection(settled);
    if (failed) {
      const typed = asAllocatorError(failed.reason, 'DATABASE_FAILED', 'allocation failed');
      await this.rollback(row, typed, applied);
      throw typed;
    }
    await failpoint(this.c, 'allocate.afterEffects');
    const done = await db(() => this.c.store.markAllocated(row.name, allocationId), 'marking allocated failed').catch(async (err: AllocatorError) => {
      await this.rollback(row, err, applied);
      throw err;
    });
    if (!done) {
      // reconcile() took over after our lease ran out; it owns the clean-up now.
      throw new AllocatorError('ALLOCATION_LOST', `allocation of ${row.name} to ${orgId} outlived its lease and was rolled back`, { organizationId: orgId });
    }
    const certificate = certResult.status === 'fulfilled' ? certResult.value : 'none';
    this.c.log({ event: 'gateway.allocated', env: this.c.envName, gateway: row.name, organizationId: orgId, from: GatewayStates.allocating, to: GatewayStates.allocated, ms: Date.now() - started, certificate });
    return toAllocation(row, this.c.domain, token, true, certificate);
  }

  /** A failed allocation: undo what may have been applied; the gateway returns to the pool, or stays for reconcile() if the undo fails too. */
  private async rollback(row: GatewayRow, cause: AllocatorError, applied: AppliedEffects): Promise<void> {
    const done = await this.undo(row, planUndo({ kind: 'rollback', cause, applied })).then(
      () => true,
      () => false,
    );
    if (done) this.c.log({ event: 'gateway.rolled_back', env: this.c.envName, gateway: row.name, organizationId: row.organizationId as string, from: GatewayStates.allocating, to: GatewayStates.ready, code: cause.code, message: cause.message });
  }

  /** See GatewayAllocator.release. */
  async release(organizationId: string, options: ReleaseOptions = {}): Promise<{ name: string; organizationId: string }> {
    this.c.open.assertOpen();
    assertOrganizationId(organizationId);
    const conditional = assertReleaseOptions(options);
    await this.ensureBaseConfig();
    const deadline = Date.now() + this.c.waitTimeoutMs;
    for (;;) {
      const row = await db(() => this.c.store.findByOrganization(organizationId), 'pool lookup failed');
      if (!row) throw new AllocatorError('NOT_ALLOCATED', `organization ${organizationId} holds no gateway in pool ${this.c.envName}`, { organizationId });
      if (options.allocationId !== undefined && row.allocationId !== options.allocationId) {
        throw new AllocatorError('NOT_ALLOCATED', `allocation ${options.allocationId} of organization ${organizationId} has ended`, { organizationId, conditionFailed: true });
      }
      if (row.state === GatewayStates.allocated) {
        const cond = { allocationId: options.allocationId, silentForMs: options.silentForMs };
        const begun = await db(() => this.c.store.beginRelease(organizationId, this.c.leaseMs, cond), 'release failed');
        if (begun) return this.completeRelease(begun, options.quarantine ? GatewayStates.registered : GatewayStates.ready);
        if (conditional) throw new AllocatorError('NOT_ALLOCATED', `organization ${organizationId}: release condition no longer holds`, { organizationId, conditionFailed: true });
        continue;
      }
      if (row.leaseExpired) {
        await this.recover(row, false);
        return { name: row.name, organizationId };
      }
      if (Date.now() > deadline) throw inProgress(organizationId, row);
      await sleep(WAIT_POLL_MS);
    }
  }

  private async completeRelease(row: GatewayRow, to: PoolReturn): Promise<{ name: string; organizationId: string }> {
    const started = Date.now();
    const orgId = row.organizationId as string;
    this.c.log({ event: 'gateway.releasing', env: this.c.envName, gateway: row.name, organizationId: orgId, from: GatewayStates.allocated, to: GatewayStates.releasing });
    await failpoint(this.c, 'release.afterBegin');
    await this.undo(row, planUndo({ kind: 'release', to }));
    this.c.log({ event: 'gateway.released', env: this.c.envName, gateway: row.name, organizationId: orgId, from: GatewayStates.releasing, to, ms: Date.now() - started });
    return { name: row.name, organizationId: orgId };
  }

  /**
   * Takes over a transitional row whose owner is gone and drives it to ready:
   * for an interrupted allocation that is a rollback, for an interrupted
   * release it is the rest of the release; both withdraw DNS and route.
   * False when another process took it first.
   */
  async recover(row: GatewayRow, force: boolean): Promise<boolean> {
    const taken = await db(() => this.c.store.takeOver(row.name, row.allocationId as string, this.c.leaseMs, force), 'take-over failed');
    if (!taken) return false;
    await this.undo(taken, planUndo({ kind: 'recovery' }));
    this.c.log({ event: 'gateway.recovered', env: this.c.envName, gateway: taken.name, organizationId: taken.organizationId as string, from: taken.state, to: GatewayStates.ready });
    return true;
  }

  /**
   * THE undo path, shared by a failed allocation (rollback), a release and a
   * recovery: withdraws the effects that may have been applied, then returns
   * the gateway to the pool (`plan.to`). If either fails, the lease is ended
   * with the reason so reconcile() takes over at once, and the failure is
   * thrown. A failpoint's throw (SimulatedCrash) skips it all, like a dead process.
   */
  private async undo(row: GatewayRow, plan: UndoPlan): Promise<void> {
    const orgId = row.organizationId as string;
    const allocationId = row.allocationId as string;
    const abandon = async (err: unknown): Promise<never> => {
      const f = undoFailure(plan, err);
      // If even this write fails, the lease runs out and reconcile() takes over then.
      await this.c.store.abandon(row.name, allocationId, f.leaseError).catch(() => undefined);
      if (f.deferred) this.c.log({ event: f.deferred.event, env: this.c.envName, gateway: row.name, organizationId: orgId, code: f.deferred.code, message: f.deferred.message });
      throw f.error;
    };
    const withdrawn = await Promise.allSettled([
      plan.applied.dns ? this.c.dns.withdraw(orgId) : Promise.resolve(),
      plan.applied.route ? this.c.routes.set({ orgId }) : Promise.resolve(),
      // Only the file (a private key): the certificate stays in PostgreSQL for the organization's next allocation.
      plan.applied.cert ? this.c.routes.setCertificate({ orgId }) : Promise.resolve(),
    ]);
    const failed = firstRejection(withdrawn);
    if (failed) await abandon(failed.reason);
    if (plan.afterEffects) await failpoint(this.c, plan.afterEffects);
    await this.c.store.returnToPool(row.name, allocationId, plan.to).catch(abandon);
  }

  /** The stage-1 base configuration, written once per allocator (again after a failure). */
  ensureBaseConfig(): Promise<void> {
    if (!this.baseConfig) {
      this.baseConfig = this.c.routes.ensureBaseConfig().then(
        () => undefined,
        (err: unknown) => {
          this.baseConfig = undefined;
          throw asAllocatorError(err, 'NGINX_FAILED', 'stage-1 base configuration failed');
        },
      );
    }
    return this.baseConfig;
  }
}
