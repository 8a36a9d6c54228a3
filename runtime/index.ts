/**
 * Runtime half of the project, imported by the API server (Ganymede).
 * Never imports @pulumi/* (a unit test enforces it).
 */
export { GatewayAllocator } from './allocator';
export type {
  Allocation,
  AllocatorLogEvent,
  AllocatorLogger,
  AllocatorMetrics,
  Failpoint,
  GatewayAllocatorOptions,
  GatewayListing,
  PoolStatus,
  ReapReport,
  ReconcileReport,
  ReleaseOptions,
  TokenHolder,
  TokenInspection,
} from './allocator';
export { AllocatorError, RETRYABLE_CODES, SimulatedCrash, isAllocatorError } from './errors';
export type { AllocatorErrorCode } from './errors';
export type { GatewaySpec } from './inventory';
export type { GatewayState, RegisterResult } from './pool-store';
export type { NginxOptions } from './nginx-routes';
export type { PowerDnsOptions } from './powerdns-client';
export { renderOrgsConf } from './nginx-config';
export * as naming from './naming';
export { OrgDataStore, serializeSnapshot } from './org-data-store';
export type { JsonValue, OrgDataSnapshot, OrgDataStoreOptions, PullResult, PushResult, PushWriter, SnapshotInfo } from './org-data-store';
export { GatewaySessions } from './gateway-sessions';
// Framework-free HTTP handlers; the Express adapter is the separate entry `runtime/http/express`.
export { GatewayApi, GATEWAY_ROUTES } from './http/gateway-api';
export type { ApiRequest, ApiResponse, CollabStartPayload, GatewayApiOptions, GatewayRoute, GatewayTarget, OrganizationConfig } from './http/gateway-api';
export { GatewayApiError, STATUS_OF } from './http/api-errors';
export type { ApiErrorCode, ErrorBody } from './http/api-errors';
