/** The allocator's public types (re-exported by allocator.ts and runtime/index.ts). */
import type { Pool } from 'pg';
import type { PgConnectionOptions } from './pg-pool';
import type { AllocatorErrorCode } from './errors';
import type { GatewayState } from './gateway-states';
import type { GatewaySpec } from './inventory';
import type { UserContainerNaming } from './naming';
import type { NginxOptions } from './nginx-routes';
import type { PowerDnsOptions } from './powerdns-client';
import type { OrgCertificateProvider, OrgCertificateState } from './tls/org-certificates';

export type { Failpoint } from './failpoints';

export interface AllocatorLogEvent {
  event: string;
  env: string;
  gateway?: string;
  organizationId?: string;
  from?: GatewayState;
  to?: GatewayState;
  ms?: number;
  code?: AllocatorErrorCode;
  message?: string;
  [key: string]: unknown;
}

export type AllocatorLogger = (event: AllocatorLogEvent) => void;

/**
 * The PowerDNS HTTP API (zone, cache purge; PATCHes when `database` is not given) and,
 * optionally, PowerDNS's own gpgsql database.
 */
export interface PowerDnsRecordsOptions extends PowerDnsOptions {
  /**
   * PowerDNS's gpgsql database (a role that may write `records` and `comments`, e.g. the
   * `pdns` role). Given, each DNS batch is one statement in its tables plus one zone-wide
   * cache purge through the API, instead of a PATCH (docs/runtime.md, "DNS records").
   * A connection string (the allocator owns and closes the pool) or the caller's pg.Pool.
   */
  database?: PgConnectionOptions | Pool;
}

export interface GatewayAllocatorOptions {
  envName: string;
  domain: string;
  /** Address every organization name resolves to: the stage-1 nginx host. */
  publicIp: string;
  /**
   * A connection string (the allocator owns and closes the pool) or an existing pg.Pool from any pg 8.x
   * (used as given, recognised by its query/connect/end functions; the caller owns and ends it).
   */
  pg: PgConnectionOptions | Pool;
  powerdns: PowerDnsRecordsOptions;
  nginx: NginxOptions;
  /** PostgreSQL schema of the pool tables; default `gateway_pool`. */
  schema?: string;
  /** TTL of published A records; default DNS_TIMING.orgRecordTtlSeconds (3 s: a release disappears from caches that fast). */
  dnsTtl?: number;
  /** How long an allocate/release may hold a gateway in a transitional state before reconcile() may take over; default 30 s. */
  leaseMs?: number;
  /** How long allocate/release wait for another process's in-flight operation on the same organization; default 20 s. */
  waitTimeoutMs?: number;
  /** One structured event per state change; default: JSON lines on stderr. `null` silences. */
  logger?: AllocatorLogger | null;
  /**
   * How user containers are named (naming.ts). `nested` (default):
   * `uc-<id>.org-<uuid>.<domain>`, which only a per-organization certificate
   * covers (`certificates`). `flat`: `uc-<id>--org-<org>.<domain>`, covered by
   * the base `*.<domain>` certificate; DNS then relies on the environment's
   * `*.<domain>` record (`demiurge:dnsWildcard true`) and no org wildcard is published.
   */
  userContainerNaming?: UserContainerNaming;
  /**
   * Per-organization certificates (nested naming only), e.g. an
   * OrgCertificates with the dev CA (issued before allocate resolves) or ACME
   * (issued in the background; the allocation reports `pending`). The
   * allocator supplies its pool, schema, domain and logger to it.
   */
  certificates?: OrgCertificateProvider;
}

export interface Allocation {
  name: string;
  host: string;
  httpPort: number;
  vpnPort: number;
  organizationId: string;
  /** Fencing id of this allocation: every allocation of any gateway gets a new one. */
  allocationId: string;
  fqdn: string;
  wildcardFqdn: string;
  /** Allocation-scoped gateway token; only the call that created the allocation receives it (it is stored hashed). */
  token: string | null;
  /** True for the call that created the allocation, false when an existing one was returned. */
  created: boolean;
  /**
   * The organization's own certificate: `ready` (served for org-<uuid> and
   * *.org-<uuid>), `pending` (being issued; the base certificate is served,
   * covering org-<uuid>.<domain> only), `none` (no per-org certificates: flat
   * naming or no `certificates` option).
   */
  certificate: OrgCertificateState;
}

/** Who a valid gateway token belongs to. */
export interface TokenHolder {
  gateway: string;
  organizationId: string;
  allocationId: string;
}

export type TokenInspection =
  | { status: 'valid'; holder: TokenHolder }
  /** The token's allocation was released: the gateway's second stop is harmless, everything else is refused. */
  | { status: 'retired'; gateway: string; organizationId: string }
  | { status: 'unknown' };

export interface ReleaseOptions {
  /** Release only this allocation (a fence against releasing a newer allocation of the same organization). */
  allocationId?: string;
  /** Release only if the gateway has been silent (no heartbeat) for this long; checked atomically. */
  silentForMs?: number;
  /** Return the gateway as `registered` instead of `ready`: it is not handed out again until it calls /gateway/ready. */
  quarantine?: boolean;
}

export interface ReapReport {
  /** Silent gateways released, with the organization they held. */
  released: Array<{ gateway: string; organizationId: string; silentSince: string }>;
  /** Silent at first sight, but they spoke (or were released) before the release; left alone. */
  revived: string[];
  errors: Array<{ gateway: string; organizationId: string; code: AllocatorErrorCode; message: string }>;
}

export interface PoolStatus {
  envName: string;
  total: number;
  byState: Record<GatewayState, number>;
  allocatedOrganizations: number;
}

export interface GatewayListing extends GatewaySpec {
  state: GatewayState;
  organizationId: string | null;
  since: string;
  lastHeartbeatAt: string | null;
  leaseExpired: boolean;
  lastError: string | null;
}

export interface ReconcileReport {
  /** Transitional gateways whose owner was gone: allocations rolled back / releases finished. */
  recovered: Array<{ gateway: string; organizationId: string; was: GatewayState }>;
  dnsRepaired: string[];
  routesRepaired: string[];
  dnsOrphansRemoved: string[];
  routeOrphansRemoved: string[];
  /** Certificate bundles (re)written or removed (expired, undecryptable) for allocated organizations. */
  certificatesRepaired: string[];
  certificateOrphansRemoved: string[];
  /** Temp files (route or bundle writes) left by a writer killed before its rename, removed: file names. */
  tempFilesRemoved: string[];
  /** Per-org certificates issued or renewed now (await mode) / orders started in the background. */
  certificatesIssued: string[];
  certificatesStarted: string[];
  /** Transitional gateways left alone because their owner's lease is still running. */
  inFlight: string[];
  errors: Array<{ gateway?: string; organizationId?: string; code: AllocatorErrorCode; message: string }>;
}

export interface AllocatorMetrics {
  sqlRoundTrips: number;
  dnsPatches: number;
  /** DNS batches written to PowerDNS's tables (powerdns.database), and the cache purges through its API. */
  dnsTableWrites: number;
  dnsCacheFlushes: number;
  nginxTests: number;
  nginxReloads: number;
  /** ms spent writing routes and confirming nginx serves them. */
  nginxRouteMs: number;
}
