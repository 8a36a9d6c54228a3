/**
 * Per-organization certificates (`org-<uuid>.<domain>`, `*.org-<uuid>.<domain>`)
 * for nested user-container names, which the base `*.<domain>` certificate
 * cannot cover (a wildcard covers exactly one label).
 *
 * PostgreSQL (table `org_certificates`, migration 003) is the source of truth:
 * a certificate is issued the first time an organization is allocated, kept
 * after release and reused by later allocations while valid, and renewed when
 * less than `renewBeforeFraction` of its lifetime is left. The private key is
 * stored encrypted (AES-256-GCM, key from the options: a stack secret in a
 * deployment). The bundle files nginx reads are derived state, written by the
 * allocator (NginxRoutes) under its config lock, so reconcile() can never race
 * an allocation's write.
 *
 * Two issuance modes:
 *  - `await` (default for the dev CA, ≈11 ms): obtain() issues before it
 *    resolves, so an allocation is answered with its certificate in place;
 *  - `background` (default for ACME, seconds to minutes): obtain() returns at
 *    once; the organization is `pending` (its route serves the base
 *    certificate, which covers `org-<uuid>.<domain>` only) until the order
 *    completes and the listeners write the file.
 * ACME failures back off per organization (persisted, so restarts and other
 * processes honour it; an issuer error's `retryAfter` wins when later), and
 * new certificates are limited by a budget below Let's Encrypt's 50 new
 * certificates per registered domain per week.
 *
 * No @pulumi imports. *
 * This file is the manager (OrgCertificates); its parts: the public types
 * (org-certificate-types.ts), the table's statements (org-certificate-store.ts),
 * key encryption (key-encryption.ts) and the background queue (background-orders.ts).
 */
import type { Pool } from 'pg';
import { AllocatorError } from '../errors';
import { migrate as runMigrations, quoteSchema, type MigrationResult } from '../migrate';
import { isValidDomain, orgCertificateNames } from '../naming';
import { resolvePgPool } from '../pg-pool';
import { DEFAULT_BACKOFF, type BackoffPolicy } from './backoff';
import { BackgroundOrders } from './background-orders';
import { parseEncryptionKey } from './key-encryption';
import { OrgCertificateStore, assertOrgId, errorMessage, statusOf, type Lease, type OrgCertificateRow } from './org-certificate-store';
import type { BackgroundResult, IssuanceMode, MaintainReport, OrgCertificate, OrgCertificateEvent, OrgCertificateProvider, OrgCertificateStatus, OrgCertificatesOptions } from './org-certificate-types';
import { certificateInfo, keyMatchesCertificate } from './pem';
import type { CertificateIssuer, IssuedCertificate } from './types';

// Every public type of the manager, where index.ts and the allocator import them from (a list, not `export type *`: TypeScript < 5 consumers read this .d.ts).
export type { BackgroundResult, IssuanceMode, MaintainReport, OrgCertificate, OrgCertificateEvent, OrgCertificateProvider, OrgCertificateState, OrgCertificateStatus, OrgCertificatesOptions } from './org-certificate-types';
export { decryptPrivateKey, encryptPrivateKey, parseEncryptionKey } from './key-encryption';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The options with their defaults filled in (ACME and the dev CA differ), after validation. */
function settingsOf(opts: OrgCertificatesOptions) {
  const problems: string[] = [];
  if (!opts.issuer || typeof opts.issuer.issue !== 'function') problems.push('issuer must implement CertificateIssuer');
  if (opts.domain !== undefined && !isValidDomain(opts.domain)) problems.push('domain must be a lowercase DNS name');
  const fraction = opts.renewBeforeFraction ?? 1 / 3;
  if (!(fraction > 0 && fraction < 1)) problems.push('renewBeforeFraction must be between 0 and 1');
  if (problems.length > 0) throw new AllocatorError('INVALID_CONFIG', `invalid certificate options: ${problems.join('; ')}`, { problems });
  const acme = opts.issuer.kind === 'acme';
  const backoff: BackoffPolicy | null = opts.backoff === null ? null : opts.backoff !== undefined ? { ...DEFAULT_BACKOFF, ...opts.backoff } : acme ? DEFAULT_BACKOFF : null;
  const issuance: IssuanceMode = opts.issuance ?? (acme ? 'background' : 'await');
  return {
    keys: [parseEncryptionKey(opts.encryptionKey), ...(opts.previousEncryptionKeys ?? []).map(parseEncryptionKey)],
    issuance,
    renewBeforeFraction: fraction,
    maxConcurrent: Math.max(1, Math.floor(opts.maxConcurrentOrders ?? 4)),
    issueTimeoutMs: opts.issueTimeoutMs ?? (acme ? 15 * 60_000 : 15_000),
    backoff,
    budget: opts.newCertificateBudget === null ? null : (opts.newCertificateBudget ?? (acme ? { max: 40, windowMs: 7 * 24 * 3_600_000 } : null)),
  };
}

function defaultLogger(opts: OrgCertificatesOptions): (event: OrgCertificateEvent) => void {
  if (opts.logger === null) return () => undefined;
  return opts.logger ?? ((e) => process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), ...e })}\n`));
}

export class OrgCertificates implements OrgCertificateProvider {
  readonly issuance: IssuanceMode;
  readonly issuer: CertificateIssuer;
  private readonly settings: ReturnType<typeof settingsOf>;
  private pool?: Pool;
  private ownsPool = false;
  private schema?: string;
  private domain?: string;
  private db?: OrgCertificateStore;
  private log: (event: OrgCertificateEvent) => void;
  private readonly running = new Map<string, Promise<OrgCertificate | undefined>>();
  private readonly background: BackgroundOrders;
  private closed = false;
  /** Issuance count and time (for reports and the README's numbers). */
  issuedCount = 0;
  issueMs = 0;

  constructor(private readonly opts: OrgCertificatesOptions) {
    this.settings = settingsOf(opts);
    this.issuer = opts.issuer;
    this.issuance = this.settings.issuance;
    this.log = defaultLogger(opts);
    this.background = new BackgroundOrders(this.settings.maxConcurrent, (e) => this.log(e));
    if (opts.pg !== undefined) ({ pool: this.pool, owned: this.ownsPool } = resolvePgPool(opts.pg, 5, 'invalid certificate options'));
    this.schema = opts.schema;
    this.domain = opts.domain;
  }

  /**
   * Called by GatewayAllocator: fills in the pool, schema, domain and logger
   * the options left out, and rejects a manager configured for another
   * domain or schema (its certificates would not match the allocator's names).
   */
  attach(ctx: { pool: Pool; schema: string; domain: string; logger?: (event: OrgCertificateEvent) => void }): void {
    if (this.domain !== undefined && this.domain !== ctx.domain) throw new AllocatorError('INVALID_CONFIG', `certificates are configured for ${this.domain}, the allocator for ${ctx.domain}`);
    if (this.schema !== undefined && this.schema !== ctx.schema) throw new AllocatorError('INVALID_CONFIG', `certificates use schema ${this.schema}, the allocator ${ctx.schema}`);
    this.domain = ctx.domain;
    if (this.schema === undefined) this.schema = ctx.schema;
    if (!this.pool) this.pool = ctx.pool;
    if (this.opts.logger === undefined && ctx.logger) this.log = ctx.logger;
  }

  /** Creates the table (the allocator's migrate() does the same: one migrations directory). */
  async migrate(): Promise<MigrationResult> {
    const { pool, schema } = this.ready();
    return runMigrations(pool, schema);
  }

  /** The names an organization's certificate covers. */
  names(orgId: string): string[] {
    return orgCertificateNames(orgId, this.ready().domain);
  }

  /** Receives the outcome of every background order (the allocator writes the file of an issued one). */
  onBackgroundResult(listener: (result: BackgroundResult) => void): () => void {
    return this.background.onResult(listener);
  }

  /**
   * The certificate to serve for an organization now.
   * await: issues (or renews) first when needed; throws TLS_FAILED if it cannot
   * (a renewal failure while the current certificate is valid returns the current one).
   * background: returns the stored valid certificate, or undefined (pending);
   * starts an order in the background when one is missing or due.
   */
  obtain(orgId: string): Promise<OrgCertificate | undefined> {
    assertOrgId(orgId);
    const running = this.running.get(orgId);
    if (running) return running;
    const p = this.obtainOnce(orgId).finally(() => this.running.delete(orgId));
    this.running.set(orgId, p);
    return p;
  }

  /** Valid stored certificates of these organizations (no issuance). */
  async current(orgIds: string[]): Promise<Map<string, OrgCertificate>> {
    const out = new Map<string, OrgCertificate>();
    if (orgIds.length === 0) return out;
    for (const row of await this.store().rows(orgIds)) {
      const cert = this.usable(row);
      if (cert) out.set(row.organization_id, cert);
    }
    return out;
  }

  async status(orgId: string): Promise<OrgCertificateStatus> {
    assertOrgId(orgId);
    const [row] = await this.store().rows([orgId]);
    if (!row) return { organizationId: orgId, state: 'none', names: this.names(orgId), issuing: false, failures: 0, rateLimited: false };
    const cert = this.usable(row);
    return statusOf(row, cert, cert ? this.renewAt(cert) : undefined);
  }

  /** ready / pending for an organization that is served (an allocation); never 'none'. */
  async state(orgId: string): Promise<'ready' | 'pending'> {
    return (await this.current([orgId])).has(orgId) ? 'ready' : 'pending';
  }

  /**
   * For reconcile(): makes sure each organization has a valid certificate that
   * is not due, issuing (await) or starting orders (background) as needed.
   * Back-off and budget apply; nothing is ordered for organizations not listed.
   */
  async maintain(orgIds: string[]): Promise<MaintainReport> {
    const report: MaintainReport = { current: [], issued: [], started: [], waiting: [], failed: [] };
    const byOrg = new Map((await this.store().rows(orgIds)).map((r) => [r.organization_id, r]));
    const todo: string[] = [];
    for (const orgId of orgIds) {
      const row = byOrg.get(orgId);
      const cert = row ? this.usable(row) : undefined;
      if (cert && !this.due(cert)) report.current.push(orgId);
      else if (row?.issuing || row?.backed_off || this.background.has(orgId)) report.waiting.push(orgId);
      else todo.push(orgId);
    }
    if (this.issuance === 'await') await obtainEach(todo, (orgId) => this.obtain(orgId), report);
    else {
      todo.forEach((orgId) => this.startBackground(orgId));
      report.started.push(...todo);
    }
    return report;
  }

  /** Resolves when no background order of this process is running. */
  idle(): Promise<void> {
    return this.background.idle();
  }

  /** Aborts background orders (their leases expire; another process or a later reconcile() retries) and closes an owned pool. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.background.abortAll();
    await this.idle();
    await Promise.allSettled([...this.running.values()]);
    if (this.ownsPool && this.pool) await this.pool.end();
  }

  // ------------------------------------------------------------ internals

  private async obtainOnce(orgId: string): Promise<OrgCertificate | undefined> {
    const [row] = await this.store().rows([orgId]);
    const cert = row ? this.usable(row) : undefined;
    if (cert && !this.due(cert)) return cert;
    if (this.issuance === 'background') {
      if (!this.closed) this.startBackground(orgId);
      return cert;
    }
    try {
      return await this.issueAwaited(orgId);
    } catch (err) {
      if (cert) {
        // Still valid: serve it; the next allocation or reconcile() tries again.
        this.log({ event: 'tls.renewal_failed', organizationId: orgId, message: errorMessage(err), notAfter: cert.notAfter.toISOString() });
        return cert;
      }
      throw err instanceof AllocatorError ? err : new AllocatorError('TLS_FAILED', `certificate for organization ${orgId} could not be issued: ${errorMessage(err)}`, { organizationId: orgId }, err);
    }
  }

  /** await mode: order now; when another process is ordering, wait for its result. */
  private async issueAwaited(orgId: string): Promise<OrgCertificate> {
    const deadline = Date.now() + this.settings.issueTimeoutMs + 5_000;
    for (;;) {
      const claim = await this.store().claim(orgId, this.names(orgId));
      if (claim.kind === 'claimed') return this.issueClaimed(orgId, claim);
      if (claim.kind === 'backoff' || claim.kind === 'budget') throw refusal(orgId, claim);
      const found = (await this.current([orgId])).get(orgId);
      if (found && !this.due(found)) return found;
      if (Date.now() > deadline) throw new AllocatorError('TLS_FAILED', `another process has been ordering the certificate of organization ${orgId} for too long`, { organizationId: orgId });
      await sleep(25);
    }
  }

  private startBackground(orgId: string): void {
    if (this.closed) return;
    this.background.start(orgId, (signal) => this.backgroundOrder(orgId, signal));
  }

  private async backgroundOrder(orgId: string, signal: AbortSignal): Promise<void> {
    if (signal.aborted) return;
    const claim = await this.store().claim(orgId, this.names(orgId));
    if (claim.kind === 'busy') return;
    if (claim.kind !== 'claimed') {
      this.log({ event: claim.kind === 'budget' ? 'tls.budget_exhausted' : 'tls.backed_off', organizationId: orgId, retryAfter: claim.retryAfter.toISOString() });
      this.background.emit({ kind: 'failed', organizationId: orgId, retryAfter: claim.retryAfter, message: claim.kind });
      return;
    }
    try {
      const cert = await this.issueClaimed(orgId, claim, signal);
      this.background.emit({ kind: 'issued', certificate: cert });
    } catch (err) {
      const [row] = await this.store().rows([orgId]).catch(() => [] as OrgCertificateRow[]);
      this.background.emit({ kind: 'failed', organizationId: orgId, retryAfter: row?.retry_after ?? undefined, message: errorMessage(err) });
    }
  }

  /** Runs the order this process holds the lease for, and stores the result (or the failure and its back-off). */
  private async issueClaimed(orgId: string, lease: Lease, signal?: AbortSignal): Promise<OrgCertificate> {
    const names = this.names(orgId);
    const started = Date.now();
    const limit = orderSignal(this.settings.issueTimeoutMs, signal);
    let issued: IssuedCertificate;
    try {
      issued = await this.issuer.issue(names, { signal: limit.signal });
      checkIssued(issued, names);
    } catch (err) {
      await this.store().recordFailure(orgId, lease, err).catch(() => undefined);
      throw err;
    } finally {
      limit.done();
    }
    const ms = Date.now() - started;
    const cert = await this.store().save(orgId, lease.token, names, issued);
    this.issuedCount += 1;
    this.issueMs += ms;
    this.log({ event: 'tls.issued', organizationId: orgId, issuer: this.issuer.kind, serial: cert.serial, notAfter: cert.notAfter.toISOString(), ms });
    return cert;
  }

  private usable(row: OrgCertificateRow): OrgCertificate | undefined {
    return this.store().usable(row, this.names(row.organization_id));
  }

  private renewAt(cert: OrgCertificate): Date {
    const life = cert.notAfter.getTime() - cert.notBefore.getTime();
    return new Date(cert.notAfter.getTime() - life * this.settings.renewBeforeFraction);
  }

  private due(cert: OrgCertificate): boolean {
    return this.renewAt(cert).getTime() <= Date.now();
  }

  private ready(): { pool: Pool; schema: string; domain: string } {
    if (this.pool && this.schema === undefined) this.schema = 'gateway_pool';
    if (!this.pool || !this.schema || !this.domain) {
      throw new AllocatorError('INVALID_CONFIG', 'OrgCertificates needs pg, schema and domain: pass them in the options or give it to a GatewayAllocator (certificates option)');
    }
    return { pool: this.pool, schema: this.schema, domain: this.domain };
  }

  /** The table's statements, made once pool, schema and domain are known (they do not change after that). */
  private store(): OrgCertificateStore {
    if (!this.db) {
      const { pool, schema } = this.ready();
      const { keys, backoff, budget, issueTimeoutMs } = this.settings;
      this.db = new OrgCertificateStore({ pool, schema, table: `${quoteSchema(schema)}.org_certificates`, issuerKind: this.issuer.kind, keys, backoff, budget, issueTimeoutMs, log: (e) => this.log(e) });
    }
    return this.db;
  }
}

/** await mode: the order may not be placed now (another process's failures count too). */
function refusal(orgId: string, claim: { kind: 'backoff' | 'budget'; retryAfter: Date }): AllocatorError {
  const why = claim.kind === 'budget' ? 'over the new-certificate budget' : 'backed off';
  return new AllocatorError('TLS_FAILED', `certificate for organization ${orgId} is ${why} until ${claim.retryAfter.toISOString()}`, {
    organizationId: orgId,
    retryAfter: claim.retryAfter.toISOString(),
  });
}

function checkIssued(issued: IssuedCertificate, names: string[]): void {
  if (!keyMatchesCertificate(issued.certPem, issued.keyPem)) throw new Error('the issuer returned a certificate that does not match its key');
  const sans = new Set(certificateInfo(issued.certPem).names.map((n) => n.toLowerCase()));
  const missing = names.filter((n) => !sans.has(n));
  if (missing.length > 0) throw new Error(`the issued certificate does not cover ${missing.join(', ')}`);
}

/** The order's own time limit, combined with close()'s abort (AbortSignal.any needs Node ≥ 20.3); done() stops both. */
function orderSignal(timeoutMs: number, outer?: AbortSignal): { signal: AbortSignal; done: () => void } {
  const limit = new AbortController();
  const timer = setTimeout(() => limit.abort(new Error(`order timed out after ${timeoutMs} ms`)), timeoutMs);
  const onAbort = (): void => limit.abort(outer?.reason);
  outer?.addEventListener('abort', onAbort, { once: true });
  return {
    signal: limit.signal,
    done: () => {
      clearTimeout(timer);
      outer?.removeEventListener('abort', onAbort);
    },
  };
}

/** maintain() in await mode: a few at a time (each is one openssl process). */
async function obtainEach(orgIds: string[], obtain: (orgId: string) => Promise<unknown>, report: MaintainReport): Promise<void> {
  const queue = [...orgIds];
  const worker = async (): Promise<void> => {
    for (let orgId = queue.shift(); orgId !== undefined; orgId = queue.shift()) {
      try {
        await obtain(orgId);
        report.issued.push(orgId);
      } catch (err) {
        report.failed.push({ organizationId: orgId, message: errorMessage(err) });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(4, queue.length) }, worker));
}
