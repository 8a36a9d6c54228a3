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
  ReconcileReport,
} from './allocator';
export { AllocatorError, RETRYABLE_CODES, SimulatedCrash, isAllocatorError } from './errors';
export type { AllocatorErrorCode } from './errors';
export type { GatewaySpec } from './inventory';
export type { GatewayState, RegisterResult } from './pool-store';
export type { NginxOptions } from './nginx-routes';
export type { PowerDnsOptions } from './powerdns-client';
export { renderOrgsConf } from './nginx-config';
export * as naming from './naming';
