/**
 * Small PEM/X.509 helpers on Node's own crypto (no dependencies: the renewal
 * CLI runs from a bare Node.js).
 */
import { X509Certificate, createPrivateKey } from 'crypto';

export interface CertificateInfo {
  notBefore: Date;
  notAfter: Date;
  /** DNS SANs, in certificate order. */
  names: string[];
  /** SHA-256 fingerprint of the leaf (colon-separated hex, as openssl prints it). */
  fingerprint256: string;
  issuer: string;
}

/** PEM blocks of type CERTIFICATE, in order (leaf first in a chain file). */
export function splitPemCertificates(pem: string): string[] {
  return pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
}

/** Facts of the leaf (first certificate) of a PEM chain. */
export function certificateInfo(pem: string): CertificateInfo {
  const first = splitPemCertificates(pem)[0];
  if (first === undefined) throw new Error('no PEM certificate found');
  const x = new X509Certificate(first);
  const names = (x.subjectAltName ?? '')
    .split(/,\s*/)
    .filter((s) => s.startsWith('DNS:'))
    .map((s) => s.slice(4));
  return {
    notBefore: new Date(x.validFrom),
    notAfter: new Date(x.validTo),
    names,
    fingerprint256: x.fingerprint256,
    issuer: x.issuer,
  };
}

/** true when the key is the private half of the leaf's public key (a mismatched pair fails nginx -t). */
export function keyMatchesCertificate(certPem: string, keyPem: string): boolean {
  const first = splitPemCertificates(certPem)[0];
  if (first === undefined) return false;
  try {
    return new X509Certificate(first).checkPrivateKey(createPrivateKey(keyPem));
  } catch {
    return false;
  }
}

/** Same set of names, ignoring order and case. */
export function sameNames(a: readonly string[], b: readonly string[]): boolean {
  const norm = (l: readonly string[]): string => [...new Set(l.map((n) => n.toLowerCase()))].sort().join(',');
  return norm(a) === norm(b);
}
