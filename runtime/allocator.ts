import { timingSafeEqual } from 'crypto';
import type { Pool } from 'pg';
import { AllocationCertificates } from './allocation-certificates';
import { allocatorOptionsFromConfig } from './config/allocator-options';
import type { RuntimeConfig } from './config/types';
import { ActionCondition, DnsPublisher, Guard } from './dns-publisher';
import { AllocatorError, asAllocatorError, definitelyNotApplied, isAllocatorError } from './errors';
import type { GatewaySpec } from './inventory';
import { migrate as runMigrations, MigrationResult, quoteSchema } from './migrate';
import { DNS_TIMING, orgFqdn, orgWildcardFqdn, type UserContainerNaming } from './naming';
import { NginxRoutes } from './nginx-routes';
import { validateAllocatorOptions } from './options-validation';
import { ALL_STATES, conditionsHolding, GatewayState, GatewayStates } from './gateway-states';
import { GatewayRow, PoolReturn, PoolStore, RegisterResult } from './pool-store';
import { PowerDnsClient } from './powerdns-client';
import { PoolReconciler } from './pool-reconciler';
import type { ReconcileDesired } from './reconcile-plan';
import type { OrgCertificateProvider, OrgCertificateState } from './tls/org-certificates';
import { assertGatewayName, assertOrganizationId, validateInventory } from './validation';
import { hashToken, isPlausibleToken, newToken } from './tokens';
import { resolvePgPool } from './pg-pool';
import { failpointsOf, type Failpoint, type Failpoints } from './failpoints';

export type { Failpoint, AllocatorLogEvent, AllocatorLogger, GatewayAllocatorOptions, Allocation, TokenHolder, TokenInspection, ReleaseOptions, ReapReport, PoolStatus, GatewayListing, ReconcileReport, AllocatorMetrics } from './allocator-types';
import type { AllocatorLogEvent, AllocatorLogger, GatewayAllocatorOptions, Allocation, TokenHolder, TokenInspection, ReleaseOptions, ReapReport, PoolStatus, GatewayListing, ReconcileReport, AllocatorMetrics } from './allocator-types';

/** Which effects an allocation may have applied (a rollback withdraws only those). */
interface AppliedEffects {
  dns: boolean;
  route: boolean;
  cert: boolean;
}

const ALL_EFFECTS: AppliedEffects = { dns: true, route: true, cert: true };

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function defaultLogger(e: AllocatorLogEvent): void {
  process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), ...e })}\n`);
}

/**
 * Allocates pool gateways to organizations. PostgreSQL holds the state and
 * decides every transition (registered → ready → allocating → allocated →
 * releasing → ready); PowerDNS records and stage-1 nginx routes are derived
 * effects, applied idempotently and rebuilt by reconcile().
 */
export class GatewayAllocator {
  readonly envName: string;
  readonly domain: string;
  /** PostgreSQL schema of the pool tables (the API layer's stores live next to them). */
  readonly schema: string;
  private readonly pool: Pool;
  private readonly ownsPool: boolean;
  private readonly store: PoolStore;
  private readonly dns: DnsPublisher;
  private readonly routes: NginxRoutes;
  private readonly leaseMs: number;
  private readonly waitTimeoutMs: number;
  private readonly log: AllocatorLogger;
  private readonly failpoints: Failpoints | undefined;
  private readonly table: string;
  private readonly inflight = new Map<string, Promise<Allocation>>();
  /** User-container naming scheme; see GatewayAllocatorOptions.userContainerNaming. */
  readonly naming: UserContainerNaming;
  private readonly certs?: OrgCertificateProvider;
  private readonly certificates: AllocationCertificates;
  private baseConfig: Promise<void> | undefined;
  private closed = false;
  /** What reconcile() wants the effects to be (reconcile-plan). */
  private readonly desired: ReconcileDesired;
  /** Set by fromConfig: the certificate manager it created, closed with the allocator. */
  private ownedCertificates: { close(): Promise<void> } | undefined;

  constructor(opts: GatewayAllocatorOptions) {
    const { schema, naming } = validateAllocatorOptions(opts);

    this.envName = opts.envName;
    this.domain = opts.domain;
    const { pool, owned } = resolvePgPool(opts.pg, 20, 'invalid allocator options');
    this.pool = pool;
    this.ownsPool = owned;
    // An idle client's error (server restart) must not crash the host process, whoever owns the pool.
    if (!owned && typeof pool.on === 'function') pool.on('error', () => undefined);
    this.schema = schema;
    this.table = `${quoteSchema(schema)}.gateways`;
    this.store = new PoolStore(this.pool, schema);
    this.leaseMs = opts.leaseMs ?? 30_000;
    this.waitTimeoutMs = opts.waitTimeoutMs ?? 20_000;
    this.log = opts.logger === null ? () => undefined : (opts.logger ?? defaultLogger);
    this.failpoints = failpointsOf(opts);
    const guard: Guard = (query, orgs) => conditionsHolding(this.table, query, orgs);
    this.dns = new DnsPublisher(new PowerDnsClient(opts.powerdns), this.pool, {
      envName: opts.envName,
      domain: opts.domain,
      publicIp: opts.publicIp,
      ttl: opts.dnsTtl ?? DNS_TIMING.orgRecordTtlSeconds,
      naming,
    }, guard);
    this.naming = naming;
    this.desired = { envName: opts.envName, domain: opts.domain, publicIp: opts.publicIp, ttl: opts.dnsTtl ?? DNS_TIMING.orgRecordTtlSeconds, naming };
    this.certs = opts.certificates;
    this.routes = new NginxRoutes(opts.nginx, this.pool, opts.envName, opts.domain, guard, { naming, orgCertificates: !!this.certs });
    if (this.certs) {
      this.certs.attach({ pool: this.pool, schema, domain: opts.domain, logger: (e) => this.log({ env: this.envName, ...e }) });
    }
    this.certificates = new AllocationCertificates(this.certs, this.routes, this.store, this.envName, this.log);
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
    return this.pool;
  }

  // ------------------------------------------------------------ set-up

  /** Creates or upgrades the schema; idempotent and safe from several processes at once. */
  async migrate(): Promise<MigrationResult> {
    this.assertOpen();
    return this.db(() => runMigrations(this.pool, this.schema), 'migration failed');
  }

  /** Upserts the gateway inventory (the stack output `gatewayInventory`). With `prune`, retires free gateways not listed. */
  async registerGateways(inventory: GatewaySpec[], options: { prune?: boolean } = {}): Promise<RegisterResult> {
    this.assertOpen();
    const specs = validateInventory(inventory);
    const result = await this.db(() => this.store.register(specs, options.prune ?? false), 'registerGateways failed');
    this.log({ event: 'inventory.registered', env: this.envName, added: result.added.length, updated: result.updated.length, retired: result.retired.length });
    return result;
  }

  /** The gateway says it can be allocated. Returns the resulting state of each; an allocated gateway stays allocated. */
  async markReady(names: string | string[]): Promise<Record<string, GatewayState>> {
    this.assertOpen();
    const list = Array.isArray(names) ? names : [names];
    list.forEach((n) => assertGatewayName(n));
    const { changed, states } = await this.db(() => this.store.markReady(list), 'markReady failed');
    const unknown = list.filter((n) => !states.has(n));
    if (unknown.length > 0) throw new AllocatorError('UNKNOWN_GATEWAY', `unknown gateway(s): ${unknown.slice(0, 10).join(', ')}`, { unknown });
    for (const name of changed) this.log({ event: 'gateway.ready', env: this.envName, gateway: name, from: GatewayStates.registered, to: GatewayStates.ready });
    return Object.fromEntries(list.map((n) => [n, states.get(n) as GatewayState]));
  }

  // ------------------------------------------------------------ allocate / release

  /**
   * Allocates a ready gateway to an organization, publishes its DNS names and
   * stage-1 route, and resolves only once the route is live. Idempotent per
   * organization, within and across processes.
   */
  allocate(organizationId: string): Promise<Allocation> {
    try {
      this.assertOpen();
      assertOrganizationId(organizationId);
    } catch (err) {
      return Promise.reject(err);
    }
    const running = this.inflight.get(organizationId);
    if (running) return running.then((a) => ({ ...a, token: null, created: false }));
    const p = this.allocateOnce(organizationId).finally(() => this.inflight.delete(organizationId));
    this.inflight.set(organizationId, p);
    return p;
  }

  private async allocateOnce(orgId: string): Promise<Allocation> {
    await this.ensureBaseConfig();
    const deadline = Date.now() + this.waitTimeoutMs;
    for (;;) {
      const existing = await this.db(() => this.store.findByOrganization(orgId), 'pool lookup failed');
      if (existing) {
        if (existing.state === GatewayStates.allocated) return this.toAllocation(existing, null, false, await this.certificates.repair(existing));
        if (existing.leaseExpired) {
          await this.recover(existing, false);
          continue;
        }
        if (Date.now() > deadline) throw this.inProgress(orgId, existing);
        await sleep(20);
        continue;
      }
      const token = newToken();
      const outcome = await this.db(() => this.store.claim(orgId, hashToken(token), this.leaseMs), 'claim failed');
      if (outcome.kind === 'org-taken') continue; // another process claimed for this org: wait for it above
      if (outcome.kind === 'exhausted') {
        // SKIP LOCKED also skips rows that other claims hold only for an instant.
        if ((await this.db(() => this.store.countReady(), 'pool lookup failed')) > 0 && Date.now() < deadline) continue;
        throw new AllocatorError('POOL_EXHAUSTED', `no ready gateway in pool ${this.envName} for organization ${orgId}`, { organizationId: orgId });
      }
      return this.completeAllocation(outcome.row, token);
    }
  }

  private async completeAllocation(row: GatewayRow, token: string): Promise<Allocation> {
    const started = Date.now();
    const orgId = row.organizationId as string;
    const allocationId = row.allocationId as string;
    this.log({ event: 'gateway.claimed', env: this.envName, gateway: row.name, organizationId: orgId, from: GatewayStates.ready, to: GatewayStates.allocating });
    await this.failpoint('allocate.afterClaim');
    const claim: ActionCondition = { kind: 'claim', allocationId };
    // The certificate (dev CA: minted in ≈11 ms; ACME: started in the background) goes in parallel with DNS and route.
    const [dnsResult, routeResult, certResult] = await Promise.allSettled([
      // Fenced on the claim: if reconcile() took the gateway over meanwhile, these write nothing.
      this.dns.publish(orgId, claim),
      this.routes.set({ orgId, onlyIf: claim, target: { gatewayName: row.name, host: row.host, port: row.httpPort } }),
      this.certificates.ensure(orgId),
    ]);
    const applied = {
      dns: !(dnsResult.status === 'rejected' && definitelyNotApplied(dnsResult.reason)),
      route: !(routeResult.status === 'rejected' && definitelyNotApplied(routeResult.reason)),
      cert: certResult.status === 'fulfilled' ? certResult.value === 'ready' : !!this.certs,
    };
    const failed = [dnsResult, routeResult, certResult].find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      const typed = asAllocatorError(failed.reason, 'DATABASE_FAILED', 'allocation failed');
      await this.rollback(row, typed, applied);
      throw typed;
    }
    await this.failpoint('allocate.afterEffects');
    const done = await this.db(() => this.store.markAllocated(row.name, allocationId), 'marking allocated failed').catch(async (err: AllocatorError) => {
      await this.rollback(row, err, applied);
      throw err;
    });
    if (!done) {
      // reconcile() took over after our lease ran out; it owns the clean-up now.
      throw new AllocatorError('ALLOCATION_LOST', `allocation of ${row.name} to ${orgId} outlived its lease and was rolled back`, { organizationId: orgId });
    }
    const certificate = certResult.status === 'fulfilled' ? certResult.value : 'none';
    this.log({ event: 'gateway.allocated', env: this.envName, gateway: row.name, organizationId: orgId, from: GatewayStates.allocating, to: GatewayStates.allocated, ms: Date.now() - started, certificate });
    return this.toAllocation(row, token, true, certificate);
  }

  /** Undoes a failed allocation's effects; the gateway returns to the pool, or stays for reconcile() if undo fails too. */
  private async rollback(row: GatewayRow, cause: AllocatorError, applied: AppliedEffects): Promise<void> {
    const done = await this.undo(row, { applied, to: GatewayStates.ready, what: 'rollback failed', cause, deferredEvent: 'gateway.rollback_deferred' }).then(
      () => true,
      () => false,
    );
    if (done) this.log({ event: 'gateway.rolled_back', env: this.envName, gateway: row.name, organizationId: row.organizationId as string, from: GatewayStates.allocating, to: GatewayStates.ready, code: cause.code, message: cause.message });
  }

  /**
   * Withdraws DNS and route, returns the gateway to the pool. A second release is
   * NOT_ALLOCATED, and so is a release whose `allocationId`/`silentForMs` condition no longer holds.
   */
  async release(organizationId: string, options: ReleaseOptions = {}): Promise<{ name: string; organizationId: string }> {
    this.assertOpen();
    assertOrganizationId(organizationId);
    if (options.allocationId !== undefined && !/^\d{1,19}$/.test(options.allocationId)) throw new AllocatorError('INVALID_GATEWAY', 'allocationId must be a decimal integer');
    if (options.silentForMs !== undefined && !(Number.isFinite(options.silentForMs) && options.silentForMs >= 0)) throw new AllocatorError('INVALID_CONFIG', 'silentForMs must be a non-negative number');
    const conditional = options.allocationId !== undefined || options.silentForMs !== undefined;
    await this.ensureBaseConfig();
    const deadline = Date.now() + this.waitTimeoutMs;
    for (;;) {
      const row = await this.db(() => this.store.findByOrganization(organizationId), 'pool lookup failed');
      if (!row) throw new AllocatorError('NOT_ALLOCATED', `organization ${organizationId} holds no gateway in pool ${this.envName}`, { organizationId });
      if (conditional && options.allocationId !== undefined && row.allocationId !== options.allocationId) {
        throw new AllocatorError('NOT_ALLOCATED', `allocation ${options.allocationId} of organization ${organizationId} has ended`, { organizationId, conditionFailed: true });
      }
      if (row.state === GatewayStates.allocated) {
        const cond = { allocationId: options.allocationId, silentForMs: options.silentForMs };
        const begun = await this.db(() => this.store.beginRelease(organizationId, this.leaseMs, cond), 'release failed');
        if (!begun) {
          if (conditional) throw new AllocatorError('NOT_ALLOCATED', `organization ${organizationId}: release condition no longer holds`, { organizationId, conditionFailed: true });
          continue;
        }
        return this.completeRelease(begun, options.quarantine ? GatewayStates.registered : GatewayStates.ready);
      }
      if (row.leaseExpired) {
        await this.recover(row, false);
        return { name: row.name, organizationId };
      }
      if (Date.now() > deadline) throw this.inProgress(organizationId, row);
      await sleep(20);
    }
  }

  private async completeRelease(row: GatewayRow, to: PoolReturn): Promise<{ name: string; organizationId: string }> {
    const started = Date.now();
    const orgId = row.organizationId as string;
    this.log({ event: 'gateway.releasing', env: this.envName, gateway: row.name, organizationId: orgId, from: GatewayStates.allocated, to: GatewayStates.releasing });
    await this.failpoint('release.afterBegin');
    await this.undo(row, { applied: ALL_EFFECTS, to, what: 'release failed', deferredEvent: 'gateway.release_deferred', afterEffects: 'release.afterEffects' });
    this.log({ event: 'gateway.released', env: this.envName, gateway: row.name, organizationId: orgId, from: GatewayStates.releasing, to, ms: Date.now() - started });
    return { name: row.name, organizationId: orgId };
  }

  // ------------------------------------------------------------ tokens, heartbeats

  /** Resolves an allocation-scoped gateway token to its allocation, or undefined if unknown or released. */
  async verifyToken(token: string): Promise<TokenHolder | undefined> {
    const found = await this.inspectToken(token);
    return found.status === 'valid' ? found.holder : undefined;
  }

  /** Like verifyToken, but tells a token of a released allocation (kept for a week) from an unknown one. */
  async inspectToken(token: string): Promise<TokenInspection> {
    this.assertOpen();
    if (!isPlausibleToken(token)) return { status: 'unknown' };
    const hash = hashToken(token);
    const row = await this.db(() => this.store.findByTokenHash(hash), 'token lookup failed');
    if (row) return { status: 'valid', holder: { gateway: row.name, organizationId: row.organizationId as string, allocationId: row.allocationId as string } };
    const retired = await this.db(() => this.store.findRetiredToken(hash), 'token lookup failed');
    return retired ? { status: 'retired', gateway: retired.gateway, organizationId: retired.organizationId } : { status: 'unknown' };
  }

  /**
   * Gives each gateway its registration token (the stack's per-gateway
   * GATEWAY_TOKEN secret), stored hashed; `verifyRegistration` checks it on /gateway/ready.
   */
  async setRegistrationTokens(tokens: Record<string, string>): Promise<void> {
    this.assertOpen();
    const entries = Object.entries(tokens);
    const problems: string[] = [];
    for (const [name, token] of entries) {
      try {
        assertGatewayName(name);
      } catch {
        problems.push(`${JSON.stringify(name.slice(0, 60))} is not a gateway name`);
      }
      if (!isPlausibleToken(token)) problems.push(`token of ${name.slice(0, 60)} must be a string of 16..200 characters`);
    }
    if (problems.length > 0) throw new AllocatorError('INVALID_GATEWAY', `invalid registration tokens: ${problems.slice(0, 10).join('; ')}`, { problems });
    const unknown = await this.db(() => this.store.setRegistrationHashes(entries.map(([name, token]) => ({ name, hash: hashToken(token) }))), 'storing registration tokens failed');
    if (unknown.length > 0) throw new AllocatorError('UNKNOWN_GATEWAY', `registration tokens for unknown gateway(s): ${unknown.slice(0, 10).join(', ')}`, { unknown });
  }

  /** True when `token` is the registration token stored for gateway `name` (constant-time comparison). */
  async verifyRegistration(name: string, token: string): Promise<boolean> {
    this.assertOpen();
    if (typeof name !== 'string' || !isPlausibleToken(token)) return false;
    try {
      assertGatewayName(name);
    } catch {
      return false;
    }
    const found = await this.db(() => this.store.registrationHash(name), 'registration lookup failed');
    if (!found?.hash || found.state === GatewayStates.retired) return false;
    return timingSafeEqual(found.hash, hashToken(token));
  }

  /** Issues a new allocation token for an allocated organization (the previous one stops working). */
  async rotateToken(organizationId: string, options: { allocationId?: string } = {}): Promise<string> {
    this.assertOpen();
    assertOrganizationId(organizationId);
    const token = newToken();
    const row = await this.db(() => this.store.rotateToken(organizationId, hashToken(token), options.allocationId), 'token rotation failed');
    if (!row) throw new AllocatorError('NOT_ALLOCATED', `organization ${organizationId} holds no allocated gateway`, { organizationId });
    return token;
  }

  async heartbeat(gatewayName: string): Promise<void> {
    this.assertOpen();
    assertGatewayName(gatewayName);
    if (!(await this.db(() => this.store.heartbeat(gatewayName), 'heartbeat failed'))) {
      throw new AllocatorError('NOT_ALLOCATED', `gateway ${gatewayName} is not allocated`, { gateway: gatewayName });
    }
  }

  /**
   * Releases allocated gateways that have been silent (no heartbeat, no
   * allocation) for longer than maxSilenceMs: they crashed without calling stop.
   * Each release is fenced on the allocation and re-checks the silence in the
   * same statement, so a gateway that speaks up in between keeps its
   * organization; a push in flight holds the gateway's row and commits before
   * the release starts, so acknowledged data is never cut off.
   */
  async reapStale(maxSilenceMs: number): Promise<ReapReport> {
    this.assertOpen();
    if (!Number.isFinite(maxSilenceMs) || maxSilenceMs < 0) throw new AllocatorError('INVALID_CONFIG', 'maxSilenceMs must be a non-negative number');
    const report: ReapReport = { released: [], revived: [], errors: [] };
    const silent = await this.db(() => this.store.findSilent(maxSilenceMs), 'lookup failed');
    for (const row of silent) {
      const orgId = row.organizationId as string;
      try {
        await this.release(orgId, { allocationId: row.allocationId as string, silentForMs: maxSilenceMs });
        report.released.push({ gateway: row.name, organizationId: orgId, silentSince: (row.lastHeartbeatAt ?? row.stateSince).toISOString() });
        this.log({ event: 'gateway.reaped', env: this.envName, gateway: row.name, organizationId: orgId });
      } catch (err) {
        if (isAllocatorError(err, 'NOT_ALLOCATED')) {
          report.revived.push(row.name);
          continue;
        }
        const e = asAllocatorError(err, 'DATABASE_FAILED', 'reap failed');
        report.errors.push({ gateway: row.name, organizationId: orgId, code: e.code, message: e.message });
      }
    }
    // Retired tokens only serve to recognise a late second stop; a week is plenty.
    await this.store.forgetRetiredTokens(7 * 24 * 3600 * 1000).catch(() => undefined);
    return report;
  }

  /** Allocated gateways silent for longer than maxSilenceMs (heartbeat or allocation time). */
  async findSilent(maxSilenceMs: number): Promise<GatewayListing[]> {
    this.assertOpen();
    return (await this.db(() => this.store.findSilent(maxSilenceMs), 'lookup failed')).map(toListing);
  }

  /** The current allocation of an organization, if it holds an allocated gateway. */
  async getAllocation(organizationId: string): Promise<Allocation | undefined> {
    this.assertOpen();
    assertOrganizationId(organizationId);
    const row = await this.db(() => this.store.findByOrganization(organizationId), 'pool lookup failed');
    return row && row.state === GatewayStates.allocated ? this.toAllocation(row, null, false, await this.certificates.state(organizationId)) : undefined;
  }

  // ------------------------------------------------------------ inspection

  async status(): Promise<PoolStatus> {
    this.assertOpen();
    const rows = await this.db(() => this.store.list(), 'status failed');
    const byState = Object.fromEntries(ALL_STATES.map((st) => [st, 0])) as Record<GatewayState, number>;
    rows.forEach((r) => (byState[r.state] += 1));
    return { envName: this.envName, total: rows.length - byState.retired, byState, allocatedOrganizations: byState.allocated };
  }

  async list(): Promise<GatewayListing[]> {
    this.assertOpen();
    return (await this.db(() => this.store.list(), 'list failed')).map(toListing);
  }

  metrics(): AllocatorMetrics {
    return {
      sqlRoundTrips: this.store.roundTrips,
      dnsPatches: this.dns.patches,
      nginxTests: this.routes.tests,
      nginxReloads: this.routes.reloads,
      nginxRouteMs: this.routes.routeMs,
    };
  }

  // ------------------------------------------------------------ reconcile

  /**
   * Brings PostgreSQL, PowerDNS and nginx back into agreement: finishes or
   * rolls back operations whose owner died (lease expired; `force` also takes
   * live ones — only when no other allocator runs), re-publishes missing DNS
   * and routes of allocated organizations, and removes owned records and
   * route files of organizations that hold no gateway. Never touches records
   * or files it does not own.
   */
  async reconcile(options: { force?: boolean } = {}): Promise<ReconcileReport> {
    this.assertOpen();
    await this.ensureBaseConfig();
    return new PoolReconciler({
      store: this.store,
      dns: this.dns,
      routes: this.routes,
      certs: this.certs,
      desired: this.desired,
      log: this.log,
      recover: (row, force) => this.recover(row, force),
    }).run(options.force ?? false);
  }

  /** Waits for in-flight batches, then closes the pg pool if the allocator created it. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Background certificate results and retries are ignored from now on, as before any close.
    this.certificates.close();
    await Promise.allSettled([...this.inflight.values()]);
    await Promise.all([this.dns.idle(), this.routes.idle()]);
    await this.ownedCertificates?.close();
    if (this.ownsPool) await this.pool.end();
  }

  // ------------------------------------------------------------ internals

  /**
   * Takes over a transitional row whose owner is gone and drives it to ready:
   * for an interrupted allocation that is a rollback, for an interrupted
   * release it is the rest of the release; both withdraw DNS and route.
   */
  private async recover(row: GatewayRow, force: boolean): Promise<boolean> {
    const taken = await this.db(() => this.store.takeOver(row.name, row.allocationId as string, this.leaseMs, force), 'take-over failed');
    if (!taken) return false;
    const orgId = taken.organizationId as string;
    await this.undo(taken, { applied: ALL_EFFECTS, to: GatewayStates.ready, what: 'recovery failed' });
    this.log({ event: 'gateway.recovered', env: this.envName, gateway: taken.name, organizationId: orgId, from: taken.state, to: GatewayStates.ready });
    return true;
  }

  /**
   * THE undo path, shared by a failed allocation (rollback), a release and a
   * recovery: withdraws the effects that may have been applied, then returns
   * the gateway to the pool (`to`). If either fails, the lease is ended with
   * the reason (`cause`, else the failure) so reconcile() takes over at once,
   * and the failure is thrown. A failpoint's throw (SimulatedCrash) skips it all, like a dead process.
   */
  private async undo(row: GatewayRow, o: { applied: AppliedEffects; to: PoolReturn; what: string; cause?: AllocatorError; deferredEvent?: string; afterEffects?: Failpoint }): Promise<void> {
    const orgId = row.organizationId as string;
    const abandon = async (err: unknown): Promise<never> => {
      const typed = asAllocatorError(err, 'DATABASE_FAILED', o.what);
      const reason = o.cause ?? typed;
      await this.store.abandon(row.name, row.allocationId as string, `${reason.code}: ${reason.message}`).catch(() => undefined);
      if (o.deferredEvent) {
        const message = o.cause ? `undo failed, reconcile() will finish: ${typed.message}` : typed.message;
        this.log({ event: o.deferredEvent, env: this.envName, gateway: row.name, organizationId: orgId, code: reason.code, message });
      }
      throw typed;
    };
    await this.effects([
      o.applied.dns ? this.dns.withdraw(orgId) : Promise.resolve(),
      o.applied.route ? this.routes.set({ orgId }) : Promise.resolve(),
      // Only the file (a private key): the certificate stays in PostgreSQL for the organization's next allocation.
      o.applied.cert ? this.routes.setCertificate({ orgId }) : Promise.resolve(),
    ]).catch(abandon);
    if (o.afterEffects) await this.failpoint(o.afterEffects);
    await this.store.returnToPool(row.name, row.allocationId as string, o.to).catch(abandon);
  }

  /** Waits for all effects; reports the first failure (DNS before nginx) once all have settled. */
  private async effects(ops: Array<Promise<void>>): Promise<void> {
    const results = await Promise.allSettled(ops);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  private ensureBaseConfig(): Promise<void> {
    if (!this.baseConfig) {
      this.baseConfig = this.routes.ensureBaseConfig().then(
        () => undefined,
        (err: unknown) => {
          this.baseConfig = undefined;
          throw asAllocatorError(err, 'NGINX_FAILED', 'stage-1 base configuration failed');
        },
      );
    }
    return this.baseConfig;
  }

  private async failpoint(point: Failpoint): Promise<void> {
    const hook = this.failpoints?.[point];
    if (hook) await hook();
  }

  private async db<T>(fn: () => Promise<T>, what: string): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw asAllocatorError(err, 'DATABASE_FAILED', what);
    }
  }

  private inProgress(orgId: string, row: GatewayRow): AllocatorError {
    return new AllocatorError('ALLOCATION_IN_PROGRESS', `gateway ${row.name} is ${row.state} for organization ${orgId}; retry shortly`, {
      organizationId: orgId,
      gateway: row.name,
      state: row.state,
    });
  }

  private assertOpen(): void {
    if (this.closed) throw new AllocatorError('CLOSED', 'the allocator is closed');
  }

  private toAllocation(row: GatewayRow, token: string | null, created: boolean, certificate: OrgCertificateState): Allocation {
    const orgId = row.organizationId as string;
    return {
      name: row.name,
      host: row.host,
      httpPort: row.httpPort,
      vpnPort: row.vpnPort,
      organizationId: orgId,
      allocationId: row.allocationId as string,
      fqdn: orgFqdn(orgId, this.domain),
      wildcardFqdn: orgWildcardFqdn(orgId, this.domain),
      token,
      created,
      certificate,
    };
  }
}

function toListing(r: GatewayRow): GatewayListing {
  return {
    name: r.name,
    host: r.host,
    httpPort: r.httpPort,
    vpnPort: r.vpnPort,
    state: r.state,
    organizationId: r.organizationId,
    since: r.stateSince.toISOString(),
    lastHeartbeatAt: r.lastHeartbeatAt ? r.lastHeartbeatAt.toISOString() : null,
    leaseExpired: r.leaseExpired,
    lastError: r.lastError,
  };
}
