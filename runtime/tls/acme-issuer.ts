/**
 * ACME (Let's Encrypt, or Pebble in tests) certificates through DNS-01 in our
 * own PowerDNS, for the base certificate (`<domain>`, `*.<domain>`) and the
 * per-organization ones (`org-<uuid>.<domain>`, `*.org-<uuid>.<domain>`).
 *
 * The ACME protocol is lego's (Debian package `lego`, 4.9.1 in bookworm): a
 * packaged, widely used client that handles account registration, JWS, nonces,
 * order polling and the chain, with no new npm dependency in the allocator.
 * Its DNS side is ours: lego runs with the `httpreq` provider pointed at a
 * loopback endpoint in this process (random basic-auth credentials), which
 * writes the TXT records through ChallengeDns. That is what makes apex +
 * wildcard in one order correct (both values in one rrset, clean-up removes one
 * value, not the rrset) and lets us guarantee that every value presented for
 * an order is gone when issue() returns, even if lego crashed or was killed.
 *
 * No @pulumi imports, and Node built-ins only (see dns-challenge.ts).
 */
import { spawn } from 'child_process';
import { randomBytes } from 'crypto';
import { promises as dns } from 'dns';
import { promises as fs } from 'fs';
import * as http from 'http';
import { isIP, type AddressInfo } from 'net';
import * as path from 'path';
import { DEFAULT_BACKOFF, IssuanceBackoff, nameSetKey, parseRetryAfter, type BackoffPolicy, type BackoffState } from './backoff';
import { ChallengeDns, type ChallengeDnsOptions } from './dns-challenge';
import { certificateInfo, keyMatchesCertificate, sameNames } from './pem';
import type { CertificateIssuer, IssuedCertificate } from './types';

export type AcmeKeyType = 'ec256' | 'ec384' | 'rsa2048' | 'rsa4096';

export interface ChallengeEvent {
  action: 'present' | 'cleanup';
  /** `_acme-challenge.<name>.` */
  fqdn: string;
  value: string;
}

export interface AcmeIssuerOptions {
  /** ACME directory, e.g. https://acme-v02.api.letsencrypt.org/directory. */
  directoryUrl: string;
  /** ACME account e-mail (expiry notices, account recovery). */
  email: string;
  /** Persistent, private directory: the ACME account (lego's accounts/) lives here; per-order scratch too. */
  stateDir: string;
  /** PowerDNS API and the zone the names live in. */
  dns: ChallengeDnsOptions;
  /**
   * DNS servers (host:port) lego checks the TXT records through before it asks
   * the CA to validate: our PowerDNS, so the check sees what the CA will see.
   */
  resolvers: string[];
  /**
   * Also wait until every authoritative name server (NS records, port 53)
   * serves the value: lego's default. Off by default because our PowerDNS is
   * the only authoritative server and it is already in `resolvers`, and test
   * zones have no NS records reachable on port 53.
   */
  completePropagation?: boolean;
  /** PEM file of extra CAs for the ACME server's HTTPS (Pebble's listener CA in tests): LEGO_CA_CERTIFICATES. */
  caCertificatesFile?: string;
  /** lego binary. Default `lego` from PATH. */
  legoPath?: string;
  keyType?: AcmeKeyType;
  /** Seconds lego waits for the TXT record to be visible. Default 120. */
  propagationTimeoutSeconds?: number;
  /** Whole order. Default 10 minutes. */
  timeoutMs?: number;
  /** Back-off per name set after failures (shared table or policy). */
  backoff?: IssuanceBackoff | BackoffPolicy;
  /** Awaited after each TXT change is applied, before lego is answered (tests inspect DNS here). */
  onChallenge?: (event: ChallengeEvent) => void | Promise<void>;
  /** One line per event; default: none. */
  logger?: (line: string) => void;
}

export type AcmeErrorKind = 'backoff' | 'rateLimited' | 'failed' | 'aborted';

export class AcmeIssueError extends Error {
  constructor(
    message: string,
    readonly kind: AcmeErrorKind,
    readonly names: string[],
    /** When a new order for these names may be placed. */
    readonly retryAfter?: Date,
    readonly backoff?: BackoffState,
  ) {
    super(message);
    this.name = 'AcmeIssueError';
  }
}

export function isAcmeIssueError(err: unknown): err is AcmeIssueError {
  return err instanceof AcmeIssueError;
}

interface ActiveOrder {
  fqdns: Set<string>;
  /** Values presented for this order and not yet cleaned up, per fqdn. */
  presented: Map<string, Set<string>>;
}

/** lego's file name for a certificate: `*` becomes `_` (certificates/<first domain>.crt). */
function legoFileBase(name: string): string {
  return name.replace(/\*/g, '_');
}

/** lego's account folder for a directory URL: accounts/<host with : → _>/<email>/. */
function accountDir(stateDir: string, directoryUrl: string, email: string): string {
  return path.join(stateDir, 'accounts', new URL(directoryUrl).host.replace(/:/g, '_'), email);
}

/**
 * host:port with a host NAME (e.g. the PowerDNS container on the environment
 * network) becomes address:port here, once per order, so lego's DNS client
 * needs no name resolution of its own.
 */
async function resolveResolvers(resolvers: string[]): Promise<string[]> {
  return Promise.all(
    resolvers.map(async (r) => {
      const m = /^\[?([^\]]+?)\]?:([0-9]{1,5})$/.exec(r);
      if (!m) throw new AcmeIssueError(`DNS resolver must be host:port, got ${JSON.stringify(r)}`, 'failed', []);
      if (isIP(m[1]) !== 0) return r;
      const { address, family } = await dns.lookup(m[1]);
      return family === 6 ? `[${address}]:${m[2]}` : `${address}:${m[2]}`;
    }),
  );
}

async function exists(p: string): Promise<boolean> {
  try {
    await fs.access(p);
    return true;
  } catch {
    return false;
  }
}

/** The most useful lines of lego's log for an error message (never contains the PowerDNS key: lego does not have it). */
function legoFailure(output: string): string {
  const lines = output.split('\n').map((l) => l.trim()).filter(Boolean);
  const interesting = lines.filter((l) => /error|acme:|Could not|fatal|invalid|urn:ietf/i.test(l));
  return (interesting.length > 0 ? interesting : lines).slice(-6).join(' | ').slice(0, 1500);
}

export class AcmeIssuer implements CertificateIssuer {
  readonly kind = 'acme' as const;
  readonly backoff: IssuanceBackoff;
  readonly dns: ChallengeDns;
  private server?: Promise<{ url: string; close: () => Promise<void> }>;
  private readonly credentials = { user: 'lego', password: randomBytes(24).toString('hex') };
  private readonly inFlight = new Map<string, Promise<IssuedCertificate>>();
  private readonly active = new Set<ActiveOrder>();
  private accountChecked = false;
  /** The first order registers the ACME account and runs alone. */
  private registering = false;

  constructor(private readonly opts: AcmeIssuerOptions) {
    this.dns = new ChallengeDns(opts.dns);
    this.backoff = opts.backoff instanceof IssuanceBackoff ? opts.backoff : new IssuanceBackoff(opts.backoff ?? DEFAULT_BACKOFF);
  }

  /**
   * Issues one certificate for all `names` in ONE order (e.g. the apex and its
   * wildcard). Concurrent calls for the same name set share one order. Throws
   * AcmeIssueError: `backoff` without contacting the CA while a previous
   * failure's retryAfter has not passed; `rateLimited`/`failed` after a failed
   * order (and records the back-off); `aborted` when the signal fired.
   */
  issue(names: string[], opts: { signal?: AbortSignal } = {}): Promise<IssuedCertificate> {
    if (names.length === 0) return Promise.reject(new Error('issue() needs at least one name'));
    const key = nameSetKey(names);
    const running = this.inFlight.get(key);
    if (running) return running;
    const blocked = this.backoff.blocked(names);
    if (blocked) {
      return Promise.reject(
        new AcmeIssueError(
          `ACME order for ${names.join(', ')} is backed off until ${blocked.retryAfter.toISOString()} after ${blocked.failures} failure(s): ${blocked.lastError}`,
          'backoff',
          [...names],
          blocked.retryAfter,
          blocked,
        ),
      );
    }
    const p = this.schedule(names, opts.signal).finally(() => this.inFlight.delete(key));
    this.inFlight.set(key, p);
    return p;
  }

  /** Stops the loopback challenge endpoint (the issuer can be used again afterwards). */
  async close(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (s) await (await s).close();
  }

  private log(line: string): void {
    this.opts.logger?.(line);
  }

  /**
   * Different organizations never share a challenge name, so their orders run
   * in parallel. Orders whose challenge names overlap (e.g. [apex, *.apex] and
   * [apex]) wait for each other, because leftover clean-up is attributed per
   * name. The very first order runs alone, so concurrent first orders do not
   * register several ACME accounts (Let's Encrypt limits accounts per IP).
   */
  private async schedule(names: string[], signal?: AbortSignal): Promise<IssuedCertificate> {
    const fqdns = new Set(names.map((n) => ChallengeDns.recordName(n)));
    const account = path.join(accountDir(this.opts.stateDir, this.opts.directoryUrl, this.opts.email), 'account.json');
    const overlapping = (): boolean => [...this.active].some((o) => [...o.fqdns].some((f) => fqdns.has(f)));
    let registering = false;
    for (;;) {
      if (signal?.aborted) throw new AcmeIssueError(`ACME order for ${names.join(', ')} aborted`, 'aborted', [...names]);
      if (!overlapping() && !this.registering) {
        const accountMissing = !this.accountChecked && !(await exists(account));
        if (!accountMissing || this.active.size === 0) {
          registering = accountMissing;
          if (!overlapping() && !this.registering) break;
        }
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    this.registering = registering;
    const order: ActiveOrder = { fqdns, presented: new Map() };
    this.active.add(order);
    try {
      const cert = await this.run(names, order, signal);
      this.accountChecked = true;
      return cert;
    } finally {
      this.active.delete(order);
      if (registering) this.registering = false;
    }
  }

  private async run(names: string[], order: ActiveOrder, signal?: AbortSignal): Promise<IssuedCertificate> {
    const started = Date.now();
    const endpoint = await this.endpoint();
    await fs.mkdir(path.join(this.opts.stateDir, 'accounts'), { recursive: true, mode: 0o700 });
    await fs.chmod(this.opts.stateDir, 0o700);
    const scratch = await fs.mkdtemp(path.join(this.opts.stateDir, 'order-'));
    // Account shared across orders (Let's Encrypt limits new accounts per IP); certificates per order.
    await fs.symlink(path.join(this.opts.stateDir, 'accounts'), path.join(scratch, 'accounts'));
    const args = [
      '--accept-tos',
      '--email', this.opts.email,
      '--server', this.opts.directoryUrl,
      '--path', scratch,
      '--key-type', this.opts.keyType ?? 'ec256',
      '--dns', 'httpreq',
      ...(await resolveResolvers(this.opts.resolvers)).flatMap((r) => ['--dns.resolvers', r]),
      ...(this.opts.completePropagation === true ? [] : ['--dns.disable-cp']),
      ...names.flatMap((n) => ['--domains', n]),
      'run',
    ];
    const env: NodeJS.ProcessEnv = {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      HOME: process.env.HOME ?? scratch,
      HTTPREQ_ENDPOINT: endpoint,
      HTTPREQ_USERNAME: this.credentials.user,
      HTTPREQ_PASSWORD: this.credentials.password,
      HTTPREQ_PROPAGATION_TIMEOUT: String(this.opts.propagationTimeoutSeconds ?? 120),
      HTTPREQ_POLLING_INTERVAL: '1',
      ...(this.opts.caCertificatesFile === undefined ? {} : { LEGO_CA_CERTIFICATES: this.opts.caCertificatesFile }),
    };
    this.log(`acme: order for ${names.join(', ')} at ${this.opts.directoryUrl}`);
    try {
      const result = await this.lego(args, env, signal);
      if (result.aborted) throw new AcmeIssueError(`ACME order for ${names.join(', ')} aborted`, 'aborted', [...names]);
      if (result.code !== 0) {
        const detail = legoFailure(result.output);
        const rateLimited = /rateLimited|\b429\b/.test(result.output);
        const state = this.backoff.recordFailure(names, { message: detail, rateLimited, retryAfter: parseRetryAfter(result.output) });
        throw new AcmeIssueError(
          `ACME order for ${names.join(', ')} failed${rateLimited ? ' (rate limited)' : ''}: ${detail}; next attempt after ${state.retryAfter.toISOString()}`,
          rateLimited ? 'rateLimited' : 'failed',
          [...names],
          state.retryAfter,
          state,
        );
      }
      const base = path.join(scratch, 'certificates', legoFileBase(names[0]));
      const certPem = await fs.readFile(`${base}.crt`, 'utf8');
      const keyPem = await fs.readFile(`${base}.key`, 'utf8');
      const info = certificateInfo(certPem);
      if (!sameNames(info.names, names) || !keyMatchesCertificate(certPem, keyPem)) {
        throw new AcmeIssueError(`lego returned a certificate for ${info.names.join(', ')} instead of ${names.join(', ')}`, 'failed', [...names]);
      }
      this.backoff.recordSuccess(names);
      this.log(`acme: issued ${names.join(', ')} (until ${info.notAfter.toISOString()}) in ${Date.now() - started} ms`);
      return { certPem, keyPem, notBefore: info.notBefore, notAfter: info.notAfter, names: [...names] };
    } finally {
      await this.removeLeftovers(order);
      await fs.rm(scratch, { recursive: true, force: true });
    }
  }

  /** Values lego presented but did not clean up (it crashed, was killed, or its clean-up failed). */
  private async removeLeftovers(order: ActiveOrder): Promise<void> {
    for (const [fqdn, values] of order.presented) {
      for (const value of values) {
        try {
          await this.dns.cleanup(fqdn, value);
          this.log(`acme: removed leftover challenge ${fqdn}`);
        } catch (err) {
          this.log(`acme: could not remove challenge ${fqdn}: ${(err as Error).message}`);
        }
      }
    }
    order.presented.clear();
  }

  private lego(args: string[], env: NodeJS.ProcessEnv, signal?: AbortSignal): Promise<{ code: number; output: string; aborted: boolean }> {
    return new Promise((resolve, reject) => {
      const child = spawn(this.opts.legoPath ?? 'lego', args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
      let output = '';
      let aborted = false;
      const collect = (b: Buffer): void => {
        output += b.toString('utf8');
        if (output.length > 200_000) output = output.slice(-100_000);
      };
      child.stdout.on('data', collect);
      child.stderr.on('data', collect);
      const kill = (): void => {
        aborted = true;
        child.kill('SIGTERM');
        setTimeout(() => child.kill('SIGKILL'), 3000).unref();
      };
      const timer = setTimeout(() => {
        output += `\nlego timed out after ${this.opts.timeoutMs ?? 600_000} ms`;
        child.kill('SIGTERM');
      }, this.opts.timeoutMs ?? 600_000);
      signal?.addEventListener('abort', kill, { once: true });
      child.on('error', (err) => {
        clearTimeout(timer);
        reject(new AcmeIssueError(`cannot run lego (${this.opts.legoPath ?? 'lego'}): ${err.message}; install the Debian package lego`, 'failed', []));
      });
      child.on('close', (code) => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', kill);
        resolve({ code: code ?? 1, output, aborted });
      });
    });
  }

  /** The loopback endpoint lego's httpreq provider calls: POST /present and /cleanup with {fqdn, value}. */
  private endpoint(): Promise<string> {
    if (!this.server) {
      this.server = new Promise((resolve, reject) => {
        const expected = `Basic ${Buffer.from(`${this.credentials.user}:${this.credentials.password}`).toString('base64')}`;
        const srv = http.createServer((req, res) => {
          let body = '';
          req.setEncoding('utf8');
          req.on('data', (c: string) => {
            body += c;
            if (body.length > 10_000) req.destroy();
          });
          req.on('end', () => {
            void this.handle(req, body, expected).then(
              (status) => {
                res.statusCode = status;
                res.end();
              },
              (err: Error) => {
                this.log(`acme: challenge endpoint: ${err.message}`);
                res.statusCode = 500;
                res.end(err.message);
              },
            );
          });
        });
        srv.on('error', reject);
        srv.listen(0, '127.0.0.1', () => {
          const port = (srv.address() as AddressInfo).port;
          resolve({
            url: `http://127.0.0.1:${port}`,
            close: () => new Promise<void>((r) => srv.close(() => r())),
          });
        });
        // Does not keep the process alive on its own (CLI exits when done).
        srv.unref();
      });
    }
    return this.server.then((s) => s.url);
  }

  private async handle(req: http.IncomingMessage, body: string, expectedAuth: string): Promise<number> {
    if (req.headers.authorization !== expectedAuth) return 401;
    const action = req.url === '/present' ? 'present' : req.url === '/cleanup' ? 'cleanup' : undefined;
    if (req.method !== 'POST' || action === undefined) return 404;
    const parsed = JSON.parse(body) as { fqdn?: unknown; value?: unknown };
    if (typeof parsed.fqdn !== 'string' || typeof parsed.value !== 'string') return 400;
    const fqdn = parsed.fqdn.toLowerCase().endsWith('.') ? parsed.fqdn.toLowerCase() : `${parsed.fqdn.toLowerCase()}.`;
    const value = parsed.value;
    const order = [...this.active].find((o) => o.fqdns.has(fqdn));
    // Only names of an order this issuer is running: the endpoint is no general DNS writer.
    if (order === undefined) return 403;
    if (action === 'present') {
      await this.dns.present(fqdn, value);
      const set = order.presented.get(fqdn) ?? new Set<string>();
      set.add(value);
      order.presented.set(fqdn, set);
    } else {
      await this.dns.cleanup(fqdn, value);
      order.presented.get(fqdn)?.delete(value);
    }
    this.log(`acme: ${action} ${fqdn}`);
    await this.opts.onChallenge?.({ action, fqdn, value });
    return 200;
  }
}
