import type { Pool } from 'pg';
import { AllocationLifecycle } from './allocation-lifecycle';
import { db, wireAllocator, type AllocatorContext } from './allocator-context';
import { AllocatorTokens } from './allocator-tokens';
import { toAllocation, toListing } from './allocator-views';
import { allocatorOptionsFromConfig } from './config/allocator-options';
import type { RuntimeConfig } from './config/types';
import { AllocatorError } from './errors';
import { ALL_STATES, GatewayState, GatewayStates } from './gateway-states';
import type { GatewaySpec } from './inventory';
import { migrate as runMigrations, MigrationResult } from './migrate';
import type { UserContainerNaming } from './naming';
import { PoolReconciler } from './pool-reconciler';
import type { RegisterResult } from './pool-store';
import { Reaper } from './reaper';
import { assertGatewayName, assertOrganizationId, validateInventory } from './validation';

export type { Failpoint, AllocatorLogEvent, AllocatorLogger, GatewayAllocatorOptions, Allocation, TokenHolder, TokenInspection, ReleaseOptions, ReapReport, PoolStatus, GatewayListing, ReconcileReport, AllocatorMetrics } from './allocator-types';
import type { GatewayAllocatorOptions, Allocation, TokenHolder, TokenInspection, ReleaseOptions, ReapReport, PoolStatus, GatewayListing, ReconcileReport, AllocatorMetrics } from './allocator-types';

/**
 * Allocates pool gateways to organizations. PostgreSQL holds the state and
 * decides every transition (registered → ready → allocating → allocated →
 * releasing → ready); PowerDNS records and stage-1 nginx routes are derived
 * effects, applied idempotently and rebuilt by reconcile().
 *
 * A facade: the wiring is allocator-context.ts, the allocation life cycle and
 * its one undo path allocation-lifecycle.ts (decisions: undo-plan.ts), tokens
 * allocator-tokens.ts, heartbeats and reaping reaper.ts, reconcile
 * pool-reconciler.ts (plan: reconcile-plan.ts), certificates allocation-certificates.ts.
 */
export class GatewayAllocator {
  readonly envName: string;
  readonly domain: string;
  /** PostgreSQL schema of the pool tables (the API layer's stores live next to them). */
  readonly schema: string;
  /** User-container naming scheme; see GatewayAllocatorOptions.userContainerNaming. */
  readonly naming: UserContainerNaming;
  private readonly c: AllocatorContext;
  private readonly lifecycle: AllocationLifecycle;
  private readonly tokens: AllocatorTokens;
  private readonly reaper: Reaper;
  /** Set by fromConfig: the certificate manager it created, closed with the allocator. */
  private ownedCertificates: { close(): Promise<void> } | undefined;

  constructor(opts: GatewayAllocatorOptions) {
    this.c = wireAllocator(opts);
    this.envName = this.c.envName;
    this.domain = this.c.domain;
    this.schema = this.c.schema;
    this.naming = this.c.naming;
    this.lifecycle = new AllocationLifecycle(this.c);
    this.tokens = new AllocatorTokens(this.c);
    this.reaper = new Reaper(this.c, (orgId, options) => this.lifecycle.release(orgId, options));
  }

  /** An allocator for the environment's runtime config file (runtime/config: loadRuntimeConfig); `overrides` win (e.g. a logger). */
  static fromConfig(cfg: RuntimeConfig, overrides: Partial<GatewayAllocatorOptions> = {}): GatewayAllocator {
    const opts = allocatorOptionsFromConfig(cfg, overrides);
    const allocator = new GatewayAllocator(opts);
    // Certificates made from the config (not passed in) are this allocator's to close.
    if (!('certificates' in overrides)) allocator.ownedCertificates = opts.certificates as { close(): Promise<void> } | undefined;
    return allocator;
  }

  /** The allocator's pg pool, for stores that must share its transactions' tables (runtime/http). Not for general use. */
  get pgPool(): Pool {
    return this.c.pool;
  }

  // ------------------------------------------------------------ set-up

  /** Creates or upgrades the schema; idempotent and safe from several processes at once. */
  async migrate(): Promise<MigrationResult> {
    this.c.open.assertOpen();
    return db(() => runMigrations(this.c.pool, this.schema), 'migration failed');
  }

  /** Upserts the gateway inventory (the stack output `gatewayInventory`). With `prune`, retires free gateways not listed. */
  async registerGateways(inventory: GatewaySpec[], options: { prune?: boolean } = {}): Promise<RegisterResult> {
    this.c.open.assertOpen();
    const specs = validateInventory(inventory);
    const result = await db(() => this.c.store.inventory.register(specs, options.prune ?? false), 'registerGateways failed');
    this.c.log({ event: 'inventory.registered', env: this.envName, added: result.added.length, updated: result.updated.length, retired: result.retired.length });
    return result;
  }

  /** The gateway says it can be allocated. Returns the resulting state of each; an allocated gateway stays allocated. */
  async markReady(names: string | string[]): Promise<Record<string, GatewayState>> {
    this.c.open.assertOpen();
    const list = Array.isArray(names) ? names : [names];
    list.forEach((n) => assertGatewayName(n));
    const { changed, states } = await db(() => this.c.store.markReady(list), 'markReady failed');
    const unknown = list.filter((n) => !states.has(n));
    if (unknown.length > 0) throw new AllocatorError('UNKNOWN_GATEWAY', `unknown gateway(s): ${unknown.slice(0, 10).join(', ')}`, { unknown });
    for (const name of changed) this.c.log({ event: 'gateway.ready', env: this.envName, gateway: name, from: GatewayStates.registered, to: GatewayStates.ready });
    return Object.fromEntries(list.map((n) => [n, states.get(n) as GatewayState]));
  }

  // ------------------------------------------------------------ allocate / release

  /**
   * Allocates a ready gateway to an organization, publishes its DNS names and
   * stage-1 route, and resolves only once the route is live. Idempotent per
   * organization, within and across processes.
   */
  allocate(organizationId: string): Promise<Allocation> {
    return this.lifecycle.allocate(organizationId);
  }

  /**
   * Withdraws DNS and route, returns the gateway to the pool. A second release is
   * NOT_ALLOCATED, and so is a release whose `allocationId`/`silentForMs` condition no longer holds.
   */
  release(organizationId: string, options: ReleaseOptions = {}): Promise<{ name: string; organizationId: string }> {
    return this.lifecycle.release(organizationId, options);
  }

  /** The current allocation of an organization, if it holds an allocated gateway. */
  async getAllocation(organizationId: string): Promise<Allocation | undefined> {
    this.c.open.assertOpen();
    assertOrganizationId(organizationId);
    const row = await db(() => this.c.store.findByOrganization(organizationId), 'pool lookup failed');
    return row && row.state === GatewayStates.allocated ? toAllocation(row, this.domain, null, false, await this.c.certificates.state(organizationId)) : undefined;
  }

  // ------------------------------------------------------------ tokens

  /** Resolves an allocation-scoped gateway token to its allocation, or undefined if unknown or released. */
  verifyToken(token: string): Promise<TokenHolder | undefined> {
    return this.tokens.verifyToken(token);
  }

  /** Like verifyToken, but tells a token of a released allocation (kept for a week) from an unknown one. */
  inspectToken(token: string): Promise<TokenInspection> {
    return this.tokens.inspectToken(token);
  }

  /**
   * Gives each gateway its registration token (the stack's per-gateway
   * GATEWAY_TOKEN secret), stored hashed; `verifyRegistration` checks it on /gateway/ready.
   */
  setRegistrationTokens(tokens: Record<string, string>): Promise<void> {
    return this.tokens.setRegistrationTokens(tokens);
  }

  /** True when `token` is the registration token stored for gateway `name` (constant-time comparison). */
  verifyRegistration(name: string, token: string): Promise<boolean> {
    return this.tokens.verifyRegistration(name, token);
  }

  /** Issues a new allocation token for an allocated organization (the previous one stops working). */
  rotateToken(organizationId: string, options: { allocationId?: string } = {}): Promise<string> {
    return this.tokens.rotateToken(organizationId, options.allocationId);
  }

  // ------------------------------------------------------------ signs of life

  heartbeat(gatewayName: string): Promise<void> {
    return this.reaper.heartbeat(gatewayName);
  }

  /**
   * Releases allocated gateways that have been silent (no heartbeat, no
   * allocation) for longer than maxSilenceMs: they crashed without calling stop.
   * Each release is fenced on the allocation and re-checks the silence in the
   * same statement, so a gateway that speaks up in between keeps its
   * organization; a push in flight holds the gateway's row and commits before
   * the release starts, so acknowledged data is never cut off.
   */
  reapStale(maxSilenceMs: number): Promise<ReapReport> {
    return this.reaper.reapStale(maxSilenceMs);
  }

  /** Allocated gateways silent for longer than maxSilenceMs (heartbeat or allocation time). */
  findSilent(maxSilenceMs: number): Promise<GatewayListing[]> {
    return this.reaper.findSilent(maxSilenceMs);
  }

  // ------------------------------------------------------------ inspection

  async status(): Promise<PoolStatus> {
    this.c.open.assertOpen();
    const rows = await db(() => this.c.store.list(), 'status failed');
    const byState = Object.fromEntries(ALL_STATES.map((st) => [st, 0])) as Record<GatewayState, number>;
    rows.forEach((r) => (byState[r.state] += 1));
    return { envName: this.envName, total: rows.length - byState.retired, byState, allocatedOrganizations: byState.allocated };
  }

  async list(): Promise<GatewayListing[]> {
    this.c.open.assertOpen();
    return (await db(() => this.c.store.list(), 'list failed')).map(toListing);
  }

  metrics(): AllocatorMetrics {
    const { store, dns, routes } = this.c;
    return { sqlRoundTrips: store.roundTrips, dnsPatches: dns.patches, dnsTableWrites: dns.tableWrites, dnsCacheFlushes: dns.cacheFlushes, nginxTests: routes.tests, nginxReloads: routes.reloads, nginxRouteMs: routes.routeMs };
  }

  // ------------------------------------------------------------ reconcile, close

  /**
   * Brings PostgreSQL, PowerDNS and nginx back into agreement: finishes or
   * rolls back operations whose owner died (lease expired; `force` also takes
   * live ones — only when no other allocator runs), re-publishes missing DNS
   * and routes of allocated organizations, and removes owned records and
   * route files of organizations that hold no gateway. Never touches records
   * or files it does not own.
   */
  async reconcile(options: { force?: boolean } = {}): Promise<ReconcileReport> {
    this.c.open.assertOpen();
    await this.lifecycle.ensureBaseConfig();
    const { store, dns, routes, certs, desired, log } = this.c;
    return new PoolReconciler({ store, dns, routes, certs, desired, log, recover: (row, force) => this.lifecycle.recover(row, force) }).run(options.force ?? false);
  }

  /** Waits for in-flight batches, unlinks its spare route files, then closes the pg pool if the allocator created it. */
  async close(): Promise<void> {
    if (!this.c.open.close()) return;
    // Background certificate results and retries are ignored from now on, as before any close.
    this.c.certificates.close();
    await this.lifecycle.settle();
    await Promise.all([this.c.dns.idle(), this.c.routes.idle()]);
    await this.c.routes.close();
    await this.ownedCertificates?.close();
    if (this.c.ownsPool) await this.c.pool.end();
    if (this.c.pdnsPool?.owned) await this.c.pdnsPool.pool.end();
  }
}
