import { strict as assert } from 'assert';
import type { Pool } from 'pg';
import { AllocatorError, definitelyNotApplied, isAllocatorError } from '../../runtime/errors';
import { FencedBatchWriter, fencesOf, keepHolding, latestPerOrg, type FencedChange, type Guard, type OwnedEntry } from '../../runtime/fenced-batch-writer';

type Change = FencedChange & { value: string };

/** A pg Pool stand-in whose one client records every statement; `failOn` makes a statement matching it throw. */
function fakePool(log: string[], failOn?: RegExp): Pool {
  const client = {
    on: () => undefined,
    removeListener: () => undefined,
    release: () => undefined,
    query: async (sql: string, params: unknown[] = []) => {
      log.push(/advisory/.test(sql) ? `lock ${String(params[0])}` : sql);
      if (failOn?.test(sql)) throw new Error(`failed: ${sql}`);
      return { rows: [] };
    },
  };
  return { connect: async () => client } as unknown as Pool;
}

/** A sink writing into `log`; the guard says `holding` hold. */
class LoggingWriter extends FencedBatchWriter<Change, string> {
  protected readonly lockKey = 'test-target';
  writeError: Error | undefined;

  constructor(
    pool: Pool,
    private readonly log: string[],
    holding: string[],
  ) {
    const guard: Guard = async (query, orgs) => {
      await query('SELECT guard', []);
      log.push(`guard ${orgs.map((o) => `${o.orgId}:${o.onlyIf.kind}`).join(',')}`);
      return new Set(holding);
    };
    super(pool, guard);
  }

  async listOwned(): Promise<Array<OwnedEntry<string>>> {
    return [];
  }

  protected async write(changes: Change[]): Promise<void> {
    this.log.push(`write ${changes.map((c) => `${c.orgId}=${c.value}`).join(',')}`);
    if (this.writeError) throw this.writeError;
  }

  protected failure(err: unknown, writing: boolean): AllocatorError {
    return new AllocatorError('DATABASE_FAILED', (err as Error).message, writing ? {} : { notApplied: true });
  }

  protected async confirm(written: Change[]): Promise<void> {
    this.log.push(`confirm ${written.map((c) => c.orgId).join(',')}`);
  }
}

describe('fenced batch writer (runtime/fenced-batch-writer.ts)', () => {
  const allocated = { kind: 'allocated', allocationId: '7' } as const;
  const orphan = { kind: 'orphan' } as const;

  it('keeps the last change of each organization, in the order organizations first appear', () => {
    const changes: Change[] = [
      { orgId: 'a', value: '1' },
      { orgId: 'b', value: '1' },
      { orgId: 'a', value: '2', onlyIf: allocated },
      { orgId: 'c', value: '1' },
      { orgId: 'b', value: '2' },
    ];
    assert.deepEqual(latestPerOrg(changes), [
      { orgId: 'a', value: '2', onlyIf: allocated },
      { orgId: 'b', value: '2' },
      { orgId: 'c', value: '1' },
    ]);
    assert.deepEqual(latestPerOrg([]), []);
  });

  it('asks the guard only about fenced changes, and keeps unconditional ones and those whose fence holds', () => {
    const changes: Change[] = [
      { orgId: 'a', value: '1' },
      { orgId: 'b', value: '1', onlyIf: allocated },
      { orgId: 'c', value: '1', onlyIf: orphan },
    ];
    assert.deepEqual(fencesOf(changes), [
      { orgId: 'b', onlyIf: allocated },
      { orgId: 'c', onlyIf: orphan },
    ]);
    assert.deepEqual(keepHolding(changes, new Set(['c'])).map((c) => c.orgId), ['a', 'c']);
    assert.deepEqual(keepHolding(changes, new Set()).map((c) => c.orgId), ['a']);
  });

  it('checks the fences under the lock, on its connection, then writes what holds and confirms after COMMIT', async () => {
    const log: string[] = [];
    const w = new LoggingWriter(fakePool(log), log, ['b']);
    await w.apply([
      { orgId: 'a', value: '1' },
      { orgId: 'b', value: '1', onlyIf: allocated },
      { orgId: 'c', value: '1', onlyIf: orphan },
      { orgId: 'a', value: '2' },
    ]);
    assert.deepEqual(log, ['BEGIN', 'lock test-target', 'SELECT guard', 'guard b:allocated,c:orphan', 'write a=2,b=1', 'COMMIT', 'confirm a,b']);
  });

  it('runs no guard query for a batch without fences, and nothing at all for an empty batch', async () => {
    const log: string[] = [];
    const w = new LoggingWriter(fakePool(log), log, []);
    await w.apply([]);
    assert.deepEqual(log, []);
    await w.apply([{ orgId: 'a', value: '1' }]);
    assert.deepEqual(log, ['BEGIN', 'lock test-target', 'write a=1', 'COMMIT', 'confirm a']);
  });

  it('coalesces changes submitted in one tick into one batch', async () => {
    const log: string[] = [];
    const w = new LoggingWriter(fakePool(log), log, []);
    await Promise.all([w.submit({ orgId: 'a', value: '1' }), w.submit({ orgId: 'b', value: '1' }), w.submit({ orgId: 'a', value: '2' })]);
    await w.idle();
    assert.deepEqual(log.filter((l) => l.startsWith('write')), ['write a=2,b=1']);
  });

  it('types a failure before the write as not applied, one during it as possibly applied, and never confirms either', async () => {
    const before: string[] = [];
    await assert.rejects(new LoggingWriter(fakePool(before, /advisory/), before, []).apply([{ orgId: 'a', value: '1' }]), (e: unknown) => isAllocatorError(e, 'DATABASE_FAILED') && definitelyNotApplied(e));
    assert.ok(!before.some((l) => l.startsWith('write') || l.startsWith('confirm')), before.join(' | '));

    const during: string[] = [];
    const w = new LoggingWriter(fakePool(during, /COMMIT/), during, []);
    await assert.rejects(w.apply([{ orgId: 'a', value: '1' }]), (e: unknown) => isAllocatorError(e, 'DATABASE_FAILED') && !definitelyNotApplied(e));
    assert.ok(!during.some((l) => l.startsWith('confirm')), during.join(' | '));
  });

  it('passes a typed failure of the write through unchanged', async () => {
    const log: string[] = [];
    const w = new LoggingWriter(fakePool(log), log, []);
    w.writeError = new AllocatorError('DNS_FAILED', 'target answered 500', { status: 500 });
    await assert.rejects(w.apply([{ orgId: 'a', value: '1' }]), (e: unknown) => isAllocatorError(e, 'DNS_FAILED') && e.message === 'target answered 500');
    assert.ok(log.includes('ROLLBACK'), log.join(' | '));
  });
});
