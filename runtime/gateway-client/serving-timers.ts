/**
 * The timers of one served organization on a gateway: a heartbeat every
 * heartbeatIntervalMs, a push of changed data every pushIntervalMs (only while
 * serving), and the idle timer. A revoked session ends it (the agent decides
 * what follows); any other failure is logged and the next run still comes.
 * Node built-ins only.
 */
import { GatewayClientError } from './errors';
import type { Scheduler, TimerHandle } from './scheduler';

export interface ServingHooks {
  /** The session is still the agent's, serving or stopping, and no shutdown runs. */
  live(): boolean;
  /** The session is still the agent's and serving. */
  serving(): boolean;
  heartbeat(): Promise<unknown>;
  push(): Promise<unknown>;
  /** Milliseconds since the last request for the organization. */
  quietMs(): number;
  /** Quiet for idleTimeoutMs: stop serving. */
  idle(): void;
  revoked(err: GatewayClientError): void;
  failed(what: 'heartbeat' | 'push', err: unknown): void;
}

export interface ServingIntervals {
  heartbeatIntervalMs: number;
  pushIntervalMs: number;
  idleTimeoutMs: number;
}

export class ServingTimers {
  private handles: { idle?: TimerHandle; heartbeat?: TimerHandle; push?: TimerHandle } = {};

  constructor(
    private readonly scheduler: Scheduler,
    private readonly ms: ServingIntervals,
    private readonly hooks: ServingHooks,
  ) {}

  /** `idleDelayMs`: a hot reload's successor goes on with its predecessor's idle period. */
  start(idleDelayMs = this.ms.idleTimeoutMs): void {
    this.repeat('heartbeat', this.ms.heartbeatIntervalMs, () => this.hooks.heartbeat());
    // Pushes only while serving; while stopping, the stop's own push runs.
    this.repeat('push', this.ms.pushIntervalMs, () => (this.hooks.serving() ? this.hooks.push() : Promise.resolve(undefined)));
    this.idleAfter(idleDelayMs);
  }

  /** A deferred idle stop: another full idle period. */
  idleAgain(): void {
    this.idleAfter(this.ms.idleTimeoutMs);
  }

  clear(): void {
    for (const h of Object.values(this.handles)) if (h) this.scheduler.clearTimeout(h);
    this.handles = {};
  }

  private repeat(what: 'heartbeat' | 'push', interval: number, step: () => Promise<unknown>): void {
    this.handles[what] = this.scheduler.setTimeout(() => {
      if (!this.hooks.live()) return;
      void step()
        .catch((err: unknown) => {
          if (err instanceof GatewayClientError && err.sessionEnded) this.hooks.revoked(err);
          else this.hooks.failed(what, err);
        })
        .finally(() => {
          if (this.hooks.live()) this.repeat(what, interval, step);
        });
    }, interval);
  }

  private idleAfter(delay: number): void {
    this.handles.idle = this.scheduler.setTimeout(() => {
      if (!this.hooks.serving()) return;
      const quiet = this.hooks.quietMs();
      if (quiet >= this.ms.idleTimeoutMs) this.hooks.idle();
      else this.idleAfter(this.ms.idleTimeoutMs - quiet);
    }, delay);
  }
}
