/**
 * The gateway's side of the API server's /gateway endpoints, for the team's
 * app-gateway and the image's default app. Node built-ins only (bundled into
 * gateways): the global fetch, no axios, no pg.
 */
export { GatewayClient, GatewaySession, isBearerToken } from './client';
export type { CallSignal, GatewayClientOptions, OrgSnapshot, PulledSnapshot, PushReceipt, ReadyResult, StopResult } from './client';
export { GatewayAgent } from './agent';
export type { AgentEvent, AgentHandOff, AgentLogger, AgentSignal, AgentState, AgentStatus, GatewayAgentOptions, LoadedOrganization, OrganizationHooks, SignalSource, UnloadReason } from './agent';
export { GatewayClientError, isApiErrorCode, isGatewayClientError, SESSION_ENDED_CODES } from './errors';
export type { ClientOnlyCode, GatewayClientErrorCode, GatewayClientErrorDetails } from './errors';
export { DEFAULT_RETRY, backoffDelay } from './backoff';
export type { RetryPolicy } from './backoff';
export { ManualScheduler, realScheduler, sleep } from './scheduler';
export type { Scheduler, TimerHandle } from './scheduler';
export type { FetchLike, GatewayClientEvent, GatewayClientLogger } from './transport';
