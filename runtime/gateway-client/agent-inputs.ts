/**
 * What GatewayAgent takes from outside, checked before it acts: its periods,
 * the signals it shuts down on, and POST /collab/start's body. Node built-ins only.
 */
import { isCanonicalOrgId } from '../naming';
import type { AgentEvent, AgentSignal, GatewayAgentOptions, SignalSource } from './agent-types';
import { isBearerToken } from './client';
import { GatewayClientError } from './errors';

function positiveMs(name: string, v: number | undefined, dflt: number, max = Infinity): number {
  const value = v ?? dflt;
  if (!(Number.isFinite(value) && value > 0 && value <= max)) throw new GatewayClientError('INVALID_ARGUMENT', `${name} must be a positive number of milliseconds${max < Infinity ? ` ≤ ${max}` : ''}`);
  return value;
}

/** The agent's periods, validated (a heartbeat at least every 30 s: the API's reaper expects one). */
export function intervalsOf(opts: GatewayAgentOptions) {
  return {
    idleTimeoutMs: positiveMs('idleTimeoutMs', opts.idleTimeoutMs, 300_000),
    pushIntervalMs: positiveMs('pushIntervalMs', opts.pushIntervalMs, 60_000),
    heartbeatIntervalMs: positiveMs('heartbeatIntervalMs', opts.heartbeatIntervalMs, 20_000, 30_000),
    registrationRetryMs: positiveMs('registrationRetryMs', opts.registrationRetryMs, 30_000),
    shutdownTimeoutMs: positiveMs('shutdownTimeoutMs', opts.shutdownTimeoutMs, 6_000),
  };
}

/** Calls `handle` on SIGTERM and SIGINT from `source`; the function returned removes the handlers. */
export function onSignals(source: SignalSource | null | undefined, handle: (sig: AgentSignal) => void): () => void {
  const handlers: Array<[AgentSignal, () => void]> = [];
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    if (!source) break;
    const handler = (): void => handle(sig);
    source.on(sig, handler);
    handlers.push([sig, handler]);
  }
  return () => {
    for (const [sig, handler] of handlers) source?.removeListener(sig, handler);
    handlers.length = 0;
  };
}

/** POST /collab/start's body, validated so the app answers 4xx at once; the handshake token and the organization it names. */
export function parseHandshake(payload: unknown, gatewayId: string): { token: string; orgHint: string } {
  const refuse = (code: 'INVALID_ARGUMENT' | 'FORBIDDEN', msg: string): never => {
    throw new GatewayClientError(code, msg, { status: code === 'FORBIDDEN' ? 403 : 400, retryable: false });
  };
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) refuse('INVALID_ARGUMENT', 'the body must be a JSON object');
  const p = payload as Record<string, unknown>;
  if (!isBearerToken(p.handshake_token)) refuse('INVALID_ARGUMENT', 'handshake_token must be a token string');
  if (!isCanonicalOrgId(p.organization_id)) refuse('INVALID_ARGUMENT', 'organization_id must be a canonical lowercase UUID');
  if (p.gateway_id !== undefined && p.gateway_id !== gatewayId) refuse('FORBIDDEN', 'gateway_id is not this gateway');
  return { token: p.handshake_token as string, orgHint: p.organization_id as string };
}

export function busy(message: string): GatewayClientError {
  return new GatewayClientError('BUSY', message, { status: 503, retryable: true });
}

/** The log fields of a failure (code, status, message; never a token). */
export function errorFields(err: unknown): Partial<AgentEvent> {
  return err instanceof GatewayClientError ? { code: err.code, status: err.status, message: err.message } : { code: 'INTERNAL', message: err instanceof Error ? err.message : String(err) };
}
