/**
 * Renewal of the stage-1 base certificate (`<domain>`, `*.<domain>`): the
 * routine the scheduled job (runtime/cli/tls-renew.ts in the renewer
 * container) runs. Also issues the first certificate when there is none, or
 * when the file on disk does not cover the configured names.
 *
 * Order of effects, so nginx never loads a broken pair and a failure leaves
 * the old pair in place:
 *   1. issue (nothing on disk changes if that fails);
 *   2. write <file>.new for both, check the key matches the certificate;
 *   3. keep the current pair as <file>.prev, rename the new files in place;
 *   4. `nginx -t`; on failure restore the previous pair;
 *   5. reload (graceful: old workers finish in-flight requests with the old
 *      certificate, new connections get the new one); on failure restore;
 *   6. optionally confirm with a TLS handshake that nginx serves the new
 *      certificate (a reload returns before the new workers answer).
 * Node built-ins only.
 */
import { execFile } from 'child_process';
import { promises as fs } from 'fs';
import * as tls from 'tls';
import { certificateInfo, keyMatchesCertificate, sameNames, type CertificateInfo } from './pem';
import type { CertificateIssuer, IssuedCertificate } from './types';

export const DAY_MS = 86_400_000;
/** Let's Encrypt certificates live 90 days and its own advice is to renew with 30 days left. */
export const DEFAULT_RENEW_BEFORE_MS = 30 * DAY_MS;

export interface RenewalPolicy {
  /** Renew when less than this remains. Default 30 days. */
  renewBeforeMs?: number;
  /**
   * Also renew when less than this fraction of the certificate's lifetime
   * remains (e.g. 1/3). Whichever triggers first. Lets the same routine handle
   * short-lived certificates (tests, or CAs with 6-day certificates).
   */
  renewBeforeFraction?: number;
}

export type RenewalReason = 'missing' | 'unreadable' | 'names-changed' | 'issuer-changed' | 'expiring' | 'forced';

/** Why the certificate on disk must be replaced now, or undefined when it is good. Pure. */
export function renewalDue(
  current: CertificateInfo | undefined | 'unreadable',
  names: readonly string[],
  now: Date,
  policy: RenewalPolicy = {},
): RenewalReason | undefined {
  if (current === undefined) return 'missing';
  if (current === 'unreadable') return 'unreadable';
  if (!sameNames(current.names, names)) return 'names-changed';
  const left = current.notAfter.getTime() - now.getTime();
  if (left < (policy.renewBeforeMs ?? DEFAULT_RENEW_BEFORE_MS)) return 'expiring';
  if (policy.renewBeforeFraction !== undefined) {
    const lifetime = current.notAfter.getTime() - current.notBefore.getTime();
    if (left < lifetime * policy.renewBeforeFraction) return 'expiring';
  }
  return undefined;
}

export interface TlsProbe {
  host: string;
  port: number;
  /** SNI name to ask for (e.g. the apex). */
  servername: string;
  /** How long to wait for nginx to serve the new certificate. Default 15 s. */
  timeoutMs?: number;
}

export interface RenewOptions extends RenewalPolicy {
  issuer: CertificateIssuer;
  /**
   * Identifies where certificates come from (e.g. `acme <directory>` or
   * `mkcert`). Written next to the certificate (`<certPath>.source`); a
   * certificate from another source (the dev image's self-signed placeholder,
   * or mkcert after switching to Let's Encrypt) is replaced at once instead of
   * 30 days before it expires.
   */
  source?: string;
  names: string[];
  certPath: string;
  keyPath: string;
  /** Validates the whole nginx configuration, e.g. ['nginx', '-t', '-q'] or ['docker', 'exec', '<dev>', 'nginx', '-t', '-q']. */
  testCommand: string[];
  /** e.g. ['nginx', '-s', 'reload']. */
  reloadCommand: string[];
  probe?: TlsProbe;
  /**
   * Owner of the new key file. With per-organization certificates nginx loads
   * certificates in its workers (per handshake), so the base key must be
   * readable by the worker user (www-data in the dev image), still mode 0600.
   * Default: the owner of the key being replaced (root for a first key).
   */
  keyOwner?: { uid: number; gid: number };
  force?: boolean;
  now?: () => Date;
  signal?: AbortSignal;
  commandTimeoutMs?: number;
  logger?: (line: string) => void;
}

export type RenewResult =
  | { action: 'kept'; notAfter: Date; names: string[] }
  | {
      action: 'renewed';
      reason: RenewalReason;
      notBefore: Date;
      notAfter: Date;
      fingerprint256: string;
      previousNotAfter?: Date;
      /** Issue + install + reload (+ confirmation), ms. */
      durationMs: number;
    };

export class RenewError extends Error {
  constructor(
    message: string,
    /** true when the previous pair is still installed (nothing changed for clients). */
    readonly keptPrevious: boolean,
    readonly cause?: unknown,
  ) {
    super(message);
    this.name = 'RenewError';
  }
}

function run(cmd: string[], timeoutMs: number): Promise<{ ok: boolean; output: string }> {
  return new Promise((resolve) => {
    execFile(cmd[0], cmd.slice(1), { timeout: timeoutMs, maxBuffer: 1024 * 1024 }, (err, stdout, stderr) => {
      resolve({ ok: !err, output: `${stdout}${stderr}`.trim() || (err ? err.message : '') });
    });
  });
}

async function readOptional(file: string): Promise<string | undefined> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** Reads the installed certificate: undefined when absent, 'unreadable' when it does not parse. */
export async function readInstalled(certPath: string): Promise<CertificateInfo | undefined | 'unreadable'> {
  const pem = await readOptional(certPath);
  if (pem === undefined) return undefined;
  try {
    return certificateInfo(pem);
  } catch {
    return 'unreadable';
  }
}

/** SHA-256 fingerprint of the certificate a TLS server presents for `servername`. */
export function servedFingerprint(probe: TlsProbe): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: probe.host, port: probe.port, servername: probe.servername, rejectUnauthorized: false, timeout: 3000 }, () => {
      const fp = socket.getPeerCertificate().fingerprint256;
      socket.end();
      resolve(fp);
    });
    socket.on('timeout', () => socket.destroy(new Error('TLS probe timed out')));
    socket.on('error', reject);
  });
}

async function writeFileAtomic(file: string, content: string, mode: number): Promise<string> {
  const tmp = `${file}.new`;
  await fs.writeFile(tmp, content, { mode });
  await fs.chmod(tmp, mode);
  return tmp;
}

async function withLock<T>(lockFile: string, fn: () => Promise<T>): Promise<T> {
  let handle: fs.FileHandle | undefined;
  try {
    handle = await fs.open(lockFile, 'wx');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    // A crashed run leaves its lock: an order never takes 15 minutes, so older locks are stale.
    const st = await fs.stat(lockFile).catch(() => undefined);
    if (st !== undefined && Date.now() - st.mtimeMs < 15 * 60_000) {
      throw new RenewError(`another renewal holds ${lockFile}`, true);
    }
    await fs.rm(lockFile, { force: true });
    handle = await fs.open(lockFile, 'wx');
  }
  try {
    await handle.writeFile(`${process.pid}\n`);
    return await fn();
  } finally {
    await handle.close();
    await fs.rm(lockFile, { force: true });
  }
}

/**
 * Renews the base certificate if due (or forced). Resolves with what it did;
 * rejects with RenewError when it could not renew (then `keptPrevious` tells
 * whether clients still get the previous, unchanged certificate).
 */
export async function renewBaseCertificate(o: RenewOptions): Promise<RenewResult> {
  const now = o.now ?? (() => new Date());
  const log = o.logger ?? (() => undefined);
  const timeout = o.commandTimeoutMs ?? 20_000;
  const current = await readInstalled(o.certPath);
  let reason: RenewalReason | undefined = o.force === true ? 'forced' : renewalDue(current, o.names, now(), o);
  if (reason === undefined && o.source !== undefined && (await readOptional(`${o.certPath}.source`))?.trim() !== o.source) reason = 'issuer-changed';
  if (reason === undefined && typeof current === 'object') {
    return { action: 'kept', notAfter: current.notAfter, names: current.names };
  }
  return withLock(`${o.certPath}.lock`, async () => {
    const started = Date.now();
    log(`tls-renew: ${reason}: issuing ${o.names.join(', ')} (${o.issuer.kind})`);
    const issued = await issueChecked(o);
    const info = certificateInfo(issued.certPem);
    const { hadPrevious, restore } = await installPair(o, issued);
    // 4. validate the whole configuration with the new pair.
    const test = await run(o.testCommand, timeout);
    if (!test.ok) {
      await restore();
      throw new RenewError(`nginx -t rejected the new certificate (previous pair restored): ${test.output}`, hadPrevious);
    }
    // 5. graceful reload.
    const reload = await run(o.reloadCommand, timeout);
    if (!reload.ok) {
      await restore();
      throw new RenewError(`nginx reload failed (previous pair restored; nginx still serves it): ${reload.output}`, hadPrevious);
    }
    // 6. a reload returns before the new workers serve: confirm by handshake.
    if (o.probe !== undefined) await awaitServed(o.probe, info.fingerprint256);
    if (o.source !== undefined) await fs.writeFile(`${o.certPath}.source`, `${o.source}\n`, { mode: 0o644 });
    log(`tls-renew: installed ${o.names.join(', ')} valid until ${info.notAfter.toISOString()} (${Date.now() - started} ms)`);
    return {
      action: 'renewed',
      reason: reason ?? 'forced',
      notBefore: info.notBefore,
      notAfter: info.notAfter,
      fingerprint256: info.fingerprint256,
      previousNotAfter: typeof current === 'object' ? current.notAfter : undefined,
      durationMs: Date.now() - started,
    };
  });
}

/** 1. the new pair from the issuer, its key matching its certificate. */
async function issueChecked(o: RenewOptions): Promise<IssuedCertificate> {
  let issued: IssuedCertificate;
  try {
    issued = await o.issuer.issue(o.names, { signal: o.signal });
  } catch (err) {
    throw new RenewError(`issuing ${o.names.join(', ')} failed: ${(err as Error).message}`, true, err);
  }
  if (!keyMatchesCertificate(issued.certPem, issued.keyPem)) {
    throw new RenewError('the issued key does not match the issued certificate', true);
  }
  return issued;
}

/**
 * 2-3. new files next to the old ones (same filesystem: rename is atomic), the
 * previous pair kept as .prev; `restore` puts it back.
 */
async function installPair(o: RenewOptions, issued: IssuedCertificate): Promise<{ hadPrevious: boolean; restore: () => Promise<void> }> {
  const newCert = await writeFileAtomic(o.certPath, issued.certPem, 0o644);
  const newKey = await writeFileAtomic(o.keyPath, issued.keyPem, 0o600);
  const owner = o.keyOwner ?? (await fs.stat(o.keyPath).then((st) => ({ uid: st.uid, gid: st.gid }), () => undefined));
  if (owner !== undefined && process.getuid?.() === 0) await fs.chown(newKey, owner.uid, owner.gid);
  const oldCert = await readOptional(o.certPath);
  const oldKey = await readOptional(o.keyPath);
  const hadPrevious = oldCert !== undefined && oldKey !== undefined;
  if (hadPrevious) {
    await fs.writeFile(`${o.certPath}.prev`, oldCert, { mode: 0o644 });
    await fs.writeFile(`${o.keyPath}.prev`, oldKey, { mode: 0o600 });
  }
  const restore = async (): Promise<void> => {
    if (hadPrevious) {
      await fs.copyFile(`${o.keyPath}.prev`, `${o.keyPath}.new`);
      await fs.copyFile(`${o.certPath}.prev`, `${o.certPath}.new`);
      await fs.rename(`${o.keyPath}.new`, o.keyPath);
      await fs.rename(`${o.certPath}.new`, o.certPath);
    }
  };
  // Key first: while only one of the two has moved, nothing reads them (nginx reads at -t/reload).
  await fs.rename(newKey, o.keyPath);
  await fs.rename(newCert, o.certPath);
  return { hadPrevious, restore };
}

/** Polls the served certificate until it is the new one, or fails after the probe's time limit. */
async function awaitServed(probe: NonNullable<RenewOptions['probe']>, fingerprint256: string): Promise<void> {
  const deadline = Date.now() + (probe.timeoutMs ?? 15_000);
  let seen = '';
  for (;;) {
    try {
      seen = await servedFingerprint(probe);
      if (seen === fingerprint256) return;
    } catch (err) {
      seen = (err as Error).message;
    }
    if (Date.now() > deadline) {
      throw new RenewError(`nginx was reloaded but still presents ${seen} for ${probe.servername}, not ${fingerprint256}: nginx reports a refused reload only in its error log`, false);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
