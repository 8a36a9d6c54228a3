/**
 * The public types of GatewayAgent (agent.ts): its states, the app's hooks,
 * its log events, signals, options and status. Node built-ins only.
 */
import type { GatewayClient, OrgSnapshot } from './client';

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

export interface AgentStatus {
  state: AgentState;
  gatewayId: string;
  organizationId: string | null;
  dirty: boolean;
  lastPush: { version: number; at: string } | null;
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
