/**
 * The `org_certificates` table (migration 003): every statement the
 * per-organization certificates run. The issuance lease (one order per
 * organization across processes), the persisted back-off, the schema-wide
 * new-certificate budget, storing an issued certificate (compare-and-set on the
 * lease) and reading rows back into servable certificates. No @pulumi imports.
 */
import { X509Certificate, randomUUID } from 'crypto';
import type { Pool, PoolClient } from 'pg';
import { AllocatorError } from '../errors';
import { isCanonicalOrgId } from '../naming';
import { inTransaction } from '../pg-transaction';
import { backoffDelay, type BackoffPolicy } from './backoff';
import { decryptPrivateKey, encryptPrivateKey } from './key-encryption';
import type { OrgCertificate, OrgCertificateEvent, OrgCertificateStatus } from './org-certificate-types';
import { certificateInfo } from './pem';
import type { CertificateIssuer, IssuedCertificate } from './types';

export interface OrgCertificateRow {
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

/** This process holds the lease (`claimed`), or why it may not order now. */
export type Claim =
  | { kind: 'claimed'; token: string; failures: number }
  | { kind: 'busy' }
  | { kind: 'backoff'; retryAfter: Date }
  | { kind: 'budget'; retryAfter: Date };

export type Lease = Extract<Claim, { kind: 'claimed' }>;

export interface OrgCertificateStoreOptions {
  pool: Pool;
  schema: string;
  /** Quoted `<schema>.org_certificates`. */
  table: string;
  issuerKind: CertificateIssuer['kind'];
  /** The current key first, then previous ones (decryption only). */
  keys: Buffer[];
  backoff: BackoffPolicy | null;
  budget: { max: number; windowMs: number } | null;
  /** One order's time limit; the lease outlives it. */
  issueTimeoutMs: number;
  log: (event: OrgCertificateEvent) => void;
}

/** A certificate closer than this to its expiry is not served (clients would reject it mid-connection). */
const EXPIRY_MARGIN_MS = 60_000;

export function errorMessage(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).slice(0, 1000);
}

export function assertOrgId(orgId: string): void {
  if (!isCanonicalOrgId(orgId)) throw new AllocatorError('INVALID_ORGANIZATION_ID', `organization id must be a canonical lowercase UUID, got ${JSON.stringify(String(orgId).slice(0, 60))}`);
}

/** `retryAfter` (a Date) and `kind` as part A's AcmeIssueError carries them; any issuer error may. */
function failureHints(err: unknown): { retryAfter?: Date; rateLimited: boolean } {
  const e = err as { retryAfter?: unknown; kind?: unknown } | null;
  const retryAfter = e && e.retryAfter instanceof Date && !Number.isNaN(e.retryAfter.getTime()) ? e.retryAfter : undefined;
  return { retryAfter, rateLimited: e?.kind === 'rateLimited' };
}

/** Key first, then leaf and chain; nginx reads the key from and the chain from the same file. */
function bundle(keyPem: string, certPem: string): string {
  const k = keyPem.endsWith('\n') ? keyPem : `${keyPem}\n`;
  const c = certPem.endsWith('\n') ? certPem : `${certPem}\n`;
  return k + c;
}

function serialOf(certPem: string): string {
  // Node's X509Certificate.serialNumber is uppercase hex; openssl prints lowercase.
  return new X509Certificate(certPem).serialNumber.toLowerCase();
}

/** What status() reports for a stored row (`cert`: its servable certificate, if any). */
export function statusOf(row: OrgCertificateRow, cert: OrgCertificate | undefined, renewAt: Date | undefined): OrgCertificateStatus {
  return {
    organizationId: row.organization_id,
    state: cert ? 'ready' : 'pending',
    names: row.names,
    serial: cert?.serial,
    notAfter: cert?.notAfter,
    renewAt,
    issuing: row.issuing,
    failures: row.failures,
    retryAfter: row.retry_after ?? undefined,
    rateLimited: row.rate_limited,
    lastError: row.last_error ?? undefined,
  };
}

export class OrgCertificateStore {
  constructor(private readonly o: OrgCertificateStoreOptions) {}

  /**
   * Takes the organization's issuance lease unless another process holds it,
   * the back-off is running or (for a new name set) the budget is spent. The
   * budget check runs under a schema-wide advisory lock, so concurrent
   * processes cannot overshoot it.
   */
  async claim(orgId: string, names: string[]): Promise<Claim> {
    const { table, budget } = this.o;
    try {
      return await inTransaction(this.o.pool, async (client): Promise<Claim> => {
        if (budget) await client.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [`demiurge-org-cert-budget:${this.o.schema}`]);
        await client.query(`INSERT INTO ${table} (organization_id, names, issuer) VALUES ($1, $2, $3) ON CONFLICT (organization_id) DO NOTHING`, [orgId, names, this.o.issuerKind]);
        const { rows } = await client.query<{ failures: number; first_issued_at: Date | null; names: string[]; issuing: boolean; retry_after: Date | null; backed_off: boolean }>(
          `SELECT failures, first_issued_at, names, issuing_until > now() AS issuing, retry_after, retry_after > now() AS backed_off FROM ${table} WHERE organization_id = $1 FOR UPDATE`,
          [orgId],
        );
        const row = rows[0];
        if (row.issuing) return { kind: 'busy' };
        if (this.o.backoff && row.backed_off && row.retry_after) return { kind: 'backoff', retryAfter: row.retry_after };
        const isNew = row.first_issued_at === null || row.names.join(',') !== names.join(',');
        if (isNew) {
          const spent = await this.budgetSpent(client, orgId);
          if (spent) return spent;
        }
        const token = randomUUID();
        // The lease outlives the order's own timeout, so an order is never taken over while it can still finish.
        await client.query(`UPDATE ${table} SET issuing_token = $2, issuing_until = now() + $3 * interval '1 millisecond', updated_at = now() WHERE organization_id = $1`, [
          orgId,
          token,
          this.o.issueTimeoutMs + 60_000,
        ]);
        return { kind: 'claimed', token, failures: row.failures };
      });
    } catch (err) {
      throw new AllocatorError('DATABASE_FAILED', `certificate lease failed: ${errorMessage(err)}`, { organizationId: orgId }, err);
    }
  }

  /** Under claim()'s lock: the budget claim when new certificates in the window (and orders for new names running) reach the limit. */
  private async budgetSpent(client: PoolClient, orgId: string): Promise<Claim | undefined> {
    const { table, budget } = this.o;
    if (!budget) return undefined;
    const used = await client.query<{ n: string; oldest: Date | null }>(
      `SELECT count(*) AS n, min(first_issued_at) AS oldest FROM ${table}
        WHERE (first_issued_at > now() - $1 * interval '1 millisecond')
           OR (first_issued_at IS NULL AND issuing_until > now() AND organization_id <> $2)`,
      [budget.windowMs, orgId],
    );
    if (Number(used.rows[0].n) < budget.max) return undefined;
    const oldest = used.rows[0].oldest;
    const retryAfter = new Date(Math.max(Date.now() + 60_000, (oldest?.getTime() ?? Date.now()) + budget.windowMs));
    await client.query(`UPDATE ${table} SET retry_after = $2, rate_limited = true, last_error = $3, updated_at = now() WHERE organization_id = $1`, [
      orgId,
      retryAfter,
      `new-certificate budget spent: ${budget.max} per ${Math.round(budget.windowMs / 3_600_000)} h`,
    ]);
    return { kind: 'budget', retryAfter };
  }

  /** A failed order: count it, back off (the issuer's retryAfter wins when later) and give the lease up. */
  async recordFailure(orgId: string, lease: Lease, err: unknown): Promise<void> {
    const failures = lease.failures + 1;
    const hints = failureHints(err);
    let retryAfter: Date | null = null;
    if (this.o.backoff) {
      let until = Date.now() + backoffDelay(failures, this.o.backoff);
      if (hints.rateLimited) until = Math.max(until, Date.now() + this.o.backoff.rateLimitedMs);
      // The server knows its windows better than our guess, but we never retry sooner than our own back-off.
      if (hints.retryAfter) until = Math.max(until, hints.retryAfter.getTime());
      retryAfter = new Date(until);
    }
    await this.o.pool.query(
      `UPDATE ${this.o.table} SET failures = $3, retry_after = $4, rate_limited = $5, last_error = $6, issuing_token = NULL, issuing_until = NULL, updated_at = now()
        WHERE organization_id = $1 AND issuing_token = $2`,
      [orgId, lease.token, failures, retryAfter, hints.rateLimited, errorMessage(err)],
    );
    this.o.log({ event: 'tls.issue_failed', organizationId: orgId, failures, retryAfter: retryAfter?.toISOString(), rateLimited: hints.rateLimited, message: errorMessage(err) });
  }

  /** Stores an issued certificate (key encrypted) and releases the lease. */
  async save(orgId: string, token: string, names: string[], issued: IssuedCertificate): Promise<OrgCertificate> {
    const info = certificateInfo(issued.certPem);
    const serial = serialOf(issued.certPem);
    const encrypted = encryptPrivateKey(this.o.keys[0], orgId, issued.keyPem);
    // Our lease, or (lease lost to a take-over) still keep ours if it outlives what is stored: it was paid for.
    const res = await this.o.pool.query(
      `UPDATE ${this.o.table} SET names = $2, issuer = $3, cert_pem = $4, key_encrypted = $5, serial = $6, not_before = $7, not_after = $8, issued_at = now(),
              first_issued_at = CASE WHEN first_issued_at IS NOT NULL AND names = $2 THEN first_issued_at ELSE now() END,
              failures = 0, retry_after = NULL, rate_limited = false, last_error = NULL,
              issuing_until = CASE WHEN issuing_token = $9 THEN NULL ELSE issuing_until END,
              issuing_token = CASE WHEN issuing_token = $9 THEN NULL ELSE issuing_token END,
              updated_at = now()
        WHERE organization_id = $1 AND (issuing_token = $9 OR cert_pem IS NULL OR not_after < $8)`,
      [orgId, names, this.o.issuerKind, issued.certPem, encrypted, serial, info.notBefore, info.notAfter, token],
    );
    if (res.rowCount === 0) this.o.log({ event: 'tls.issued_discarded', organizationId: orgId, message: 'another process stored a newer certificate meanwhile' });
    return { organizationId: orgId, names, bundlePem: bundle(issued.keyPem, issued.certPem), serial, notBefore: info.notBefore, notAfter: info.notAfter, issuer: this.o.issuerKind };
  }

  async rows(orgIds: string[]): Promise<OrgCertificateRow[]> {
    orgIds.forEach(assertOrgId);
    try {
      const { rows } = await this.o.pool.query<OrgCertificateRow>(
        `SELECT organization_id::text AS organization_id, names, issuer, cert_pem, key_encrypted, serial, not_before, not_after, first_issued_at,
                failures, retry_after, rate_limited, last_error,
                COALESCE(issuing_until > now(), false) AS issuing, COALESCE(retry_after > now(), false) AS backed_off
           FROM ${this.o.table} WHERE organization_id = ANY($1::uuid[])`,
        [orgIds],
      );
      return rows;
    } catch (err) {
      throw new AllocatorError('DATABASE_FAILED', `certificate lookup failed: ${errorMessage(err)}`, undefined, err);
    }
  }

  /** The row's certificate if it can be served now: these names, same kind of issuer, not (nearly) expired, key decryptable. */
  usable(row: OrgCertificateRow, names: string[]): OrgCertificate | undefined {
    if (!row.cert_pem || !row.key_encrypted || !row.not_after || !row.not_before) return undefined;
    if (row.names.join(',') !== names.join(',') || row.issuer !== this.o.issuerKind) return undefined;
    if (row.not_after.getTime() - EXPIRY_MARGIN_MS <= Date.now()) return undefined;
    let keyPem: string;
    try {
      const dec = decryptPrivateKey(this.o.keys, row.organization_id, row.key_encrypted);
      keyPem = dec.keyPem;
      if (dec.keyIndex > 0) this.reencrypt(row.organization_id, keyPem, row.key_encrypted);
    } catch (err) {
      this.o.log({ event: 'tls.key_undecryptable', organizationId: row.organization_id, message: errorMessage(err) });
      return undefined;
    }
    return {
      organizationId: row.organization_id,
      names: row.names,
      bundlePem: bundle(keyPem, row.cert_pem),
      serial: row.serial ?? '',
      notBefore: row.not_before,
      notAfter: row.not_after,
      issuer: this.o.issuerKind,
    };
  }

  /** Key rotation: a row read under a previous key is rewritten under the current one (best effort, compare-and-set). */
  private reencrypt(orgId: string, keyPem: string, old: Buffer): void {
    this.o.pool
      .query(`UPDATE ${this.o.table} SET key_encrypted = $2, updated_at = now() WHERE organization_id = $1 AND key_encrypted = $3`, [orgId, encryptPrivateKey(this.o.keys[0], orgId, keyPem), old])
      .catch(() => undefined);
  }
}
