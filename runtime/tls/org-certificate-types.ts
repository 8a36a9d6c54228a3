/**
 * The public types of the per-organization certificates (see
 * org-certificates.ts): what a certificate, its status and a background
 * result look like, the provider interface GatewayAllocator depends on, and
 * OrgCertificates' options. No @pulumi imports.
 */
import type { Pool } from 'pg';
import type { BackoffPolicy } from './backoff';
import type { CertificateIssuer } from './types';
import type { PgConnectionOptions } from '../pg-pool';

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
