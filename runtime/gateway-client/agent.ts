import type { AgentEvent, AgentHandOff, AgentLogger, AgentState, AgentStatus, GatewayAgentOptions, OrganizationHooks, UnloadReason } from './agent-types';
import { busy, errorFields, intervalsOf, onSignals, parseHandshake } from './agent-inputs';
import { GatewayClient, GatewaySession, isBearerToken, PushReceipt } from './client';
import { GatewayClientError } from './errors';
import { PendingChanges } from './pending-changes';
import { sleep } from './scheduler';
import { ServingTimers } from './serving-timers';

export type { AgentEvent, AgentHandOff, AgentLogger, AgentSignal, AgentState, AgentStatus, GatewayAgentOptions, LoadedOrganization, OrganizationHooks, SignalSource, UnloadReason } from './agent-types';

/**
 * The gateway's life cycle on top of GatewayClient: register → ready →
 * (/collab/start) config → pull → load → ready(loaded) → serving, with
 * heartbeats, periodic pushes of changed data and an idle timer; on idle:
 * push → stop → register again, for another organization, without a restart.
 * A token the API has revoked ends the session the same way. Every life-cycle
 * step runs on one queue, so a hand-over, an idle stop and a shutdown never
 * interleave. It replaces the seed's data-sync.ts in the team's app-gateway.
 *
 * Over the 250-line class limit on purpose (test/unit/code-shape.test.ts says
 * why): the steps share one queue and one state; the parts that stand alone
 * live in agent-types, agent-inputs, pending-changes and serving-timers.
 */
export class GatewayAgent {
  readonly client: GatewayClient;
  private readonly hooks: OrganizationHooks;
  private readonly ms: ReturnType<typeof intervalsOf>;
  private readonly log: AgentLogger;
  private readonly stopListening: () => void;
  private readonly listeners = new Set<(to: AgentState, from: AgentState) => void>();
  private readonly life = new AbortController();

  private current: AgentState = 'registering';
  private session: GatewaySession | undefined;
  private readonly changes: PendingChanges;
  private lastActivity = 0;
  private registration: AbortController | undefined;
  private queue: Promise<void> = Promise.resolve();
  private queued = 0;
  private closing: Promise<void> | undefined;
  private timers: ServingTimers | undefined;
  /** handOff() gave the session to a successor: nothing more is sent with it. */
  private handedOff = false;

  constructor(opts: GatewayAgentOptions) {
    this.client = opts.client;
    this.hooks = opts.hooks;
    this.ms = intervalsOf(opts);
    this.log = opts.logger ?? (() => undefined);
    this.changes = new PendingChanges(() => this.client.scheduler.now());
    this.stopListening = onSignals(opts.signals, (sig) => {
      void this.shutdown(sig).then(() => opts.onSignalHandled?.(sig));
    });
  }

  get state(): AgentState {
    return this.current;
  }

  get organizationId(): string | null {
    return this.session?.organizationId ?? null;
  }

  status(): AgentStatus {
    return { state: this.current, gatewayId: this.client.gatewayId, organizationId: this.organizationId, dirty: this.changes.dirty, lastPush: this.changes.lastPush };
  }

  /** Called with every state change. */
  onStateChange(listener: (to: AgentState, from: AgentState) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Registers with the API (POST /gateway/ready, retrying until it answers); resolves when ready or taken over. */
  start(): Promise<void> {
    return this.register();
  }

  /** A request for the organization: the idle timer starts again. */
  activity(): void {
    if (this.current === 'serving') this.lastActivity = this.client.scheduler.now();
  }

  /** The organization's data changed: the next periodic push (and the final one) sends it. */
  markDirty(): void {
    this.changes.mark();
  }

  /**
   * POST /collab/start's body. Validated here (so the app answers 4xx at once),
   * then handled on the queue after the app has answered: a forged or stale
   * handshake fails at /gateway/config and changes nothing.
   */
  acceptHandshake(payload: unknown): void {
    if (this.closing) throw busy('the gateway is shutting down');
    const { token, orgHint } = parseHandshake(payload, this.client.gatewayId);
    if (this.queued >= 3) throw busy('too many hand-overs pending');
    this.enqueue(() => this.handOver(token, orgHint));
  }

  /** Pushes now if the data changed since the last push. */
  pushNow(): Promise<PushReceipt | undefined> {
    return this.push('manual');
  }

  /**
   * Final push and release (/gateway/stop), then no more activity. Idempotent;
   * bounded by shutdownTimeoutMs. Without `release` the organization stays allocated.
   */
  shutdown(reason = 'shutdown', opts: { release?: boolean } = {}): Promise<void> {
    if (this.closing) return this.closing;
    this.registration?.abort();
    this.life.abort();
    this.closing = new Promise<void>((resolve) => {
      this.enqueue(async () => {
        await this.finalStop(reason, opts.release !== false);
        resolve();
      });
    });
    return this.closing;
  }

  /**
   * Hot reload, old process: stops every timer and the registration, refuses
   * new hand-overs (BUSY) and returns the session for the successor; the
   * organization stays allocated (nothing is pushed or released here: the
   * successor pushes what is dirty). Only from `registering`, `ready` or `serving` with
   * nothing queued, else BUSY (retryable). A later shutdown does nothing
   * more; `adopt` of the same hand-off takes it back (a failed reload).
   */
  async handOff(): Promise<AgentHandOff> {
    if (this.closing) throw busy('the gateway is shutting down or already handed off');
    if (this.queued > 0 || !['registering', 'ready', 'serving'].includes(this.current)) throw busy(`the gateway is ${this.current}${this.queued > 0 ? ' with a hand-over pending' : ''}`);
    this.closing = Promise.resolve();
    this.registration?.abort();
    this.registration = undefined;
    this.clearTimers();
    await this.changes.settled();
    const session = this.session;
    const h: AgentHandOff = {
      version: 1,
      organizationId: session?.organizationId ?? null,
      gatewayToken: session ? session.handOffToken() : null,
      config: session ? { ...session.config } : {},
      data: session ? await this.hooks.snapshot() : null,
      dirty: this.changes.dirty,
      lastChange: this.changes.lastChangeAt,
      quietMs: Math.max(0, this.client.scheduler.now() - this.lastActivity),
      lastPush: this.changes.lastPush,
    };
    // Until it exits, this process answers reads only (`stopping` refuses changes); nothing more is sent with the session.
    this.handedOff = true;
    this.changes.forget();
    this.transition('stopping', { reason: 'handed_off' });
    return h;
  }

  /**
   * Hot reload, new process: takes the organization over from `handOff` (no
   * API call: the allocation and its token are unchanged) and serves it, with
   * the heartbeat, push and idle timers going on; a hand-off without an
   * organization registers as `start()` does. Only before `start()` (or on the
   * agent that handed it off), else BUSY.
   */
  async adopt(h: AgentHandOff): Promise<void> {
    if (typeof h !== 'object' || h === null || h.version !== 1) throw new GatewayClientError('INVALID_ARGUMENT', 'not a version-1 hand-off');
    const fresh = !this.session && this.queued === 0 && !this.registration && this.current === 'registering';
    if (!(fresh || this.handedOff) || this.life.signal.aborted) {
      throw new GatewayClientError('BUSY', `the gateway is ${this.current}: it can adopt only before it starts`, { status: 409 });
    }
    this.session = undefined;
    this.handedOff = false;
    this.closing = undefined;
    if (h.organizationId === null) return void this.register();
    if (!isBearerToken(h.gatewayToken)) throw new GatewayClientError('INVALID_ARGUMENT', 'the hand-off has an organization but no gateway token');
    const session = this.client.resume(h.organizationId, h.gatewayToken, h.config ?? {});
    await this.hooks.load({ organizationId: h.organizationId, config: session.config, data: h.data, timestamp: null, version: h.lastPush?.version ?? null });
    this.session = session;
    this.changes.restore(h);
    const quiet = Math.min(Math.max(0, h.quietMs), this.ms.idleTimeoutMs);
    this.lastActivity = this.client.scheduler.now() - quiet;
    this.transition('serving', { reason: 'adopted', organization_id: h.organizationId });
    this.timers = this.servingTimers(session);
    this.timers.start(this.ms.idleTimeoutMs - quiet);
  }

  /** Removes the signal handlers (tests, hosts that own their signals). */
  dispose(): void {
    this.stopListening();
    this.clearTimers();
  }

  // ------------------------------------------------------------ life cycle

  private enqueue(step: () => Promise<void>): void {
    this.queued += 1;
    this.queue = this.queue.then(step).catch((err: unknown) => {
      this.event('gateway.internal_error', { message: err instanceof Error ? err.message : String(err) });
    }).finally(() => {
      this.queued -= 1;
    });
  }

  private transition(to: AgentState, extra: Partial<AgentEvent> = {}): void {
    const from = this.current;
    if (from === to) return;
    this.current = to;
    this.event('gateway.state', { from, to, ...extra });
    for (const l of this.listeners) l(to, from);
  }

  private event(event: string, extra: Partial<AgentEvent> = {}): void {
    const org = this.session?.organizationId;
    this.log({ event, gateway_id: this.client.gatewayId, ...(org ? { organization_id: org } : {}), ...extra });
  }

  private async register(): Promise<void> {
    if (this.closing) return;
    this.registration?.abort();
    const ac = new AbortController();
    this.registration = ac;
    this.transition('registering');
    for (;;) {
      try {
        const r = await this.client.ready({ untilAnswered: true, signal: ac.signal });
        if (ac.signal.aborted) return;
        this.registration = undefined;
        this.transition('ready', { pool_state: r.state });
        return;
      } catch (err) {
        if (ac.signal.aborted) return;
        this.event('gateway.register_refused', errorFields(err));
        try {
          await sleep(this.client.scheduler, this.ms.registrationRetryMs, ac.signal);
        } catch {
          return;
        }
      }
    }
  }

  private async handOver(handshakeToken: string, orgHint: string): Promise<void> {
    if (this.closing) return;
    let session: GatewaySession;
    try {
      session = await this.client.config(handshakeToken, { signal: this.life.signal });
    } catch (err) {
      // A stale, forged or repeated handshake: nothing changes.
      this.event('gateway.handshake_failed', { ...errorFields(err), organization_id: orgHint });
      return;
    }
    this.registration?.abort();
    this.registration = undefined;
    const previous = this.session;
    if (previous) {
      this.clearTimers();
      if (previous.organizationId === session.organizationId && this.changes.dirty) {
        // A new hand-over of the same organization: keep what changed here (the API refuses it if it holds newer data).
        await this.push('superseded', undefined, session).catch((err: unknown) => this.event('gateway.push_failed', { reason: 'superseded', ...errorFields(err) }));
      }
      this.event('gateway.session_ended', { reason: 'superseded' });
      this.session = undefined;
      await this.unload('superseded');
    }
    this.session = session;
    this.changes.forget({ lastPush: true });
    this.transition('loading', { organization_id: session.organizationId });
    if (await this.load(session)) this.serve(session);
  }

  /** Pull, the app's load, /gateway/ready(loaded); false (and the organization given back) when any fails. */
  private async load(session: GatewaySession): Promise<boolean> {
    try {
      const pulled = await session.pull({ signal: this.life.signal });
      await this.hooks.load({ organizationId: session.organizationId, config: session.config, data: pulled.data, timestamp: pulled.timestamp, version: pulled.version });
      this.event('gateway.pulled', { ...(pulled.version !== null ? { version: pulled.version } : {}) });
      await session.loaded({ signal: this.life.signal });
    } catch (err) {
      this.event('gateway.load_failed', errorFields(err));
      // Shutting down: the final stop releases it.
      if (this.closing) return false;
      if (!(err instanceof GatewayClientError && err.sessionEnded)) {
        // Nothing was served: give the organization back so the next start gets a working gateway.
        await session.stop({ signal: this.life.signal }).catch((e: unknown) => this.event('gateway.stop_failed', errorFields(e)));
      }
      await this.finishSession(session, 'load_failed');
      return false;
    }
    return true;
  }

  private serve(session: GatewaySession): void {
    this.lastActivity = this.client.scheduler.now();
    this.transition('serving');
    this.timers = this.servingTimers(session);
    this.timers.start();
  }

  private async idleStop(session: GatewaySession): Promise<void> {
    if (this.session !== session || this.current !== 'serving' || this.closing) return;
    this.transition('stopping', { reason: 'idle' });
    try {
      await this.push('idle');
      const r = await session.stop({ signal: this.life.signal });
      this.event('gateway.released', { reason: 'idle', pool_state: r.released ? 'released' : 'already_released' });
    } catch (err) {
      if (this.closing) return;
      if (!(err instanceof GatewayClientError && err.sessionEnded)) {
        // Nothing is released unless its data is safe: keep serving, try again after another idle period.
        this.event('gateway.stop_deferred', errorFields(err));
        this.lastActivity = this.client.scheduler.now();
        this.transition('serving');
        this.timers?.idleAgain();
        return;
      }
      this.event('gateway.session_ended', { reason: 'revoked', ...errorFields(err) });
    }
    await this.finishSession(session, 'idle');
  }

  private async revoked(session: GatewaySession, err: unknown): Promise<void> {
    if (this.session !== session || this.closing) return;
    this.event('gateway.session_ended', { reason: 'revoked', ...errorFields(err) });
    await this.finishSession(session, 'revoked');
  }

  /** The session is over: forget it, unload, and go back to the pool. */
  private async finishSession(session: GatewaySession, reason: UnloadReason): Promise<void> {
    if (this.session === session) {
      this.clearTimers();
      this.session = undefined;
      this.changes.forget();
      await this.unload(reason);
    }
    if (!this.closing) void this.register();
  }

  private async finalStop(reason: string, release: boolean): Promise<void> {
    if (this.handedOff) this.session = undefined;
    const session = this.session;
    this.clearTimers();
    this.transition('stopping', { reason });
    if (session) {
      const ac = new AbortController();
      const timer = this.client.scheduler.setTimeout(() => ac.abort(), this.ms.shutdownTimeoutMs);
      try {
        await this.push('shutdown', ac.signal);
        if (release) {
          const r = await session.stop({ signal: ac.signal });
          this.event('gateway.released', { reason, pool_state: r.released ? 'released' : 'already_released' });
        }
      } catch (err) {
        this.event('gateway.shutdown_incomplete', { reason, ...errorFields(err) });
      } finally {
        this.client.scheduler.clearTimeout(timer);
      }
      this.session = undefined;
      await this.unload('shutdown');
    }
    this.transition('shut_down', { reason });
  }

  private async unload(reason: UnloadReason): Promise<void> {
    try {
      await this.hooks.unload(reason);
    } catch (err) {
      this.event('gateway.unload_failed', { reason, message: err instanceof Error ? err.message : String(err) });
    }
  }

  // ------------------------------------------------------------ push and timers

  private async push(reason: string, signal?: AbortSignal, via?: GatewaySession): Promise<PushReceipt | undefined> {
    const r = await this.changes.push(() => via ?? this.session, () => this.hooks.snapshot(), signal ?? this.life.signal);
    if (r) this.event('gateway.pushed', { reason, version: r.version });
    return r;
  }

  private clearTimers(): void {
    this.timers?.clear();
    this.timers = undefined;
  }

  private servingTimers(session: GatewaySession): ServingTimers {
    return new ServingTimers(this.client.scheduler, this.ms, {
      live: () => this.session === session && (this.current === 'serving' || this.current === 'stopping') && !this.closing,
      serving: () => this.session === session && this.current === 'serving',
      heartbeat: () => session.heartbeat({ retry: false, signal: this.life.signal }),
      push: () => this.push('periodic'),
      quietMs: () => this.client.scheduler.now() - this.lastActivity,
      idle: () => this.enqueue(() => this.idleStop(session)),
      revoked: (err) => this.enqueue(() => this.revoked(session, err)),
      failed: (what, err) =>
        what === 'heartbeat' ? this.event('gateway.heartbeat_failed', errorFields(err)) : this.event('gateway.push_failed', { reason: 'periodic', ...errorFields(err) }),
    });
  }
}
