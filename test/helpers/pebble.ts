/**
 * Pebble (Let's Encrypt's ACME test server, Debian package `pebble` 2.4) for
 * the TLS integration suites: own ports, own config, DNS-01 validated through
 * the test PowerDNS, so a certificate is only issued when the challenge TXT
 * records really are in PowerDNS.
 *
 * Facts this relies on (checked against the 2.4 binary and its README):
 *  - config field `certificateValidityPeriod` (seconds; "Using certificate
 *    validity period of %d seconds" in the log) shortens issued certificates;
 *    2.4 has no environment variable for it;
 *  - `-dnsserver host:port` is the resolver the VA asks for TXT records;
 *  - PEBBLE_VA_NOSLEEP=1 drops the random 0-15 s sleep before validation,
 *    PEBBLE_WFE_NONCEREJECT=0 stops the deliberate 5 % badNonce answers (the
 *    clients retry them, but the suite must be deterministic),
 *    PEBBLE_AUTHZREUSE=0 makes every order solve fresh challenges (otherwise
 *    half of the orders would reuse valid authorizations and prove nothing);
 *  - the root and intermediate are regenerated at every start and served by
 *    the management interface at /roots/0 and /intermediates/0;
 *  - the Debian package ships no TLS certificate for Pebble's own HTTPS
 *    listeners (the upstream test/certs are stripped), so we mint one.
 */
import { execFileSync, spawn, type ChildProcess } from 'child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'fs';
import * as https from 'https';
import * as os from 'os';
import * as path from 'path';
import { stopChild } from './stop-child';

export interface PebbleOptions {
  /** ACME directory port (https://127.0.0.1:<port>/dir). Default 61400. */
  acmePort?: number;
  /** Management port (roots, intermediates). Default 61401. */
  managementPort?: number;
  /**
   * Address both listeners bind to (and their certificate names); default 127.0.0.1. The Docker
   * e2e binds the docker0 bridge address, which containers reach and which stays on this machine.
   */
  listenHost?: string;
  /** host:port of the DNS server Pebble validates DNS-01 against (the test PowerDNS). */
  dnsServer: string;
  /** Lifetime of issued certificates in seconds (Pebble's default is 5 years). */
  certificateValidityPeriod?: number;
}

/** Installs the Debian package when the binary is missing (root, Debian 12). */
export function ensureDebianPackage(binary: string, pkg: string): void {
  try {
    execFileSync('sh', ['-c', `command -v ${binary}`], { stdio: 'ignore' });
    return;
  } catch {
    /* missing: install */
  }
  if (!existsSync('/usr/sbin/policy-rc.d')) {
    // Never let a package start a daemon of its own on a test machine.
    writeFileSync('/usr/sbin/policy-rc.d', '#!/bin/sh\nexit 101\n', { mode: 0o755 });
  }
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  try {
    execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', pkg], { env, stdio: 'pipe', timeout: 300_000 });
  } catch {
    execFileSync('apt-get', ['update', '-qq'], { env, stdio: 'pipe', timeout: 300_000 });
    execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', pkg], { env, stdio: 'pipe', timeout: 300_000 });
  }
}

function get(url: string, ca: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { ca, timeout: 3000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

export class Pebble {
  readonly dir: string;
  readonly acmePort: number;
  readonly managementPort: number;
  readonly listenHost: string;
  /** CA of Pebble's own HTTPS listeners (what an ACME client must trust to talk to it). */
  readonly listenerCaFile: string;
  /** Written by start(): Pebble's issuing root, to verify issued certificates. */
  readonly rootFile: string;
  readonly logFile: string;
  private child?: ChildProcess;

  constructor(private readonly opts: PebbleOptions) {
    ensureDebianPackage('pebble', 'pebble');
    ensureDebianPackage('mkcert', 'mkcert');
    this.acmePort = opts.acmePort ?? 61400;
    this.managementPort = opts.managementPort ?? 61401;
    this.listenHost = opts.listenHost ?? '127.0.0.1';
    this.dir = mkdtempSync(path.join(os.tmpdir(), 'demiurge-pebble-'));
    this.listenerCaFile = path.join(this.dir, 'listener-ca', 'rootCA.pem');
    this.rootFile = path.join(this.dir, 'pebble-root.pem');
    this.logFile = path.join(this.dir, 'pebble.log');
  }

  get directoryUrl(): string {
    return `https://${this.listenHost}:${this.acmePort}/dir`;
  }

  async start(): Promise<void> {
    const caroot = path.join(this.dir, 'listener-ca');
    mkdirSync(caroot);
    const cert = path.join(this.dir, 'listener-cert.pem');
    const key = path.join(this.dir, 'listener-key.pem');
    execFileSync('mkcert', ['-cert-file', cert, '-key-file', key, ...new Set(['127.0.0.1', 'localhost', this.listenHost])], {
      env: { ...process.env, CAROOT: caroot },
      stdio: 'ignore',
    });
    const config = path.join(this.dir, 'pebble-config.json');
    writeFileSync(
      config,
      JSON.stringify(
        {
          pebble: {
            listenAddress: `${this.listenHost}:${this.acmePort}`,
            managementListenAddress: `${this.listenHost}:${this.managementPort}`,
            certificate: cert,
            privateKey: key,
            // Unused (DNS-01 only), but Pebble needs ports; keep them away from anything real.
            httpPort: this.acmePort + 2,
            tlsPort: this.acmePort + 3,
            ocspResponderURL: '',
            externalAccountBindingRequired: false,
            ...(this.opts.certificateValidityPeriod === undefined ? {} : { certificateValidityPeriod: this.opts.certificateValidityPeriod }),
          },
        },
        null,
        2,
      ),
    );
    const out = openSync(this.logFile, 'a');
    this.child = spawn('pebble', ['-config', config, '-dnsserver', this.opts.dnsServer], {
      env: { ...process.env, PEBBLE_VA_NOSLEEP: '1', PEBBLE_WFE_NONCEREJECT: '0', PEBBLE_AUTHZREUSE: '0' },
      stdio: ['ignore', out, out],
    });
    closeSync(out);
    const ca = readFileSync(this.listenerCaFile, 'utf8');
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (this.child.exitCode !== null) throw new Error(`pebble exited (${this.child.exitCode}):\n${this.log()}`);
      try {
        const dir = await get(this.directoryUrl, ca);
        const root = await get(`https://${this.listenHost}:${this.managementPort}/roots/0`, ca);
        if (dir.status === 200 && root.status === 200 && root.body.includes('BEGIN CERTIFICATE')) {
          writeFileSync(this.rootFile, root.body);
          return;
        }
      } catch {
        /* not listening yet */
      }
      if (Date.now() > deadline) throw new Error(`pebble did not come up in 20 s:\n${this.log()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  log(): string {
    return existsSync(this.logFile) ? readFileSync(this.logFile, 'utf8') : '';
  }

  async stop(): Promise<void> {
    await stopChild(this.child, 'SIGTERM', 3000);
  }

  async destroy(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
