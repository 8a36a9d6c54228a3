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
