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
 *
 * Its parts: the error type (acme-errors.ts), running lego (lego.ts) and the
 * loopback challenge endpoint (acme-challenge-endpoint.ts).
 */
import { promises as fs } from 'fs';
import * as path from 'path';
import { ChallengeEndpoint, type ActiveOrder, type ChallengeEvent } from './acme-challenge-endpoint';
import { AcmeIssueError } from './acme-errors';
import { DEFAULT_BACKOFF, IssuanceBackoff, nameSetKey, parseRetryAfter, type BackoffPolicy } from './backoff';
import { ChallengeDns, type ChallengeDnsOptions } from './dns-challenge';
import { accountDir, exists, legoFailure, legoFileBase, legoInvocation, runLego, type AcmeKeyType, type LegoResult } from './lego';
import { certificateInfo, keyMatchesCertificate, sameNames } from './pem';
import type { CertificateIssuer, IssuedCertificate } from './types';

export type { ChallengeEvent } from './acme-challenge-endpoint';
export { AcmeIssueError, isAcmeIssueError } from './acme-errors';
export type { AcmeErrorKind } from './acme-errors';
export type { AcmeKeyType } from './lego';

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

export class AcmeIssuer implements CertificateIssuer {
  readonly kind = 'acme' as const;
  readonly backoff: IssuanceBackoff;
  readonly dns: ChallengeDns;
  private readonly endpoint: ChallengeEndpoint;
  private readonly inFlight = new Map<string, Promise<IssuedCertificate>>();
  private readonly active = new Set<ActiveOrder>();
  private accountChecked = false;
  /** The first order registers the ACME account and runs alone. */
  private registering = false;

  constructor(private readonly opts: AcmeIssuerOptions) {
    this.dns = new ChallengeDns(opts.dns);
    this.backoff = opts.backoff instanceof IssuanceBackoff ? opts.backoff : new IssuanceBackoff(opts.backoff ?? DEFAULT_BACKOFF);
    this.endpoint = new ChallengeEndpoint({
      dns: this.dns,
      orderOf: (fqdn) => [...this.active].find((o) => o.fqdns.has(fqdn)),
      onChallenge: opts.onChallenge,
      log: (line) => this.log(line),
    });
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
  close(): Promise<void> {
    return this.endpoint.close();
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
    const { stateDir } = this.opts;
    const url = await this.endpoint.url();
    await fs.mkdir(path.join(stateDir, 'accounts'), { recursive: true, mode: 0o700 });
    await fs.chmod(stateDir, 0o700);
    const scratch = await fs.mkdtemp(path.join(stateDir, 'order-'));
    // Account shared across orders (Let's Encrypt limits new accounts per IP); certificates per order.
    await fs.symlink(path.join(stateDir, 'accounts'), path.join(scratch, 'accounts'));
    const { args, env } = await legoInvocation({ ...this.opts, names, scratch, endpoint: { url, ...this.endpoint.credentials } });
    this.log(`acme: order for ${names.join(', ')} at ${this.opts.directoryUrl}`);
    try {
      const result = await runLego(this.opts.legoPath ?? 'lego', args, env, this.opts.timeoutMs ?? 600_000, signal);
      if (result.aborted) throw new AcmeIssueError(`ACME order for ${names.join(', ')} aborted`, 'aborted', [...names]);
      if (result.code !== 0) throw this.failed(names, result);
      const cert = await this.readCertificate(names, scratch);
      this.backoff.recordSuccess(names);
      this.log(`acme: issued ${names.join(', ')} (until ${cert.notAfter.toISOString()}) in ${Date.now() - started} ms`);
      return cert;
    } finally {
      await this.removeLeftovers(order);
      await fs.rm(scratch, { recursive: true, force: true });
    }
  }

  /** A failed lego run: recorded in the back-off, which says when the next order may go. */
  private failed(names: string[], result: LegoResult): AcmeIssueError {
    const detail = legoFailure(result.output);
    const rateLimited = /rateLimited|\b429\b/.test(result.output);
    const state = this.backoff.recordFailure(names, { message: detail, rateLimited, retryAfter: parseRetryAfter(result.output) });
    return new AcmeIssueError(
      `ACME order for ${names.join(', ')} failed${rateLimited ? ' (rate limited)' : ''}: ${detail}; next attempt after ${state.retryAfter.toISOString()}`,
      rateLimited ? 'rateLimited' : 'failed',
      [...names],
      state.retryAfter,
      state,
    );
  }

  /** lego's certificate and key of the order, checked against the names asked for. */
  private async readCertificate(names: string[], scratch: string): Promise<IssuedCertificate> {
    const base = path.join(scratch, 'certificates', legoFileBase(names[0]));
    const certPem = await fs.readFile(`${base}.crt`, 'utf8');
    const keyPem = await fs.readFile(`${base}.key`, 'utf8');
    const info = certificateInfo(certPem);
    if (!sameNames(info.names, names) || !keyMatchesCertificate(certPem, keyPem)) {
      throw new AcmeIssueError(`lego returned a certificate for ${info.names.join(', ')} instead of ${names.join(', ')}`, 'failed', [...names]);
    }
    return { certPem, keyPem, notBefore: info.notBefore, notAfter: info.notAfter, names: [...names] };
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
}
