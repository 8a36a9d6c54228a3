/**
 * Background certificate orders of one process: at most one per organization,
 * at most `maxConcurrent` running (each is a lego process and a DNS-01
 * validation; the others queue), each abortable, and their results fanned out
 * to listeners (the allocator writes an issued certificate's file). No @pulumi imports.
 */
import type { BackgroundResult, OrgCertificateEvent } from './org-certificate-types';
import { errorMessage } from './org-certificate-store';

export class BackgroundOrders {
  private readonly running = new Map<string, { promise: Promise<void>; abort: AbortController }>();
  private readonly listeners = new Set<(result: BackgroundResult) => void>();
  private readonly slotWaiters: Array<() => void> = [];
  private active = 0;

  constructor(
    private readonly maxConcurrent: number,
    private readonly log: (event: OrgCertificateEvent) => void,
  ) {}

  has(orgId: string): boolean {
    return this.running.has(orgId);
  }

  /** Queues `order` for the organization unless one is queued or running already. */
  start(orgId: string, order: (signal: AbortSignal) => Promise<void>): void {
    if (this.running.has(orgId)) return;
    const abort = new AbortController();
    const promise = (async () => {
      await this.slot();
      try {
        await order(abort.signal);
      } finally {
        this.active -= 1;
        this.slotWaiters.shift()?.();
      }
    })()
      .catch((err: unknown) => this.log({ event: 'tls.background_error', organizationId: orgId, message: errorMessage(err) }))
      .finally(() => this.running.delete(orgId));
    this.running.set(orgId, { promise, abort });
  }

  onResult(listener: (result: BackgroundResult) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  emit(result: BackgroundResult): void {
    for (const l of this.listeners) {
      try {
        l(result);
      } catch (err) {
        this.log({ event: 'tls.listener_error', message: errorMessage(err) });
      }
    }
  }

  /** Resolves when no order is queued or running. */
  async idle(): Promise<void> {
    while (this.running.size > 0) await Promise.allSettled([...this.running.values()].map((b) => b.promise));
  }

  abortAll(): void {
    for (const b of this.running.values()) b.abort.abort();
  }

  private async slot(): Promise<void> {
    if (this.active >= this.maxConcurrent) await new Promise<void>((resolve) => this.slotWaiters.push(resolve));
    this.active += 1;
  }
}
