/**
 * Time, injected: the client and the agent never call Date.now or setTimeout
 * directly, so tests drive them with a ManualScheduler instead of sleeping.
 */
export type TimerHandle = { readonly __timer: unique symbol } | object;

export interface Scheduler {
  /** Milliseconds since the epoch. */
  now(): number;
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
}

export const realScheduler: Scheduler = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, Math.max(0, ms)),
  clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
};

/** Resolves after `ms` on the scheduler; rejects with the signal's reason when aborted first. */
export function sleep(scheduler: Scheduler, ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      scheduler.clearTimeout(handle);
      reject(signal?.reason);
    };
    const handle = scheduler.setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

interface ManualTimer {
  id: number;
  at: number;
  fn: () => void;
}

/**
 * A scheduler whose clock moves only when the test says so. `advance(ms)` runs
 * every timer that falls due, in order, letting promise chains settle between
 * them (so code that awaits a sleep and then fetches again makes progress).
 */
export class ManualScheduler implements Scheduler {
  private current: number;
  private seq = 0;
  private timers: ManualTimer[] = [];

  constructor(start = Date.UTC(2026, 0, 1)) {
    this.current = start;
  }

  now(): number {
    return this.current;
  }

  setTimeout(fn: () => void, ms: number): TimerHandle {
    const timer: ManualTimer = { id: (this.seq += 1), at: this.current + Math.max(0, ms), fn };
    this.timers.push(timer);
    return { id: timer.id };
  }

  clearTimeout(handle: TimerHandle): void {
    const id = (handle as { id?: number }).id;
    this.timers = this.timers.filter((t) => t.id !== id);
  }

  /** Delays of the pending timers from now, soonest first. */
  pending(): number[] {
    return this.timers.map((t) => t.at - this.current).sort((a, b) => a - b);
  }

  /** Lets pending promise callbacks and I/O callbacks of already-settled work run. */
  async settle(rounds = 5): Promise<void> {
    for (let i = 0; i < rounds; i += 1) await new Promise<void>((r) => setImmediate(r));
  }

  /** Moves the clock forward by `ms`, running due timers in time order. */
  async advance(ms: number): Promise<void> {
    const end = this.current + ms;
    await this.settle();
    for (;;) {
      const due = this.timers.filter((t) => t.at <= end).sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (!due) break;
      this.timers = this.timers.filter((t) => t !== due);
      this.current = Math.max(this.current, due.at);
      due.fn();
      await this.settle();
    }
    this.current = end;
    await this.settle();
  }

  /** Runs the next due timer (whenever it is) and returns how far the clock moved. */
  async next(): Promise<number> {
    await this.settle();
    const soonest = this.pending()[0];
    if (soonest === undefined) throw new Error('ManualScheduler: no pending timer');
    await this.advance(soonest);
    return soonest;
  }
}
