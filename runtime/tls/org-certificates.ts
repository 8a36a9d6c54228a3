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
 * No @pulumi imports.
 */
import { X509Certificate, createCipheriv, createDecipheriv, createHash, randomBytes, randomUUID } from 'crypto';
import type { Pool } from 'pg';
import { AllocatorError } from '../errors';
import { migrate as runMigrations, quoteSchema, type MigrationResult } from '../migrate';
import { isCanonicalOrgId, isValidDomain, orgCertificateNames } from '../naming';
import { DEFAULT_BACKOFF, backoffDelay, type BackoffPolicy } from './backoff';
import { certificateInfo, keyMatchesCertificate } from './pem';
import type { CertificateIssuer, IssuedCertificate } from './types';
import { inTransaction } from '../pg-transaction';
import { resolvePgPool, type PgConnectionOptions } from '../pg-pool';

export type OrgCertificateState = 'ready' | 'pending' | 'none';
export type IssuanceMode = 'await' | 'background';

/** A stored, currently valid certificate, decrypted, ready to be written for nginx. */
export interface OrgCertificate {
  organizationId: string;
  names: string[];
  /** Private key, then leaf and chain: ONE file for ssl_certificate and ssl_certificate_key, so a rename can never pair a new certificate with an old key. */
  bundlePem: string;
  /** Hex serial of the leaf. */
  serial: string;
  notBefore: Date;
  notAfter: Date;
  issuer: CertificateIssuer['kind'];
}

export interface OrgCertificateStatus {
  organizationId: string;
  /** ready: a valid certificate is stored; pending: none yet (being issued, backed off or over budget); none: never requested. */
  state: OrgCertificateState;
  names: string[];
  serial?: string;
  notAfter?: Date;
  /** When the certificate becomes due for renewal. */
  renewAt?: Date;
  /** An order is running (this or another process). */
  issuing: boolean;
  failures: number;
  /** No new order before this time. */
  retryAfter?: Date;
  rateLimited: boolean;
  lastError?: string;
}

export interface OrgCertificateEvent {
  event: string;
  organizationId?: string;
  [key: string]: unknown;
}

export type BackgroundResult =
  | { kind: 'issued'; certificate: OrgCertificate }
  | { kind: 'failed'; organizationId: string; retryAfter?: Date; message: string };

export interface MaintainReport {
  /** Already valid and not due. */
  current: string[];
  /** Issued or renewed now (await mode). */
  issued: string[];
  /** Orders started in the background. */
  started: string[];
  /** Waiting: another process is ordering, back-off or budget. */
  waiting: string[];
  failed: Array<{ organizationId: string; message: string }>;
}

/**
 * What GatewayAllocator needs from a certificate manager (its `certificates`
 * option). OrgCertificates implements it; a test or another store can too.
 */
export interface OrgCertificateProvider {
  readonly issuance: IssuanceMode;
  attach(ctx: { pool: Pool; schema: string; domain: string; logger?: (event: OrgCertificateEvent) => void }): void;
  obtain(orgId: string): Promise<OrgCertificate | undefined>;
  current(orgIds: string[]): Promise<Map<string, OrgCertificate>>;
  maintain(orgIds: string[]): Promise<MaintainReport>;
  onBackgroundResult(listener: (result: BackgroundResult) => void): () => void;
}

export interface OrgCertificatesOptions {
  issuer: CertificateIssuer;
  /**
   * 32-byte AES-256-GCM key for private keys at rest: a Buffer, 64 hex
   * characters or base64/base64url of 32 bytes (e.g. `openssl rand -base64 32`,
   * or a Pulumi `random.RandomId` of 32 bytes as a stack secret).
   */
  encryptionKey: string | Buffer;
  /** Older keys still accepted for decryption (key rotation); rows are re-encrypted with `encryptionKey` when read. */
  previousEncryptionKeys?: Array<string | Buffer>;
  /** Defaults to the allocator's pool (see attach). A connection string makes the manager own a pool. */
  pg?: Pool | PgConnectionOptions;
  /** Defaults to the allocator's schema (`gateway_pool`). */
  schema?: string;
  /** Defaults to the allocator's domain. */
  domain?: string;
  /** Default: `await` for the dev CA, `background` for ACME. */
  issuance?: IssuanceMode;
  /** Renew when less than this fraction of the lifetime is left; default 1/3 (day 60 of a 90-day certificate). */
  renewBeforeFraction?: number;
  /** One order's time limit; default 15 s (dev CA) / 15 min (ACME). */
  issueTimeoutMs?: number;
  /** Back-off after failed orders; default part A's DEFAULT_BACKOFF for ACME, none for the dev CA. null disables. */
  backoff?: Partial<BackoffPolicy> | null;
  /**
   * Most NEW certificates (renewals of the same names do not count) per
   * window, across all processes sharing the schema. Default for ACME: 40 per
   * 7 days, leaving Let's Encrypt's 50-per-registered-domain limit room for the
   * base certificate and manual orders; none for the dev CA. null disables.
   */
  newCertificateBudget?: { max: number; windowMs: number } | null;
  /**
   * Background orders running at once in this process (each is a lego
   * process and a DNS-01 validation); the others queue. Default 4. Matters
   * when certificates are enabled on an environment with many allocations.
   */
  maxConcurrentOrders?: number;
  /** Default: the allocator's logger once attached, else JSON lines on stderr. null silences. */
  logger?: ((event: OrgCertificateEvent) => void) | null;
}

interface Row {
  organization_id: string;
  names: string[];
  issuer: string;
  cert_pem: string | null;
  key_encrypted: Buffer | null;
  serial: string | null;
  not_before: Date | null;
  not_after: Date | null;
  first_issued_at: Date | null;
  failures: number;
  retry_after: Date | null;
  rate_limited: boolean;
  last_error: string | null;
  issuing: boolean;
  backed_off: boolean;
}

type Claim =
  | { kind: 'claimed'; token: string; failures: number }
  | { kind: 'busy' }
  | { kind: 'backoff'; retryAfter: Date }
  | { kind: 'budget'; retryAfter: Date };

const KEY_FORMAT_VERSION = 1;
/** A certificate closer than this to its expiry is not served (clients would reject it mid-connection). */
const EXPIRY_MARGIN_MS = 60_000;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Parses a 32-byte key given as a Buffer, hex or base64(url). */
export function parseEncryptionKey(input: string | Buffer): Buffer {
  let key: Buffer | undefined;
  if (Buffer.isBuffer(input)) key = input;
  else if (/^[0-9a-fA-F]{64}$/.test(input.trim())) key = Buffer.from(input.trim(), 'hex');
  else if (/^[A-Za-z0-9+/_-]{43}=?$/.test(input.trim())) key = Buffer.from(input.trim().replace(/-/g, '+').replace(/_/g, '/'), 'base64');
  if (!key || key.length !== 32) {
    throw new AllocatorError('INVALID_CONFIG', 'the certificate encryption key must be 32 bytes: a Buffer, 64 hex characters or base64 of 32 bytes (openssl rand -base64 32)');
  }
  return Buffer.from(key);
}

function keyId(key: Buffer): Buffer {
  return createHash('sha256').update('demiurge-org-cert-key-id').update(key).digest().subarray(0, 8);
}

function aad(orgId: string): Buffer {
  return Buffer.from(`demiurge-org-certificate:${orgId}`, 'utf8');
}

/** version || key id || nonce || tag || ciphertext; the organization id is authenticated, so rows cannot be swapped. */
export function encryptPrivateKey(key: Buffer, orgId: string, keyPem: string): Buffer {
  const nonce = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(aad(orgId));
  const ciphertext = Buffer.concat([cipher.update(keyPem, 'utf8'), cipher.final()]);
  return Buffer.concat([Buffer.from([KEY_FORMAT_VERSION]), keyId(key), nonce, cipher.getAuthTag(), ciphertext]);
}

/** Decrypts with whichever key matches the stored key id; throws if none does or the data was tampered with. */
export function decryptPrivateKey(keys: Buffer[], orgId: string, blob: Buffer): { keyPem: string; keyIndex: number } {
  if (blob.length < 1 + 8 + 12 + 16 || blob[0] !== KEY_FORMAT_VERSION) throw new Error('unknown private-key format');
  const kid = blob.subarray(1, 9);
  const keyIndex = keys.findIndex((k) => keyId(k).equals(kid));
  if (keyIndex < 0) throw new Error('the private key was encrypted with a key that is not configured (encryptionKey / previousEncryptionKeys)');
  const decipher = createDecipheriv('aes-256-gcm', keys[keyIndex], blob.subarray(9, 21));
  decipher.setAAD(aad(orgId));
  decipher.setAuthTag(blob.subarray(21, 37));
  const keyPem = Buffer.concat([decipher.update(blob.subarray(37)), decipher.final()]).toString('utf8');
  return { keyPem, keyIndex };
}

function errorMessage(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).slice(0, 1000);
}

/** `retryAfter` (a Date) and `kind` as part A's AcmeIssueError carries them; any issuer error may. */
function failureHints(err: unknown): { retryAfter?: Date; rateLimited: boolean } {
  const e = err as { retryAfter?: unknown; kind?: unknown } | null;
  const retryAfter = e && e.retryAfter instanceof Date && !Number.isNaN(e.retryAfter.getTime()) ? e.retryAfter : undefined;
  return { retryAfter, rateLimited: e?.kind === 'rateLimited' };
}

export class OrgCertificates implements OrgCertificateProvider {
  readonly issuance: IssuanceMode;
  readonly issuer: CertificateIssuer;
  private readonly keys: Buffer[];
  private readonly renewBeforeFraction: number;
  private readonly issueTimeoutMs: number;
  private readonly backoff: BackoffPolicy | null;
  private readonly budget: { max: number; windowMs: number } | null;
  private pool?: Pool;
  private ownsPool = false;
  private schema?: string;
  private table?: string;
  private domain?: string;
  private log: (event: OrgCertificateEvent) => void;
  private readonly running = new Map<string, Promise<OrgCertificate | undefined>>();
  private readonly background = new Map<string, { promise: Promise<void>; abort: AbortController }>();
  private readonly listeners = new Set<(result: BackgroundResult) => void>();
  private readonly maxConcurrent: number;
  private activeOrders = 0;
  private readonly orderWaiters: Array<() => void> = [];
  private closed = false;
  /** Issuance count and time (for reports and the README's numbers). */
  issuedCount = 0;
  issueMs = 0;

  constructor(private readonly opts: OrgCertificatesOptions) {
    const problems: string[] = [];
    if (!opts.issuer || typeof opts.issuer.issue !== 'function') problems.push('issuer must implement CertificateIssuer');
    if (opts.domain !== undefined && !isValidDomain(opts.domain)) problems.push('domain must be a lowercase DNS name');
    const fraction = opts.renewBeforeFraction ?? 1 / 3;
    if (!(fraction > 0 && fraction < 1)) problems.push('renewBeforeFraction must be between 0 and 1');
    if (problems.length > 0) throw new AllocatorError('INVALID_CONFIG', `invalid certificate options: ${problems.join('; ')}`, { problems });
    this.issuer = opts.issuer;
    this.keys = [parseEncryptionKey(opts.encryptionKey), ...(opts.previousEncryptionKeys ?? []).map(parseEncryptionKey)];
    const acme = opts.issuer.kind === 'acme';
    this.issuance = opts.issuance ?? (acme ? 'background' : 'await');
    this.renewBeforeFraction = fraction;
    this.maxConcurrent = Math.max(1, Math.floor(opts.maxConcurrentOrders ?? 4));
    this.issueTimeoutMs = opts.issueTimeoutMs ?? (acme ? 15 * 60_000 : 15_000);
    this.backoff = opts.backoff === null ? null : opts.backoff !== undefined ? { ...DEFAULT_BACKOFF, ...opts.backoff } : acme ? DEFAULT_BACKOFF : null;
    this.budget = opts.newCertificateBudget === null ? null : (opts.newCertificateBudget ?? (acme ? { max: 40, windowMs: 7 * 24 * 3_600_000 } : null));
    this.log = opts.logger === null ? () => undefined : (opts.logger ?? ((e) => process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), ...e })}\n`)));
    if (opts.pg !== undefined) {
      const { pool, owned } = resolvePgPool(opts.pg, 5, 'invalid certificate options');
      this.pool = pool;
      this.ownsPool = owned;
    }
    if (opts.schema !== undefined) this.setSchema(opts.schema);
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
    if (this.schema === undefined) this.setSchema(ctx.schema);
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
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * The certificate to serve for an organization now.
   * await: issues (or renews) first when needed; throws TLS_FAILED if it cannot
   * (a renewal failure while the current certificate is valid returns the current one).
   * background: returns the stored valid certificate, or undefined (pending);
   * starts an order in the background when one is missing or due.
   */
  obtain(orgId: string): Promise<OrgCertificate | undefined> {
    this.assertOrg(orgId);
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
    for (const row of await this.rows(orgIds)) {
      const cert = this.usable(row);
      if (cert) out.set(row.organization_id, cert);
    }
    return out;
  }

  async status(orgId: string): Promise<OrgCertificateStatus> {
    this.assertOrg(orgId);
    const [row] = await this.rows([orgId]);
    const names = this.names(orgId);
    if (!row) return { organizationId: orgId, state: 'none', names, issuing: false, failures: 0, rateLimited: false };
    const cert = this.usable(row);
    return {
      organizationId: orgId,
      state: cert ? 'ready' : 'pending',
      names: row.names,
      serial: cert?.serial,
      notAfter: cert?.notAfter,
      renewAt: cert ? this.renewAt(cert) : undefined,
      issuing: row.issuing,
      failures: row.failures,
      retryAfter: row.retry_after ?? undefined,
      rateLimited: row.rate_limited,
      lastError: row.last_error ?? undefined,
    };
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
    const byOrg = new Map((await this.rows(orgIds)).map((r) => [r.organization_id, r]));
    const todo: string[] = [];
    for (const orgId of orgIds) {
      const row = byOrg.get(orgId);
      const cert = row ? this.usable(row) : undefined;
      if (cert && !this.due(cert)) report.current.push(orgId);
      else if (row?.issuing || row?.backed_off || this.background.has(orgId)) report.waiting.push(orgId);
      else todo.push(orgId);
    }
    if (this.issuance === 'background') {
      for (const orgId of todo) {
        this.startBackground(orgId);
        report.started.push(orgId);
      }
      return report;
    }
    // await mode: a few at a time (each is one openssl process).
    const queue = [...todo];
    const worker = async (): Promise<void> => {
      for (let orgId = queue.shift(); orgId !== undefined; orgId = queue.shift()) {
        try {
          await this.obtain(orgId);
          report.issued.push(orgId);
        } catch (err) {
          report.failed.push({ organizationId: orgId, message: errorMessage(err) });
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(4, queue.length) }, worker));
    return report;
  }

  /** Resolves when no background order of this process is running. */
  async idle(): Promise<void> {
    while (this.background.size > 0) await Promise.allSettled([...this.background.values()].map((b) => b.promise));
  }

  /** Aborts background orders (their leases expire; another process or a later reconcile() retries) and closes an owned pool. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const b of this.background.values()) b.abort.abort();
    await this.idle();
    await Promise.allSettled([...this.running.values()]);
    if (this.ownsPool && this.pool) await this.pool.end();
  }

  // ------------------------------------------------------------ internals

  private async obtainOnce(orgId: string): Promise<OrgCertificate | undefined> {
    const [row] = await this.rows([orgId]);
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
    const deadline = Date.now() + this.issueTimeoutMs + 5_000;
    for (;;) {
      const claim = await this.claim(orgId);
      if (claim.kind === 'claimed') return this.issueClaimed(orgId, claim);
      if (claim.kind === 'backoff' || claim.kind === 'budget') {
        throw new AllocatorError('TLS_FAILED', `certificate for organization ${orgId} is ${claim.kind === 'budget' ? 'over the new-certificate budget' : 'backed off'} until ${claim.retryAfter.toISOString()}`, {
          organizationId: orgId,
          retryAfter: claim.retryAfter.toISOString(),
        });
      }
      const found = (await this.current([orgId])).get(orgId);
      if (found && !this.due(found)) return found;
      if (Date.now() > deadline) throw new AllocatorError('TLS_FAILED', `another process has been ordering the certificate of organization ${orgId} for too long`, { organizationId: orgId });
      await sleep(25);
    }
  }

  private startBackground(orgId: string): void {
    if (this.background.has(orgId) || this.closed) return;
    const abort = new AbortController();
    const promise = (async () => {
      await this.orderSlot();
      try {
        await this.backgroundOrder(orgId, abort.signal);
      } finally {
        this.activeOrders -= 1;
        this.orderWaiters.shift()?.();
      }
    })()
      .catch((err: unknown) => this.log({ event: 'tls.background_error', organizationId: orgId, message: errorMessage(err) }))
      .finally(() => this.background.delete(orgId));
    this.background.set(orgId, { promise, abort });
  }

  private async orderSlot(): Promise<void> {
    if (this.activeOrders >= this.maxConcurrent) await new Promise<void>((resolve) => this.orderWaiters.push(resolve));
    this.activeOrders += 1;
  }

  private async backgroundOrder(orgId: string, signal: AbortSignal): Promise<void> {
    if (signal.aborted) return;
    const claim = await this.claim(orgId);
    if (claim.kind === 'busy') return;
    if (claim.kind !== 'claimed') {
      this.log({ event: claim.kind === 'budget' ? 'tls.budget_exhausted' : 'tls.backed_off', organizationId: orgId, retryAfter: claim.retryAfter.toISOString() });
      this.emit({ kind: 'failed', organizationId: orgId, retryAfter: claim.retryAfter, message: claim.kind });
      return;
    }
    try {
      const cert = await this.issueClaimed(orgId, claim, signal);
      this.emit({ kind: 'issued', certificate: cert });
    } catch (err) {
      const [row] = await this.rows([orgId]).catch(() => [] as Row[]);
      this.emit({ kind: 'failed', organizationId: orgId, retryAfter: row?.retry_after ?? undefined, message: errorMessage(err) });
    }
  }

  private emit(result: BackgroundResult): void {
    for (const l of this.listeners) {
      try {
        l(result);
      } catch (err) {
        this.log({ event: 'tls.listener_error', message: errorMessage(err) });
      }
    }
  }

  /** Runs the order this process holds the lease for, and stores the result (or the failure and its back-off). */
  private async issueClaimed(orgId: string, claim: { token: string; failures: number }, signal?: AbortSignal): Promise<OrgCertificate> {
    const names = this.names(orgId);
    const started = Date.now();
    // The order's own time limit, combined with close()'s abort (AbortSignal.any needs Node ≥ 20.3).
    const limit = new AbortController();
    const timer = setTimeout(() => limit.abort(new Error(`order timed out after ${this.issueTimeoutMs} ms`)), this.issueTimeoutMs);
    const onAbort = (): void => limit.abort(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    let issued: IssuedCertificate;
    try {
      issued = await this.issuer.issue(names, { signal: limit.signal });
      this.check(issued, names);
    } catch (err) {
      await this.recordFailure(orgId, claim, err).catch(() => undefined);
      throw err;
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    }
    const ms = Date.now() - started;
    const cert = await this.store(orgId, claim.token, names, issued);
    this.issuedCount += 1;
    this.issueMs += ms;
    this.log({ event: 'tls.issued', organizationId: orgId, issuer: this.issuer.kind, serial: cert.serial, notAfter: cert.notAfter.toISOString(), ms });
    return cert;
  }

  private check(issued: IssuedCertificate, names: string[]): void {
    if (!keyMatchesCertificate(issued.certPem, issued.keyPem)) throw new Error('the issuer returned a certificate that does not match its key');
    const sans = new Set(certificateInfo(issued.certPem).names.map((n) => n.toLowerCase()));
    const missing = names.filter((n) => !sans.has(n));
    if (missing.length > 0) throw new Error(`the issued certificate does not cover ${missing.join(', ')}`);
  }

  /**
   * Takes the organization's issuance lease unless another process holds it,
   * the back-off is running or (for a new name set) the budget is spent. The
   * budget check runs under a schema-wide advisory lock, so concurrent
   * processes cannot overshoot it.
   */
  private async claim(orgId: string): Promise<Claim> {
    const { pool, table, schema } = this.ready();
    const names = this.names(orgId);
    try {
      return await inTransaction(pool, async (client): Promise<Claim> => {
        if (this.budget) await client.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [`demiurge-org-cert-budget:${schema}`]);
        await client.query(`INSERT INTO ${table} (organization_id, names, issuer) VALUES ($1, $2, $3) ON CONFLICT (organization_id) DO NOTHING`, [orgId, names, this.issuer.kind]);
        const { rows } = await client.query<{ failures: number; first_issued_at: Date | null; names: string[]; issuing: boolean; retry_after: Date | null; backed_off: boolean }>(
          `SELECT failures, first_issued_at, names, issuing_until > now() AS issuing, retry_after, retry_after > now() AS backed_off FROM ${table} WHERE organization_id = $1 FOR UPDATE`,
          [orgId],
        );
        const row = rows[0];
        if (row.issuing) {
          return { kind: 'busy' };
        }
        if (this.backoff && row.backed_off && row.retry_after) {
          return { kind: 'backoff', retryAfter: row.retry_after };
        }
        const isNew = row.first_issued_at === null || row.names.join(',') !== names.join(',');
        if (this.budget && isNew) {
          const used = await client.query<{ n: string; oldest: Date | null }>(
            `SELECT count(*) AS n, min(first_issued_at) AS oldest FROM ${table}
              WHERE (first_issued_at > now() - $1 * interval '1 millisecond')
                 OR (first_issued_at IS NULL AND issuing_until > now() AND organization_id <> $2)`,
            [this.budget.windowMs, orgId],
          );
          if (Number(used.rows[0].n) >= this.budget.max) {
            const oldest = used.rows[0].oldest;
            const retryAfter = new Date(Math.max(Date.now() + 60_000, (oldest?.getTime() ?? Date.now()) + this.budget.windowMs));
            await client.query(`UPDATE ${table} SET retry_after = $2, rate_limited = true, last_error = $3, updated_at = now() WHERE organization_id = $1`, [
              orgId,
              retryAfter,
              `new-certificate budget spent: ${this.budget.max} per ${Math.round(this.budget.windowMs / 3_600_000)} h`,
            ]);
            return { kind: 'budget', retryAfter };
          }
        }
        const token = randomUUID();
        // The lease outlives the order's own timeout, so an order is never taken over while it can still finish.
        await client.query(`UPDATE ${table} SET issuing_token = $2, issuing_until = now() + $3 * interval '1 millisecond', updated_at = now() WHERE organization_id = $1`, [
          orgId,
          token,
          this.issueTimeoutMs + 60_000,
        ]);
        return { kind: 'claimed', token, failures: row.failures };
      });
    } catch (err) {
      throw new AllocatorError('DATABASE_FAILED', `certificate lease failed: ${errorMessage(err)}`, { organizationId: orgId }, err);
    }
  }

  private async recordFailure(orgId: string, claim: { token: string; failures: number }, err: unknown): Promise<void> {
    const { pool, table } = this.ready();
    const failures = claim.failures + 1;
    const hints = failureHints(err);
    let retryAfter: Date | null = null;
    if (this.backoff) {
      let until = Date.now() + backoffDelay(failures, this.backoff);
      if (hints.rateLimited) until = Math.max(until, Date.now() + this.backoff.rateLimitedMs);
      // The server knows its windows better than our guess, but we never retry sooner than our own back-off.
      if (hints.retryAfter) until = Math.max(until, hints.retryAfter.getTime());
      retryAfter = new Date(until);
    }
    await pool.query(
      `UPDATE ${table} SET failures = $3, retry_after = $4, rate_limited = $5, last_error = $6, issuing_token = NULL, issuing_until = NULL, updated_at = now()
        WHERE organization_id = $1 AND issuing_token = $2`,
      [orgId, claim.token, failures, retryAfter, hints.rateLimited, errorMessage(err)],
    );
    this.log({ event: 'tls.issue_failed', organizationId: orgId, failures, retryAfter: retryAfter?.toISOString(), rateLimited: hints.rateLimited, message: errorMessage(err) });
  }

  private async store(orgId: string, token: string, names: string[], issued: IssuedCertificate): Promise<OrgCertificate> {
    const { pool, table } = this.ready();
    const info = certificateInfo(issued.certPem);
    const serial = this.serialOf(issued.certPem);
    const encrypted = encryptPrivateKey(this.keys[0], orgId, issued.keyPem);
    // Our lease, or (lease lost to a take-over) still keep ours if it outlives what is stored: it was paid for.
    const res = await pool.query(
      `UPDATE ${table} SET names = $2, issuer = $3, cert_pem = $4, key_encrypted = $5, serial = $6, not_before = $7, not_after = $8, issued_at = now(),
              first_issued_at = CASE WHEN first_issued_at IS NOT NULL AND names = $2 THEN first_issued_at ELSE now() END,
              failures = 0, retry_after = NULL, rate_limited = false, last_error = NULL,
              issuing_until = CASE WHEN issuing_token = $9 THEN NULL ELSE issuing_until END,
              issuing_token = CASE WHEN issuing_token = $9 THEN NULL ELSE issuing_token END,
              updated_at = now()
        WHERE organization_id = $1 AND (issuing_token = $9 OR cert_pem IS NULL OR not_after < $8)`,
      [orgId, names, this.issuer.kind, issued.certPem, encrypted, serial, info.notBefore, info.notAfter, token],
    );
    if (res.rowCount === 0) this.log({ event: 'tls.issued_discarded', organizationId: orgId, message: 'another process stored a newer certificate meanwhile' });
    return {
      organizationId: orgId,
      names,
      bundlePem: bundle(issued.keyPem, issued.certPem),
      serial,
      notBefore: info.notBefore,
      notAfter: info.notAfter,
      issuer: this.issuer.kind,
    };
  }

  private serialOf(certPem: string): string {
    // Node's X509Certificate.serialNumber is uppercase hex; openssl prints lowercase.
    return new X509Certificate(certPem).serialNumber.toLowerCase();
  }

  private async rows(orgIds: string[]): Promise<Row[]> {
    const { pool, table } = this.ready();
    orgIds.forEach((o) => this.assertOrg(o));
    try {
      const { rows } = await pool.query<Row>(
        `SELECT organization_id::text AS organization_id, names, issuer, cert_pem, key_encrypted, serial, not_before, not_after, first_issued_at,
                failures, retry_after, rate_limited, last_error,
                COALESCE(issuing_until > now(), false) AS issuing, COALESCE(retry_after > now(), false) AS backed_off
           FROM ${table} WHERE organization_id = ANY($1::uuid[])`,
        [orgIds],
      );
      return rows;
    } catch (err) {
      throw new AllocatorError('DATABASE_FAILED', `certificate lookup failed: ${errorMessage(err)}`, undefined, err);
    }
  }

  /** The row's certificate if it can be served now: same names, same kind of issuer, not (nearly) expired, key decryptable. */
  private usable(row: Row): OrgCertificate | undefined {
    if (!row.cert_pem || !row.key_encrypted || !row.not_after || !row.not_before) return undefined;
    const names = this.names(row.organization_id);
    if (row.names.join(',') !== names.join(',') || row.issuer !== this.issuer.kind) return undefined;
    if (row.not_after.getTime() - EXPIRY_MARGIN_MS <= Date.now()) return undefined;
    let keyPem: string;
    try {
      const dec = decryptPrivateKey(this.keys, row.organization_id, row.key_encrypted);
      keyPem = dec.keyPem;
      if (dec.keyIndex > 0) this.reencrypt(row.organization_id, keyPem, row.key_encrypted);
    } catch (err) {
      this.log({ event: 'tls.key_undecryptable', organizationId: row.organization_id, message: errorMessage(err) });
      return undefined;
    }
    return {
      organizationId: row.organization_id,
      names: row.names,
      bundlePem: bundle(keyPem, row.cert_pem),
      serial: row.serial ?? '',
      notBefore: row.not_before,
      notAfter: row.not_after,
      issuer: this.issuer.kind,
    };
  }

  /** Key rotation: a row read under a previous key is rewritten under the current one (best effort, compare-and-set). */
  private reencrypt(orgId: string, keyPem: string, old: Buffer): void {
    const { pool, table } = this.ready();
    pool
      .query(`UPDATE ${table} SET key_encrypted = $2, updated_at = now() WHERE organization_id = $1 AND key_encrypted = $3`, [orgId, encryptPrivateKey(this.keys[0], orgId, keyPem), old])
      .catch(() => undefined);
  }

  private renewAt(cert: OrgCertificate): Date {
    const life = cert.notAfter.getTime() - cert.notBefore.getTime();
    return new Date(cert.notAfter.getTime() - life * this.renewBeforeFraction);
  }

  private due(cert: OrgCertificate): boolean {
    return this.renewAt(cert).getTime() <= Date.now();
  }

  private setSchema(schema: string): void {
    this.schema = schema;
    this.table = `${quoteSchema(schema)}.org_certificates`;
  }

  private ready(): { pool: Pool; schema: string; table: string; domain: string } {
    if (this.pool && this.schema === undefined) this.setSchema('gateway_pool');
    if (!this.pool || !this.schema || !this.table || !this.domain) {
      throw new AllocatorError('INVALID_CONFIG', 'OrgCertificates needs pg, schema and domain: pass them in the options or give it to a GatewayAllocator (certificates option)');
    }
    return { pool: this.pool, schema: this.schema, table: this.table, domain: this.domain };
  }

  private assertOrg(orgId: string): void {
    if (!isCanonicalOrgId(orgId)) throw new AllocatorError('INVALID_ORGANIZATION_ID', `organization id must be a canonical lowercase UUID, got ${JSON.stringify(String(orgId).slice(0, 60))}`);
  }
}

/** Key first, then leaf and chain; nginx reads the key from and the chain from the same file. */
function bundle(keyPem: string, certPem: string): string {
  const k = keyPem.endsWith('\n') ? keyPem : `${keyPem}\n`;
  const c = certPem.endsWith('\n') ? certPem : `${certPem}\n`;
  return k + c;
}
