import { isCanonicalOrgId } from '../naming';
import { GatewayClient, GatewaySession, isBearerToken, OrgSnapshot, PushReceipt } from './client';
import { GatewayClientError } from './errors';
import { sleep, TimerHandle } from './scheduler';

/**
 * registering: telling the API this gateway can be allocated (retrying until it answers)
 * ready:       in the pool, waiting for /collab/start
 * loading:     handshake done, pulling and loading the organization
 * serving:     the organization is loaded (heartbeats, periodic pushes, idle timer)
 * stopping:    final push and /gateway/stop (idle timeout or shutdown)
 * shut_down:   after a signal or shutdown(); nothing more happens
 */
export type AgentState = 'registering' | 'ready' | 'loading' | 'serving' | 'stopping' | 'shut_down';

export type UnloadReason = 'idle' | 'revoked' | 'superseded' | 'load_failed' | 'shutdown';

export interface LoadedOrganization {
  organizationId: string;
  /** The host's organization config sent with /gateway/config. */
  config: Readonly<Record<string, unknown>>;
  /** The last pushed snapshot; null for an organization without data. */
  data: OrgSnapshot | null;
  timestamp: string | null;
  version: number | null;
}

/** What the app does with an organization; the agent does the protocol. */
export interface OrganizationHooks {
  /** Loads the organization (throwing gives it back: the gateway releases it and returns to the pool). */
  load(org: LoadedOrganization): void | Promise<void>;
  /** The organization's data now, to push. */
  snapshot(): OrgSnapshot | Promise<OrgSnapshot>;
  /** The organization is no longer served here. */
  unload(reason: UnloadReason): void | Promise<void>;
}

/** One structured line per state change and per protocol event; never a token. */
export interface AgentEvent {
  event: string;
  gateway_id: string;
  organization_id?: string;
  from?: AgentState;
  to?: AgentState;
  reason?: string;
  code?: string;
  status?: number;
  version?: number;
  pool_state?: string;
  message?: string;
}
export type AgentLogger = (e: AgentEvent) => void;

export type AgentSignal = 'SIGTERM' | 'SIGINT';
/** `process`, or an EventEmitter in tests. */
export interface SignalSource {
  on(signal: AgentSignal, listener: () => void): unknown;
  removeListener(signal: AgentSignal, listener: () => void): unknown;
}

export interface GatewayAgentOptions {
  client: GatewayClient;
  hooks: OrganizationHooks;
  /** Without activity for this long the organization is pushed and released; default 5 min (the seed's rule). */
  idleTimeoutMs?: number;
  /** Periodic push of changed data; default 60 s. */
  pushIntervalMs?: number;
  /** Default 20 s; the API's reaper expects one every ≤ 30 s. */
  heartbeatIntervalMs?: number;
  /** Wait before asking again when the API refuses the registration (wrong token, unknown gateway); default 30 s. */
  registrationRetryMs?: number;
  /** Budget of the final push and stop on shutdown; default 6 s (the image's supervisor kills after 8 s). */
  shutdownTimeoutMs?: number;
  /** Shut down (push, stop) on SIGTERM and SIGINT from this source; default none. */
  signals?: SignalSource | null;
  /** Called after a signal's shutdown finished (the app exits here). */
  onSignalHandled?: (signal: AgentSignal) => void;
  logger?: AgentLogger | null;
}

/**
 * What an agent hands to its successor process in a hot reload (the image's
 * gateway-reload starts the new build beside the old one): the session's
 * allocation token, the organization's data as served now and the timers'
 * progress. Holds a secret: never logged, passed only over the gateway's
 * local control socket.
 */
export interface AgentHandOff {
  version: 1;
  /** null: the agent held no organization (ready in the pool). */
  organizationId: string | null;
  gatewayToken: string | null;
  config: Record<string, unknown>;
  data: OrgSnapshot | null;
  /** Changed since the last push (the successor pushes it). */
  dirty: boolean;
  /** Epoch ms of the last change (the push's timestamp). */
  lastChange: number;
  /** Milliseconds since the organization's last activity (the idle timer goes on from there). */
  quietMs: number;
  lastPush: { version: number; at: string } | null;
}

export interface AgentStatus {
  state: AgentState;
  gatewayId: string;
  organizationId: string | null;
  dirty: boolean;
  lastPush: { version: number; at: string } | null;
}

/**
 * The gateway's life cycle on top of GatewayClient: register → ready →
 * (/collab/start) config → pull → load → ready(loaded) → serving, with
 * heartbeats, periodic pushes of changed data and an idle timer; on idle:
 * push → stop → register again, for another organization, without a restart.
 * A token the API has revoked ends the session the same way. Every life-cycle
 * step runs on one queue, so a hand-over, an idle stop and a shutdown never
 * interleave. It replaces the seed's data-sync.ts in the team's app-gateway.
 */
export class GatewayAgent {
  readonly client: GatewayClient;
  private readonly hooks: OrganizationHooks;
  private readonly idleTimeoutMs: number;
  private readonly pushIntervalMs: number;
  private readonly heartbeatIntervalMs: number;
  private readonly registrationRetryMs: number;
  private readonly shutdownTimeoutMs: number;
  private readonly log: AgentLogger;
  private readonly opts: GatewayAgentOptions;
  private readonly signalHandlers: Array<[AgentSignal, () => void]> = [];
  private readonly listeners = new Set<(to: AgentState, from: AgentState) => void>();
  private readonly life = new AbortController();

  private current: AgentState = 'registering';
  private session: GatewaySession | undefined;
  private dirty = false;
  private changeSeq = 0;
  private lastChange = 0;
  private lastActivity = 0;
  private lastPush: { version: number; at: string } | null = null;
  private registration: AbortController | undefined;
  private queue: Promise<void> = Promise.resolve();
  private queued = 0;
  private pushing: Promise<unknown> | undefined;
  private closing: Promise<void> | undefined;
  /** handOff() gave the session to a successor: nothing more is sent with it. */
  private handedOff = false;
  private timers: { idle?: TimerHandle; heartbeat?: TimerHandle; push?: TimerHandle } = {};

  constructor(opts: GatewayAgentOptions) {
    const positive = (name: string, v: number | undefined, dflt: number, max = Infinity): number => {
      const value = v ?? dflt;
      if (!(Number.isFinite(value) && value > 0 && value <= max)) throw new GatewayClientError('INVALID_ARGUMENT', `${name} must be a positive number of milliseconds${max < Infinity ? ` ≤ ${max}` : ''}`);
      return value;
    };
    this.opts = opts;
    this.client = opts.client;
    this.hooks = opts.hooks;
    this.idleTimeoutMs = positive('idleTimeoutMs', opts.idleTimeoutMs, 300_000);
    this.pushIntervalMs = positive('pushIntervalMs', opts.pushIntervalMs, 60_000);
    this.heartbeatIntervalMs = positive('heartbeatIntervalMs', opts.heartbeatIntervalMs, 20_000, 30_000);
    this.registrationRetryMs = positive('registrationRetryMs', opts.registrationRetryMs, 30_000);
    this.shutdownTimeoutMs = positive('shutdownTimeoutMs', opts.shutdownTimeoutMs, 6_000);
    this.log = opts.logger ?? (() => undefined);
    for (const sig of ['SIGTERM', 'SIGINT'] as const) {
      if (!opts.signals) break;
      const handler = (): void => {
        void this.shutdown(sig).then(() => opts.onSignalHandled?.(sig));
      };
      opts.signals.on(sig, handler);
      this.signalHandlers.push([sig, handler]);
    }
  }

  get state(): AgentState {
    return this.current;
  }

  get organizationId(): string | null {
    return this.session?.organizationId ?? null;
  }

  status(): AgentStatus {
    return { state: this.current, gatewayId: this.client.gatewayId, organizationId: this.organizationId, dirty: this.dirty, lastPush: this.lastPush };
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
    this.dirty = true;
    this.changeSeq += 1;
    this.lastChange = this.client.scheduler.now();
  }

  /**
   * POST /collab/start's body. Validated here (so the app answers 4xx at once),
   * then handled on the queue after the app has answered: a forged or stale
   * handshake fails at /gateway/config and changes nothing.
   */
  acceptHandshake(payload: unknown): void {
    const refuse = (code: 'INVALID_ARGUMENT' | 'FORBIDDEN' | 'BUSY', msg: string): never => {
      throw new GatewayClientError(code, msg, { status: code === 'BUSY' ? 503 : code === 'FORBIDDEN' ? 403 : 400, retryable: code === 'BUSY' });
    };
    if (this.closing) refuse('BUSY', 'the gateway is shutting down');
    if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) refuse('INVALID_ARGUMENT', 'the body must be a JSON object');
    const p = payload as Record<string, unknown>;
    if (!isBearerToken(p.handshake_token)) refuse('INVALID_ARGUMENT', 'handshake_token must be a token string');
    if (!isCanonicalOrgId(p.organization_id)) refuse('INVALID_ARGUMENT', 'organization_id must be a canonical lowercase UUID');
    if (p.gateway_id !== undefined && p.gateway_id !== this.client.gatewayId) refuse('FORBIDDEN', 'gateway_id is not this gateway');
    if (this.queued >= 3) refuse('BUSY', 'too many hand-overs pending');
    const token = p.handshake_token as string;
    const orgHint = p.organization_id as string;
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
    const busy = (msg: string): never => {
      throw new GatewayClientError('BUSY', msg, { status: 503, retryable: true });
    };
    if (this.closing) busy('the gateway is shutting down or already handed off');
    if (this.queued > 0 || (this.current !== 'registering' && this.current !== 'ready' && this.current !== 'serving')) busy(`the gateway is ${this.current}${this.queued > 0 ? ' with a hand-over pending' : ''}`);
    this.closing = Promise.resolve();
    this.registration?.abort();
    this.registration = undefined;
    this.clearTimers();
    while (this.pushing) await this.pushing.catch(() => undefined);
    const session = this.session;
    const data = session ? await this.hooks.snapshot() : null;
    const h: AgentHandOff = {
      version: 1,
      organizationId: session?.organizationId ?? null,
      gatewayToken: session ? session.handOffToken() : null,
      config: session ? { ...session.config } : {},
      data,
      dirty: this.dirty,
      lastChange: this.lastChange,
      quietMs: Math.max(0, this.client.scheduler.now() - this.lastActivity),
      lastPush: this.lastPush,
    };
    // Until it exits this process still answers requests (read-only: `stopping` refuses changes),
    // so the session stays for what it shows; nothing more is sent with it.
    this.handedOff = true;
    this.dirty = false;
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
    if (h.organizationId === null) {
      void this.register();
      return;
    }
    if (!isBearerToken(h.gatewayToken)) throw new GatewayClientError('INVALID_ARGUMENT', 'the hand-off has an organization but no gateway token');
    const session = this.client.resume(h.organizationId, h.gatewayToken, h.config ?? {});
    await this.hooks.load({ organizationId: h.organizationId, config: session.config, data: h.data, timestamp: null, version: h.lastPush?.version ?? null });
    this.session = session;
    this.lastPush = h.lastPush;
    this.dirty = false;
    if (h.dirty) {
      this.markDirty();
      this.lastChange = h.lastChange;
    }
    const now = this.client.scheduler.now();
    const quiet = Math.min(Math.max(0, h.quietMs), this.idleTimeoutMs);
    this.lastActivity = now - quiet;
    this.transition('serving', { reason: 'adopted', organization_id: h.organizationId });
    this.scheduleHeartbeat(session);
    this.schedulePush(session);
    this.scheduleIdle(session, this.idleTimeoutMs - quiet);
  }

  /** Removes the signal handlers (tests, hosts that own their signals). */
  dispose(): void {
    for (const [sig, handler] of this.signalHandlers) this.opts.signals?.removeListener(sig, handler);
    this.signalHandlers.length = 0;
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

  private errorFields(err: unknown): Partial<AgentEvent> {
    return err instanceof GatewayClientError ? { code: err.code, status: err.status, message: err.message } : { code: 'INTERNAL', message: err instanceof Error ? err.message : String(err) };
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
        this.event('gateway.register_refused', this.errorFields(err));
        try {
          await sleep(this.client.scheduler, this.registrationRetryMs, ac.signal);
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
      this.event('gateway.handshake_failed', { ...this.errorFields(err), organization_id: orgHint });
      return;
    }
    this.registration?.abort();
    this.registration = undefined;
    const previous = this.session;
    if (previous) {
      this.clearTimers();
      if (previous.organizationId === session.organizationId && this.dirty) {
        // A new hand-over of the same organization: keep what changed here (the API refuses it if it holds newer data).
        await this.push('superseded', undefined, session).catch((err: unknown) => this.event('gateway.push_failed', { reason: 'superseded', ...this.errorFields(err) }));
      }
      this.event('gateway.session_ended', { reason: 'superseded' });
      this.session = undefined;
      await this.unload('superseded');
    }
    this.session = session;
    this.dirty = false;
    this.lastPush = null;
    this.transition('loading', { organization_id: session.organizationId });
    try {
      const pulled = await session.pull({ signal: this.life.signal });
      await this.hooks.load({ organizationId: session.organizationId, config: session.config, data: pulled.data, timestamp: pulled.timestamp, version: pulled.version });
      this.event('gateway.pulled', { ...(pulled.version !== null ? { version: pulled.version } : {}) });
      await session.loaded({ signal: this.life.signal });
    } catch (err) {
      this.event('gateway.load_failed', this.errorFields(err));
      // Shutting down: the final stop releases it.
      if (this.closing) return;
      if (!(err instanceof GatewayClientError && err.sessionEnded)) {
        // Nothing was served: give the organization back so the next start gets a working gateway.
        await session.stop({ signal: this.life.signal }).catch((e: unknown) => this.event('gateway.stop_failed', this.errorFields(e)));
      }
      await this.finishSession(session, 'load_failed');
      return;
    }
    this.lastActivity = this.client.scheduler.now();
    this.transition('serving');
    this.scheduleHeartbeat(session);
    this.schedulePush(session);
    this.scheduleIdle(session, this.idleTimeoutMs);
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
        this.event('gateway.stop_deferred', this.errorFields(err));
        this.lastActivity = this.client.scheduler.now();
        this.transition('serving');
        this.scheduleIdle(session, this.idleTimeoutMs);
        return;
      }
      this.event('gateway.session_ended', { reason: 'revoked', ...this.errorFields(err) });
    }
    await this.finishSession(session, 'idle');
  }

  private async revoked(session: GatewaySession, err: unknown): Promise<void> {
    if (this.session !== session || this.closing) return;
    this.event('gateway.session_ended', { reason: 'revoked', ...this.errorFields(err) });
    await this.finishSession(session, 'revoked');
  }

  /** The session is over: forget it, unload, and go back to the pool. */
  private async finishSession(session: GatewaySession, reason: UnloadReason): Promise<void> {
    if (this.session === session) {
      this.clearTimers();
      this.session = undefined;
      this.dirty = false;
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
      const timer = this.client.scheduler.setTimeout(() => ac.abort(), this.shutdownTimeoutMs);
      try {
        await this.push('shutdown', ac.signal);
        if (release) {
          const r = await session.stop({ signal: ac.signal });
          this.event('gateway.released', { reason, pool_state: r.released ? 'released' : 'already_released' });
        }
      } catch (err) {
        this.event('gateway.shutdown_incomplete', { reason, ...this.errorFields(err) });
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
    while (this.pushing) await this.pushing.catch(() => undefined);
    const session = via ?? this.session;
    if (!session || !this.dirty) return undefined;
    const seq = this.changeSeq;
    const timestamp = new Date(this.lastChange);
    const run = (async () => {
      const data = await this.hooks.snapshot();
      const r = await session.push(data, { timestamp, signal: signal ?? this.life.signal });
      if (this.changeSeq === seq) this.dirty = false;
      this.lastPush = { version: r.version, at: new Date(this.client.scheduler.now()).toISOString() };
      this.event('gateway.pushed', { reason, version: r.version });
      return r;
    })();
    this.pushing = run;
    try {
      return await run;
    } finally {
      this.pushing = undefined;
    }
  }

  private clearTimers(): void {
    for (const h of Object.values(this.timers)) if (h) this.client.scheduler.clearTimeout(h);
    this.timers = {};
  }

  private live(session: GatewaySession): boolean {
    return this.session === session && (this.current === 'serving' || this.current === 'stopping') && !this.closing;
  }

  private scheduleHeartbeat(session: GatewaySession): void {
    this.timers.heartbeat = this.client.scheduler.setTimeout(() => {
      if (!this.live(session)) return;
      void session
        .heartbeat({ retry: false, signal: this.life.signal })
        .catch((err: unknown) => {
          if (err instanceof GatewayClientError && err.sessionEnded) this.enqueue(() => this.revoked(session, err));
          else this.event('gateway.heartbeat_failed', this.errorFields(err));
        })
        .finally(() => {
          if (this.live(session)) this.scheduleHeartbeat(session);
        });
    }, this.heartbeatIntervalMs);
  }

  private schedulePush(session: GatewaySession): void {
    this.timers.push = this.client.scheduler.setTimeout(() => {
      if (!this.live(session) || this.current !== 'serving') {
        if (this.live(session)) this.schedulePush(session);
        return;
      }
      void this.push('periodic')
        .catch((err: unknown) => {
          if (err instanceof GatewayClientError && err.sessionEnded) this.enqueue(() => this.revoked(session, err));
          else this.event('gateway.push_failed', { reason: 'periodic', ...this.errorFields(err) });
        })
        .finally(() => {
          if (this.live(session)) this.schedulePush(session);
        });
    }, this.pushIntervalMs);
  }

  private scheduleIdle(session: GatewaySession, delay: number): void {
    this.timers.idle = this.client.scheduler.setTimeout(() => {
      if (this.session !== session || this.current !== 'serving') return;
      const quiet = this.client.scheduler.now() - this.lastActivity;
      if (quiet >= this.idleTimeoutMs) this.enqueue(() => this.idleStop(session));
      else this.scheduleIdle(session, this.idleTimeoutMs - quiet);
    }, delay);
  }
}
