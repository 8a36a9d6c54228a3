import type { Pool } from 'pg';
import { AllocationCertificates } from './allocation-certificates';
import type { AllocatorLogEvent, AllocatorLogger, GatewayAllocatorOptions } from './allocator-types';
import { DnsPublisher, Guard } from './dns-publisher';
import { AllocatorError, asAllocatorError } from './errors';
import { failpointsOf, type Failpoint, type Failpoints } from './failpoints';
import { conditionsHolding } from './gateway-states';
import { quoteSchema } from './migrate';
import { DNS_TIMING, type UserContainerNaming } from './naming';
import { NginxRoutes } from './nginx-routes';
import { validateAllocatorOptions } from './options-validation';
import { resolvePgPool } from './pg-pool';
import { PoolStore } from './pool-store';
import { PowerDnsClient } from './powerdns-client';
import { PowerDnsTables } from './powerdns-tables';
import type { ReconcileDesired } from './reconcile-plan';
import type { OrgCertificateProvider } from './tls/org-certificates';

/** Whether the allocator is closed; every public call but close() and metrics() checks it first. */
export class OpenFlag {
  private closed = false;

  /** Marks the allocator closed; false if it already was. */
  close(): boolean {
    if (this.closed) return false;
    this.closed = true;
    return true;
  }

  assertOpen(): void {
    if (this.closed) throw new AllocatorError('CLOSED', 'the allocator is closed');
  }
}

/**
 * What the allocator's modules (lifecycle, tokens, reaper, reconciler) work
 * with: the validated settings and the stores and effect writers built from
 * them. Built once per allocator by wireAllocator.
 */
export interface AllocatorContext {
  readonly envName: string;
  readonly domain: string;
  readonly schema: string;
  readonly naming: UserContainerNaming;
  readonly pool: Pool;
  /** True when the allocator created the pool (and so ends it on close). */
  readonly ownsPool: boolean;
  /** PowerDNS's database, when records are written to its tables (owned: ended on close). */
  readonly pdnsPool: { pool: Pool; owned: boolean } | undefined;
  readonly store: PoolStore;
  readonly dns: DnsPublisher;
  readonly routes: NginxRoutes;
  readonly certs: OrgCertificateProvider | undefined;
  readonly certificates: AllocationCertificates;
  /** What reconcile() wants the effects to be (reconcile-plan). */
  readonly desired: ReconcileDesired;
  readonly leaseMs: number;
  readonly waitTimeoutMs: number;
  readonly log: AllocatorLogger;
  readonly failpoints: Failpoints | undefined;
  readonly open: OpenFlag;
}

function defaultLogger(e: AllocatorLogEvent): void {
  process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), ...e })}\n`);
}

/** Validates the options (nothing is created if they are wrong), then builds the pool, store, DNS, routes and certificates. */
export function wireAllocator(opts: GatewayAllocatorOptions): AllocatorContext {
  const { schema, naming } = validateAllocatorOptions(opts);
  const { pool, owned } = resolvePgPool(opts.pg, 20, 'invalid allocator options');
  // An idle client's error (server restart) must not crash the host process, whoever owns the pool.
  if (!owned && typeof pool.on === 'function') pool.on('error', () => undefined);
  const envName = opts.envName;
  const log = opts.logger === null ? () => undefined : (opts.logger ?? defaultLogger);
  const table = `${quoteSchema(schema)}.gateways`;
  const guard: Guard = (query, orgs) => conditionsHolding(table, query, orgs);
  const desired: ReconcileDesired = { envName, domain: opts.domain, publicIp: opts.publicIp, ttl: opts.dnsTtl ?? DNS_TIMING.orgRecordTtlSeconds, naming };
  const store = new PoolStore(pool, schema);
  const { database, ...api } = opts.powerdns;
  // Kept small: one batch statement at a time (under the zone lock) plus reconcile's listing.
  // A statement that cannot finish (PowerDNS's database stuck) must not hold the zone lock forever: PostgreSQL
  // cancels it, and rolls it back, after the same time a PATCH may take (DNS_FAILED, nothing written).
  const pdnsPool = database === undefined ? undefined : resolvePgPool(database, 4, 'invalid allocator options (powerdns.database)', { statementTimeoutMs: api.timeoutMs ?? 5000 });
  if (pdnsPool && !pdnsPool.owned && typeof pdnsPool.pool.on === 'function') pdnsPool.pool.on('error', () => undefined);
  const tables = pdnsPool ? new PowerDnsTables(pdnsPool.pool, api.zone) : undefined;
  const dns = new DnsPublisher(new PowerDnsClient(api), pool, { ...desired }, guard, tables);
  const certs = opts.certificates;
  const routes = new NginxRoutes(opts.nginx, pool, envName, opts.domain, guard, { naming, orgCertificates: !!certs });
  certs?.attach({ pool, schema, domain: opts.domain, logger: (e) => log({ env: envName, ...e }) });
  return {
    envName,
    domain: opts.domain,
    schema,
    naming,
    pool,
    ownsPool: owned,
    pdnsPool,
    store,
    dns,
    routes,
    certs,
    certificates: new AllocationCertificates(certs, routes, store, envName, log),
    desired,
    leaseMs: opts.leaseMs ?? 30_000,
    waitTimeoutMs: opts.waitTimeoutMs ?? 20_000,
    log,
    failpoints: failpointsOf(opts),
    open: new OpenFlag(),
  };
}

/** Runs a store call; an untyped failure becomes DATABASE_FAILED `what: reason`. */
export async function db<T>(fn: () => Promise<T>, what: string): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw asAllocatorError(err, 'DATABASE_FAILED', what);
  }
}

/** Runs the test hook set for `point`, if any (runtime/testing.ts: withFailpoints). */
export async function failpoint(ctx: Pick<AllocatorContext, 'failpoints'>, point: Failpoint): Promise<void> {
  const hook = ctx.failpoints?.[point];
  if (hook) await hook();
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
