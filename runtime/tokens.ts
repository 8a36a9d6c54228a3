import { createHash, randomBytes } from 'crypto';

/** Bearer secrets (gateway, registration, handshake tokens): stored only as this SHA-256 hash. */
export function hashToken(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

/** A new random token: 32 bytes, base64url. */
export function newToken(): string {
  return randomBytes(32).toString('base64url');
}

/** Cheap shape check before any lookup, so garbage never reaches the database. */
export function isPlausibleToken(token: unknown): token is string {
  return typeof token === 'string' && token.length >= 16 && token.length <= 200;
}
