/**
 * The one sequence every derived effect (DNS records, stage-1 route files,
 * certificate bundles) is written with:
 *
 *   coalesce a burst into one batch (Batcher) → keep the latest change per
 *   organization → take the target's cross-process advisory lock → check the
 *   fences (`onlyIf`: does this gateway still hold this organization?) on the
 *   lock's own connection → write what still holds → release → confirm.
 *
 * A target supplies only its sink: the lock key, how to write a batch, how to
 * list what it owns, how a failure of the locked section is reported, and
 * optionally work before the lock (`prepare`) and after it (`confirm`).
 */
import type { Pool } from 'pg';
import { Batcher } from './batcher';
import { AllocatorError } from './errors';
import type { ActionCondition } from './gateway-states';
import { inTransaction } from './pg-transaction';

/** The fence of a change (defined with the state machine: runtime/gateway-states.ts). */
export type { ActionCondition } from './gateway-states';

/** Returns the subset of organization ids whose condition still holds, using the lock's own connection. */
export type Guard = (query: (sql: string, params: unknown[]) => Promise<Array<Record<string, unknown>>>, orgs: Array<{ orgId: string; onlyIf: ActionCondition }>) => Promise<Set<string>>;

/** A change for one organization; with `onlyIf`, written only if the condition still holds under the lock. */
export interface FencedChange {
  orgId: string;
  onlyIf?: ActionCondition;
}

/** What a target holds for one organization, as its `listOwned` reports it (DNS: RRsets; files: their text). */
export interface OwnedEntry<T> {
  orgId: string;
  content: T;
}

/**
 * The last change of each organization, in the order organizations first
 * appear: one organization's changes come from its single owner, in order,
 * so the last one is what it wants now.
 */
export function latestPerOrg<C extends FencedChange>(changes: readonly C[]): C[] {
  const latest = new Map<string, C>();
  for (const c of changes) latest.set(c.orgId, c);
  return [...latest.values()];
}

/** The fenced changes of a batch, as the guard takes them. */
export function fencesOf(changes: readonly FencedChange[]): Array<{ orgId: string; onlyIf: ActionCondition }> {
  return changes.flatMap((c) => (c.onlyIf ? [{ orgId: c.orgId, onlyIf: c.onlyIf }] : []));
}

/** The changes to write: unconditional ones, and fenced ones whose organization is in `holding`. */
export function keepHolding<C extends FencedChange>(changes: readonly C[], holding: ReadonlySet<string>): C[] {
  return changes.filter((c) => !c.onlyIf || holding.has(c.orgId));
}

/**
 * Batches, fences and writes changes of type `C` to one target. `P` is what
 * `prepare` computes before the lock is taken (nothing by default) and hands
 * to `write`.
 */
export abstract class FencedBatchWriter<C extends FencedChange, O, P = undefined> {
  private readonly batcher: Batcher<C>;
  /** Total ms of successful batches, lock wait and confirmation included (bench). */
  appliedMs = 0;

  constructor(
    protected readonly pool: Pool,
    private readonly guard: Guard,
  ) {
    // Through `this.apply`, so a wrapper of a subclass's apply (bench instrumentation) sees every batch.
    this.batcher = new Batcher((changes) => this.apply(changes));
  }

  /** Advisory lock key that serializes every writer of this target, in every process. */
  protected abstract readonly lockKey: string;

  /** Writes the batch (one change per organization, fences already checked) while the lock is held. */
  protected abstract write(changes: C[], prepared: P): Promise<void>;

  /** The failure of the locked section when it is not already typed; `writing`: write() had started. */
  protected abstract failure(err: unknown, writing: boolean): AllocatorError;

  /** What this target holds for this environment, per organization. */
  abstract listOwned(): Promise<Array<OwnedEntry<O>>>;

  /** Work that needs no lock, done before taking it so the lock is held only to write. */
  protected prepare(_changes: C[]): Promise<P> {
    return Promise.resolve(undefined as P);
  }

  /** After the lock is released, with what was written: e.g. wait until the target serves it. */
  protected confirm(_written: C[]): Promise<void> {
    return Promise.resolve();
  }

  /** Queues a change; resolves once the batch holding it is written (and confirmed). */
  submit(change: C): Promise<void> {
    return this.batcher.submit(change);
  }

  /** Resolves once nothing is queued or being written. */
  idle(): Promise<void> {
    return this.batcher.idle();
  }

  /** Writes changes now, as one batch (reconcile; the batcher's flush). */
  async apply(changes: C[]): Promise<void> {
    if (changes.length === 0) return;
    const started = Date.now();
    const latest = latestPerOrg(changes);
    const prepared = await this.prepare(latest);
    let writing = false;
    let written: C[];
    try {
      written = await inTransaction(
        this.pool,
        async (lock) => {
          const fences = fencesOf(latest);
          const holding = fences.length > 0 ? await this.guard(async (sql, params) => (await lock.query(sql, params)).rows, fences) : new Set<string>();
          const todo = keepHolding(latest, holding);
          writing = true;
          await this.write(todo, prepared);
          return todo;
        },
        { lockKey: this.lockKey },
      );
    } catch (err) {
      if (err instanceof AllocatorError) throw err;
      throw this.failure(err, writing);
    }
    await this.confirm(written);
    this.appliedMs += Date.now() - started;
  }
}
