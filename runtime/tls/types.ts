/**
 * Shared TLS types for the runtime (no @pulumi imports: the allocator and the
 * renewal CLI run outside the Pulumi engine).
 *
 * Two issuers implement `CertificateIssuer`:
 *  - 'dev-ca': mints certificates from the mkcert dev CA in milliseconds;
 *  - 'acme':   orders certificates via ACME DNS-01 through our own PowerDNS.
 * Callers (base-certificate renewal, per-organization certificate manager)
 * depend only on this interface so dev and prod share one code path.
 */

export interface IssuedCertificate {
  /** PEM: leaf first, then the intermediate chain (what nginx's ssl_certificate wants). */
  certPem: string;
  /** PEM private key for the leaf. */
  keyPem: string;
  notBefore: Date;
  notAfter: Date;
  /** The DNS names the certificate covers (SANs), in the order requested. */
  names: string[];
}

export interface CertificateIssuer {
  readonly kind: 'dev-ca' | 'acme';
  issue(names: string[], opts?: { signal?: AbortSignal }): Promise<IssuedCertificate>;
}
