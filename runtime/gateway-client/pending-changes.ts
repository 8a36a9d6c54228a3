/**
 * The organization's unsaved changes on a gateway: whether the data changed
 * since the last push, and one push at a time (a change made while a push
 * runs keeps the data dirty for the next one). Node built-ins only.
 */
import type { GatewaySession, OrgSnapshot, PushReceipt } from './client';

export class PendingChanges {
  private changed = false;
  private seq = 0;
  private lastChange = 0;
  private pushing: Promise<unknown> | undefined;
  /** The last successful push, for status(). */
  lastPush: { version: number; at: string } | null = null;

  constructor(private readonly now: () => number) {}

  get dirty(): boolean {
    return this.changed;
  }

  mark(): void {
    this.changed = true;
    this.seq += 1;
    this.lastChange = this.now();
  }

  /** Epoch ms of the last change (the next push's timestamp). */
  get lastChangeAt(): number {
    return this.lastChange;
  }

  /** Resolves once no push runs (a hot reload's hand-off reads the state after it). */
  async settled(): Promise<void> {
    while (this.pushing) await this.pushing.catch(() => undefined);
  }

  /** Takes over a predecessor's pending state (hot reload: AgentHandOff). */
  restore(h: { dirty: boolean; lastChange: number; lastPush: { version: number; at: string } | null }): void {
    this.lastPush = h.lastPush;
    this.changed = false;
    if (h.dirty) {
      this.mark();
      this.lastChange = h.lastChange;
    }
  }

  /** A new session, or the old one is over: nothing of it is pending any more. */
  forget(opts: { lastPush?: boolean } = {}): void {
    this.changed = false;
    if (opts.lastPush) this.lastPush = null;
  }

  /**
   * After any running push: pushes `snapshot()` through the session `via()`
   * returns then, if the data is dirty; undefined when there was nothing to push.
   */
  async push(via: () => GatewaySession | undefined, snapshot: () => OrgSnapshot | Promise<OrgSnapshot>, signal: AbortSignal): Promise<PushReceipt | undefined> {
    await this.settled();
    const session = via();
    if (!session || !this.changed) return undefined;
    const seq = this.seq;
    const timestamp = new Date(this.lastChange);
    const run = (async () => {
      const data = await snapshot();
      const r = await session.push(data, { timestamp, signal });
      if (this.seq === seq) this.changed = false;
      this.lastPush = { version: r.version, at: new Date(this.now()).toISOString() };
      return r;
    })();
    this.pushing = run;
    try {
      return await run;
    } finally {
      this.pushing = undefined;
    }
  }
}
