/**
 * Development certificates from the environment's mkcert CA, in milliseconds.
 *
 * Node 20 can parse X.509 but not create it, and the allocator takes no new
 * npm dependency, so one `openssl req -x509 -CA …` (OpenSSL ≥ 3.0) makes the
 * key and the signed leaf in a single process: ≈11 ms per certificate on the
 * 2-core reference machine (an EC P-256 leaf key is instant to generate; the
 * time is the process start and mkcert's RSA-3072 CA signature).
 *
 * No @pulumi imports, Node built-ins only.
 */
import { execFile } from 'child_process';
import { randomBytes } from 'crypto';
import { promises as fs } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { certificateInfo, keyMatchesCertificate } from './pem';
import type { CertificateIssuer, IssuedCertificate } from './types';

export interface DevCaIssuerOptions {
  /** mkcert's CAROOT: holds rootCA.pem and rootCA-key.pem (the key must be readable by this process). */
  caroot: string;
  /** Validity of minted certificates; default 90 days (like Let's Encrypt, so renewal is exercised the same way). */
  validityDays?: number;
  /** openssl binary (≥ 3.0 for `req -CA`); default `openssl` from PATH. */
  opensslPath?: string;
  /** Per certificate; default 15 s. */
  timeoutMs?: number;
  /** Scratch directory for the key file openssl writes (mode 0700, removed after each issue); default the OS temp dir. */
  tmpDir?: string;
}

/** DNS name, optionally with one leading `*.`: what may go into a SAN. Keeps the openssl arguments free of `,` and `=`. */
const SAN_NAME_RE = /^(?:\*\.)?(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * Leaf profile. Explicit, because `openssl req -x509` would otherwise apply the
 * system openssl.cnf's v3_ca section and mint a CA certificate.
 */
const OPENSSL_CONFIG = `[req]
distinguished_name = dn
prompt = no
x509_extensions = leaf
[dn]
O = demiurge development certificate
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
`;

export class DevCaIssuer implements CertificateIssuer {
  readonly kind = 'dev-ca' as const;
  readonly caCertFile: string;
  private readonly caKeyFile: string;
  private scratch?: Promise<string>;

  constructor(private readonly opts: DevCaIssuerOptions) {
    this.caCertFile = path.join(opts.caroot, 'rootCA.pem');
    this.caKeyFile = path.join(opts.caroot, 'rootCA-key.pem');
  }

  async issue(names: string[], opts: { signal?: AbortSignal } = {}): Promise<IssuedCertificate> {
    if (names.length === 0) throw new Error('issue() needs at least one name');
    const bad = names.filter((n) => !SAN_NAME_RE.test(n) || n.length > 253);
    if (bad.length > 0) throw new Error(`not a DNS name: ${bad.map((n) => JSON.stringify(n)).join(', ')}`);
    opts.signal?.throwIfAborted();
    let dir = await this.scratchDir();
    // A temp cleaner may have removed the scratch directory of a long-lived process.
    if (!(await fs.access(path.join(dir, 'openssl.cnf')).then(() => true, () => false))) {
      this.scratch = undefined;
      dir = await this.scratchDir();
    }
    const keyFile = path.join(dir, `key-${process.pid}-${randomBytes(8).toString('hex')}.pem`);
    // 16 random bytes with the top bit clear: a positive serial, unique without coordination.
    const serial = randomBytes(16);
    serial[0] &= 0x7f;
    const args = [
      'req', '-x509', '-new',
      '-config', path.join(dir, 'openssl.cnf'),
      '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-noenc', '-keyout', keyFile,
      '-CA', this.caCertFile, '-CAkey', this.caKeyFile,
      '-addext', `subjectAltName=${names.map((n) => `DNS:${n}`).join(',')}`,
      '-days', String(this.opts.validityDays ?? 90),
      '-set_serial', `0x${serial.toString('hex')}`,
      '-sha256',
    ];
    try {
      const certPem = await new Promise<string>((resolve, reject) => {
        execFile(this.opts.opensslPath ?? 'openssl', args, { timeout: this.opts.timeoutMs ?? 15_000, signal: opts.signal }, (err, stdout, stderr) => {
          if (err) reject(new Error(`openssl could not mint a certificate for ${names.join(', ')} from ${this.opts.caroot}: ${(stderr || err.message).trim().split('\n').slice(-2).join(' | ')}`));
          else resolve(stdout);
        });
      });
      const keyPem = await fs.readFile(keyFile, 'utf8');
      if (!keyMatchesCertificate(certPem, keyPem)) throw new Error('openssl returned a certificate that does not match its key');
      const info = certificateInfo(certPem);
      return { certPem, keyPem, notBefore: info.notBefore, notAfter: info.notAfter, names: [...names] };
    } finally {
      await fs.rm(keyFile, { force: true });
    }
  }

  /** Private scratch directory (the leaf key passes through a file: openssl 3 cannot write it to a pipe next to the certificate). */
  private scratchDir(): Promise<string> {
    if (!this.scratch) {
      this.scratch = (async () => {
        const dir = await fs.mkdtemp(path.join(this.opts.tmpDir ?? os.tmpdir(), 'demiurge-devca-'));
        await fs.chmod(dir, 0o700);
        await fs.writeFile(path.join(dir, 'openssl.cnf'), OPENSSL_CONFIG, { mode: 0o600 });
        return dir;
      })();
      this.scratch.catch(() => (this.scratch = undefined));
    }
    return this.scratch;
  }

  /** Removes the scratch directory. */
  async close(): Promise<void> {
    const s = this.scratch;
    this.scratch = undefined;
    if (s) await fs.rm(await s, { recursive: true, force: true }).catch(() => undefined);
  }
}
