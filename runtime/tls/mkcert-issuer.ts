/**
 * The dev base certificate from mkcert (Debian package `mkcert`), whose CA
 * lives in CAROOT on the environment's TLS volume: the CA is created on the
 * first run only, so a developer trusts it once on the host OS and it stays
 * valid across `pulumi up`s and container replacements. mkcert certificates
 * live 825 days (Apple's limit for trusted leaves); the renewal job replaces
 * them with 30 days left like any other.
 *
 * Node built-ins only (runs in the renewer container).
 */
import { execFile } from 'child_process';
import { promises as fs } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { certificateInfo } from './pem';
import type { CertificateIssuer, IssuedCertificate } from './types';

export interface MkcertIssuerOptions {
  /** mkcert's CAROOT (rootCA.pem, rootCA-key.pem); created when empty. */
  caroot: string;
  mkcertPath?: string;
  /** ECDSA P-256 keys (smaller, faster handshakes) instead of RSA 2048. Default true. */
  ecdsa?: boolean;
}

export class MkcertIssuer implements CertificateIssuer {
  readonly kind = 'dev-ca' as const;

  constructor(private readonly opts: MkcertIssuerOptions) {}

  /** The CA certificate developers trust (PEM). Creates the CA if there is none yet. */
  async caCertificate(): Promise<string> {
    const file = path.join(this.opts.caroot, 'rootCA.pem');
    try {
      return await fs.readFile(file, 'utf8');
    } catch {
      // mkcert creates its CA on first use; a throwaway issuance is the way to ask for it.
      await this.issue(['ca-init.invalid']);
      return fs.readFile(file, 'utf8');
    }
  }

  async issue(names: string[], opts: { signal?: AbortSignal } = {}): Promise<IssuedCertificate> {
    if (names.length === 0) throw new Error('issue() needs at least one name');
    await fs.mkdir(this.opts.caroot, { recursive: true, mode: 0o700 });
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'demiurge-mkcert-'));
    try {
      const cert = path.join(dir, 'cert.pem');
      const key = path.join(dir, 'key.pem');
      await this.mkcert([...(this.opts.ecdsa === false ? [] : ['-ecdsa']), '-cert-file', cert, '-key-file', key, ...names], opts.signal);
      // mkcert writes only the leaf; browsers and curl need just the root, which they trust.
      const certPem = await fs.readFile(cert, 'utf8');
      const keyPem = await fs.readFile(key, 'utf8');
      const info = certificateInfo(certPem);
      return { certPem, keyPem, notBefore: info.notBefore, notAfter: info.notAfter, names: [...names] };
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  }

  private mkcert(args: string[], signal?: AbortSignal): Promise<string> {
    return new Promise((resolve, reject) => {
      execFile(
        this.opts.mkcertPath ?? 'mkcert',
        args,
        { env: { ...process.env, CAROOT: this.opts.caroot }, timeout: 60_000, signal },
        (err, stdout, stderr) => {
          if (err) reject(new Error(`mkcert ${args.join(' ')} failed: ${stderr || err.message}`));
          else resolve(stdout);
        },
      );
    });
  }
}
