/**
 * Private keys of per-organization certificates at rest: AES-256-GCM under a
 * 32-byte key (a stack secret in a deployment), with a key id so older keys
 * keep decrypting during a rotation, and the organization id authenticated so
 * rows cannot be swapped. No @pulumi imports.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'crypto';
import { AllocatorError } from '../errors';

const KEY_FORMAT_VERSION = 1;

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
