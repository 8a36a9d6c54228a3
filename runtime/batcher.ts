/**
 * Coalesces work items: while one flush runs, new items queue up and are all
 * handled by the next flush. A burst of N requests therefore costs a few
 * flushes (one PowerDNS PATCH, one nginx reload), not N.
 *
 * The flush function receives the whole batch and either resolves (every item
 * succeeded) or throws (every item fails with that error). Items of a batch
 * share fate on purpose: their inputs are validated beforehand, so a failure
 * is systemic (service down, config broken), not the fault of one item.
 */
export class Batcher<T> {
  private queue: Array<{ item: T; resolve: () => void; reject: (err: unknown) => void }> = [];
  private running = false;
  private idleWaiters: Array<() => void> = [];
  flushes = 0;

  constructor(
    private readonly flush: (items: T[]) => Promise<void>,
    private readonly maxBatch = 1000,
  ) {}

  submit(item: T): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ item, resolve, reject });
      if (!this.running) void this.drain();
    });
  }

  /** Resolves once nothing is queued or running. */
  idle(): Promise<void> {
    if (!this.running && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private async drain(): Promise<void> {
    this.running = true;
    // Let callers that start in the same tick join the first batch.
    await new Promise<void>((r) => setImmediate(r));
    while (this.queue.length > 0) {
      const batch = this.queue.splice(0, this.maxBatch);
      this.flushes += 1;
      try {
        await this.flush(batch.map((b) => b.item));
        batch.forEach((b) => b.resolve());
      } catch (err) {
        batch.forEach((b) => b.reject(err));
      }
    }
    this.running = false;
    this.idleWaiters.splice(0).forEach((w) => w());
  }
}

/**
 * Like Batcher, but every item gets its own result: concurrent calls of the
 * same kind are answered by one statement (one SQL round trip, one commit)
 * instead of one each. At most `maxConcurrent` flushes run at once; items that
 * arrive meanwhile form the next batch, so a lone caller never waits for a
 * batch to fill and a burst of N costs a few statements, not N.
 *
 * `flush` returns one output per input, in order. If it throws, every item of
 * that batch fails with the error (callers then handle it exactly as they
 * would a failure of their own statement).
 */
export class Coalescer<I, O> {
  private queue: Array<{ item: I; resolve: (out: O) => void; reject: (err: unknown) => void }> = [];
  private running = 0;
  private scheduled = false;
  flushes = 0;

  constructor(
    private readonly flush: (items: I[]) => Promise<O[]>,
    private readonly maxConcurrent = 2,
    private readonly maxBatch = 500,
  ) {}

  submit(item: I): Promise<O> {
    return new Promise<O>((resolve, reject) => {
      this.queue.push({ item, resolve, reject });
      this.kick();
    });
  }

  private kick(): void {
    if (this.scheduled || this.running >= this.maxConcurrent || this.queue.length === 0) return;
    this.scheduled = true;
    // Let callers that start in the same tick join this batch.
    setImmediate(() => {
      this.scheduled = false;
      void this.run();
    });
  }

  private async run(): Promise<void> {
    if (this.running >= this.maxConcurrent || this.queue.length === 0) return;
    this.running += 1;
    const batch = this.queue.splice(0, this.maxBatch);
    this.flushes += 1;
    this.kick(); // more than maxBatch queued: a second flush may start now
    try {
      const out = await this.flush(batch.map((b) => b.item));
      batch.forEach((b, i) => b.resolve(out[i]));
    } catch (err) {
      batch.forEach((b) => b.reject(err));
    } finally {
      this.running -= 1;
      this.kick();
    }
  }
}
