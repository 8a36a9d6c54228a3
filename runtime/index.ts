/**
 * Runtime half of the project, imported by the API server (Ganymede).
 * Never imports @pulumi/* (a unit test enforces it). Published as the package
 * `@demiurge/runtime` (runtime/package.json); test-only hooks (failpoints,
 * SimulatedCrash) are its separate `./testing` entry (runtime/testing.ts).
 */
export { GatewayAllocator } from './allocator';
export type {
  Allocation,
  AllocatorLogEvent,
  AllocatorLogger,
  AllocatorMetrics,
  GatewayAllocatorOptions,
  GatewayListing,
  PoolStatus,
  ReapReport,
  ReconcileReport,
  ReleaseOptions,
  TokenHolder,
  TokenInspection,
} from './allocator';
export { AllocatorError, RETRYABLE_CODES, isAllocatorError } from './errors';
export type { AllocatorErrorCode } from './errors';
export type { PgConnectionOptions } from './pg-pool';
export type { GatewaySpec } from './inventory';
export type { GatewayState, RegisterResult } from './pool-store';
export type { NginxOptions } from './nginx-routes';
export type { PowerDnsOptions } from './powerdns-client';
export type { PowerDnsRecordsOptions } from './allocator-types';
export { renderOrgsConf } from './nginx-config';
export * as naming from './naming';
export type { UserContainerNaming } from './naming';
export { DNS_TIMING } from './naming';
// Per-organization certificates (nested naming): manager, dev-CA issuer and the shared issuer interface.
export { OrgCertificates, parseEncryptionKey } from './tls/org-certificates';
export type {
  BackgroundResult,
  IssuanceMode,
  MaintainReport,
  OrgCertificate,
  OrgCertificateEvent,
  OrgCertificateProvider,
  OrgCertificateState,
  OrgCertificateStatus,
  OrgCertificatesOptions,
} from './tls/org-certificates';
export { DevCaIssuer } from './tls/dev-ca-issuer';
export type { DevCaIssuerOptions } from './tls/dev-ca-issuer';
export type { CertificateIssuer, IssuedCertificate } from './tls/types';
// ACME (Let's Encrypt) through DNS-01 in our PowerDNS, its back-off, and the base-certificate renewal.
export { AcmeIssuer, AcmeIssueError, isAcmeIssueError } from './tls/acme-issuer';
export type { AcmeErrorKind, AcmeIssuerOptions, AcmeKeyType, ChallengeEvent } from './tls/acme-issuer';
export { DEFAULT_BACKOFF, IssuanceBackoff, parseRetryAfter } from './tls/backoff';
export type { BackoffPolicy, BackoffState } from './tls/backoff';
export { MkcertIssuer } from './tls/mkcert-issuer';
export { RenewError, renewBaseCertificate, renewalDue } from './tls/renew';
export type { RenewOptions, RenewResult, RenewalPolicy, RenewalReason } from './tls/renew';
export { OrgDataStore, serializeSnapshot } from './org-data-store';
export type { JsonValue, OrgDataSnapshot, OrgDataStoreOptions, PullResult, PushResult, PushWriter, SnapshotInfo } from './org-data-store';
export { GatewaySessions } from './gateway-sessions';
export { HostHealthMonitor, STAGE2_HEALTH_PATH, decideHostHealth, httpStage2Probe, isRemoteGatewayHost } from './host-health';
export type { GatewayProbe, HostGateway, HostHealthDecision, HostHealthOptions, HostHealthRound, HostHealthSettings } from './host-health';
// Framework-free HTTP handlers; the Express adapter is the separate entry `runtime/http/express`.
export { GatewayApi, GATEWAY_ROUTES } from './http/gateway-api';
export type { ApiRequest, ApiResponse, CollabStartPayload, GatewayApiOptions, GatewayRoute, GatewayTarget, OrganizationConfig } from './http/gateway-api';
export { GatewayApiError, STATUS_OF } from './http/api-errors';
export type { ApiErrorCode, ErrorBody } from './http/api-errors';
// The environment's runtime config file (config.json + secrets.json): what every runtime process reads.
export { DEFAULT_RUNTIME_CONFIG_PATH, RUNTIME_CONFIG_ENV, allocatorOptionsFromConfig, certificatesFromConfig, loadRuntimeConfig, runtimeConfigPath } from './config';
export type { LoadRuntimeConfigOptions, RuntimeApiConfig, RuntimeConfig, RuntimeSecrets, RuntimeTlsConfig } from './config';
// The gateway's side of the protocol (client, life-cycle agent), for the team's app-gateway; Node built-ins only.
export * from './gateway-client';
