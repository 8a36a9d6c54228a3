#!/usr/bin/env node
/**
 * tls-renew: issues/renews the stage-1 base certificate (`<domain>`,
 * `*.<domain>`) and reloads nginx — what the renewer container the Pulumi
 * program declares runs (`loop`), what its healthcheck runs (`check`), and
 * what an operator runs by hand (`once`, `--force`).
 *
 *   tls-renew once   [--force]   renew if due (default: < 30 days left), exit
 *   tls-renew loop               `once` now, then every TLS_RENEW_INTERVAL_SECONDS (default 3600)
 *   tls-renew check              exit 0 if the installed certificate covers the names and is not expired
 *
 * Settings come from the environment only (the PowerDNS key must never be on
 * a command line), see SETTINGS below. Exit codes: 0 ok, 1 renewal failed
 * (the previous certificate is still served), 2 configuration error,
 * 3 check failed, 75 backed off (a previous ACME failure; retried later).
 *
 * Node built-ins and runtime/tls only: it runs from a bare Node.js.
 */
import { execFileSync } from 'child_process';
import { AcmeIssuer, isAcmeIssueError } from '../tls/acme-issuer';
import { MkcertIssuer } from '../tls/mkcert-issuer';
import { DAY_MS, RenewError, readInstalled, renewBaseCertificate, type RenewOptions } from '../tls/renew';
import { sameNames } from '../tls/pem';
import type { CertificateIssuer } from '../tls/types';

export const EXIT = { ok: 0, failed: 1, usage: 2, check: 3, backoff: 75 } as const;

export const SETTINGS: ReadonlyArray<{ env: string; help: string }> = [
  { env: 'DOMAIN', help: 'environment domain; the certificate covers DOMAIN and *.DOMAIN' },
  { env: 'TLS_CERT_PATH', help: 'certificate file nginx serves (leaf + chain), default /etc/demiurge/tls/fullchain.pem' },
  { env: 'TLS_KEY_PATH', help: 'its key, default /etc/demiurge/tls/privkey.pem' },
  { env: 'TLS_ISSUER', help: 'acme (DNS-01 through PowerDNS) or mkcert (dev CA)' },
  { env: 'TLS_RENEW_BEFORE_DAYS', help: 'renew when fewer days are left; default 30' },
  { env: 'TLS_RENEW_BEFORE_FRACTION', help: 'also renew when less than this fraction of the lifetime is left (e.g. 0.33)' },
  { env: 'TLS_RENEW_INTERVAL_SECONDS', help: 'loop: seconds between checks; default 3600' },
  { env: 'MKCERT_CAROOT', help: 'mkcert: the dev CA directory (on the TLS volume)' },
  { env: 'ACME_DIRECTORY', help: 'acme: directory URL' },
  { env: 'ACME_EMAIL', help: 'acme: account e-mail' },
  { env: 'ACME_STATE_DIR', help: 'acme: private directory for the ACME account (on the TLS volume)' },
  { env: 'ACME_CA_CERTIFICATES', help: "acme: extra CA file for the ACME server's HTTPS (tests: Pebble)" },
  { env: 'PDNS_API_URL', help: 'acme: PowerDNS API base URL' },
  { env: 'PDNS_API_KEY', help: 'acme: PowerDNS API key' },
  { env: 'PDNS_ZONE', help: 'acme: zone of the challenge records; default DOMAIN' },
  { env: 'DNS_RESOLVERS', help: 'acme: comma-separated host:port lego checks the TXT records through (our PowerDNS)' },
  { env: 'NGINX_CONTAINER', help: 'run nginx -t / reload through `docker exec <container>` (the renewer container); unset: locally' },
  { env: 'NGINX_TEST_COMMAND', help: 'JSON array; default ["nginx","-t","-q"] (with NGINX_CONTAINER: through docker exec)' },
  { env: 'NGINX_RELOAD_COMMAND', help: 'JSON array; default ["nginx","-s","reload"]' },
  { env: 'TLS_PROBE', help: 'host:port to confirm by handshake (SNI = DOMAIN) that nginx serves the new certificate' },
  { env: 'TLS_KEY_OWNER', help: "owner of the key file: a user name or uid[:gid] (nginx's worker user, www-data, reads it per handshake); default: keep the old key's owner" },
];

export class UsageError extends Error {}

/** `www-data`, `33` or `33:33` → uid/gid (names through `id`, which reads this container's /etc/passwd). */
function keyOwner(value: string | undefined): { uid: number; gid: number } | undefined {
  if (value === undefined || value === '') return undefined;
  const m = /^([0-9]+)(?::([0-9]+))?$/.exec(value);
  if (m) return { uid: Number(m[1]), gid: Number(m[2] ?? m[1]) };
  if (!/^[a-z_][a-z0-9_-]*$/.test(value)) throw new UsageError(`TLS_KEY_OWNER must be a user name or uid[:gid], got ${JSON.stringify(value)}`);
  try {
    return { uid: Number(execFileSync('id', ['-u', value]).toString()), gid: Number(execFileSync('id', ['-g', value]).toString()) };
  } catch {
    throw new UsageError(`TLS_KEY_OWNER: no user ${value} here`);
  }
}

function required(env: NodeJS.ProcessEnv, name: string): string {
  const v = env[name];
  if (v === undefined || v === '') throw new UsageError(`${name} is required`);
  return v;
}

function commandArray(env: NodeJS.ProcessEnv, name: string, dflt: string[]): string[] {
  const v = env[name];
  if (v === undefined || v === '') return dflt;
  let parsed: unknown;
  try {
    parsed = JSON.parse(v);
  } catch {
    throw new UsageError(`${name} must be a JSON array of strings`);
  }
  if (!Array.isArray(parsed) || parsed.length === 0 || !parsed.every((x) => typeof x === 'string')) {
    throw new UsageError(`${name} must be a non-empty JSON array of strings`);
  }
  return parsed as string[];
}

function positive(env: NodeJS.ProcessEnv, name: string, dflt: number | undefined): number | undefined {
  const v = env[name];
  if (v === undefined || v === '') return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new UsageError(`${name} must be a positive number, got ${JSON.stringify(v)}`);
  return n;
}

export interface CliSetup {
  options: Omit<RenewOptions, 'force'>;
  intervalMs: number;
  close: () => Promise<void>;
}

/** Builds the renewal options from the environment (throws UsageError). */
export function setupFromEnv(env: NodeJS.ProcessEnv, logger: (line: string) => void): CliSetup {
  const domain = required(env, 'DOMAIN');
  const names = [domain, `*.${domain}`];
  const kind = env.TLS_ISSUER ?? '';
  let issuer: CertificateIssuer;
  let source: string;
  let close = async (): Promise<void> => undefined;
  if (kind === 'mkcert') {
    issuer = new MkcertIssuer({ caroot: required(env, 'MKCERT_CAROOT') });
    source = 'mkcert';
  } else if (kind === 'acme') {
    const acme = new AcmeIssuer({
      directoryUrl: required(env, 'ACME_DIRECTORY'),
      email: required(env, 'ACME_EMAIL'),
      stateDir: required(env, 'ACME_STATE_DIR'),
      dns: { apiUrl: required(env, 'PDNS_API_URL'), apiKey: required(env, 'PDNS_API_KEY'), zone: env.PDNS_ZONE || domain },
      resolvers: required(env, 'DNS_RESOLVERS').split(',').map((s) => s.trim()).filter(Boolean),
      caCertificatesFile: env.ACME_CA_CERTIFICATES || undefined,
      logger,
    });
    issuer = acme;
    source = `acme ${required(env, 'ACME_DIRECTORY')}`;
    close = () => acme.close();
  } else {
    throw new UsageError(`TLS_ISSUER must be acme or mkcert, got ${JSON.stringify(kind)}`);
  }
  const container = env.NGINX_CONTAINER || undefined;
  const via = (cmd: string[]): string[] => (container === undefined ? cmd : ['docker', 'exec', container, ...cmd]);
  const probe = env.TLS_PROBE || undefined;
  let probeOpt: RenewOptions['probe'];
  if (probe !== undefined) {
    const m = /^(.+):([0-9]{1,5})$/.exec(probe);
    if (!m) throw new UsageError(`TLS_PROBE must be host:port, got ${JSON.stringify(probe)}`);
    probeOpt = { host: m[1], port: Number(m[2]), servername: domain };
  }
  return {
    options: {
      issuer,
      source,
      names,
      certPath: env.TLS_CERT_PATH || '/etc/demiurge/tls/fullchain.pem',
      keyPath: env.TLS_KEY_PATH || '/etc/demiurge/tls/privkey.pem',
      testCommand: commandArray(env, 'NGINX_TEST_COMMAND', via(['nginx', '-t', '-q'])),
      reloadCommand: commandArray(env, 'NGINX_RELOAD_COMMAND', via(['nginx', '-s', 'reload'])),
      renewBeforeMs: (positive(env, 'TLS_RENEW_BEFORE_DAYS', 30) as number) * DAY_MS,
      renewBeforeFraction: positive(env, 'TLS_RENEW_BEFORE_FRACTION', undefined),
      probe: probeOpt,
      keyOwner: keyOwner(env.TLS_KEY_OWNER),
      logger,
    },
    intervalMs: (positive(env, 'TLS_RENEW_INTERVAL_SECONDS', 3600) as number) * 1000,
    close,
  };
}

/** One renewal pass; returns the exit code. */
export async function once(setup: CliSetup, force: boolean, log: (line: string) => void): Promise<number> {
  try {
    const r = await renewBaseCertificate({ ...setup.options, force });
    if (r.action === 'kept') log(`tls-renew: certificate for ${r.names.join(', ')} is valid until ${r.notAfter.toISOString()}; nothing to do`);
    else log(`tls-renew: renewed (${r.reason}); valid until ${r.notAfter.toISOString()}; nginx reloaded; ${r.durationMs} ms`);
    return EXIT.ok;
  } catch (err) {
    const cause = err instanceof RenewError ? err.cause : err;
    log(`tls-renew: ${(err as Error).message}`);
    if (isAcmeIssueError(cause) && cause.kind === 'backoff') return EXIT.backoff;
    return EXIT.failed;
  }
}

/** Healthcheck: the installed certificate covers the names and is not expired. */
export async function check(setup: CliSetup, log: (line: string) => void): Promise<number> {
  const info = await readInstalled(setup.options.certPath);
  if (info === undefined || info === 'unreadable') {
    log(`tls-renew check: no readable certificate at ${setup.options.certPath}`);
    return EXIT.check;
  }
  if (!sameNames(info.names, setup.options.names)) {
    log(`tls-renew check: certificate covers ${info.names.join(', ')}, not ${setup.options.names.join(', ')}`);
    return EXIT.check;
  }
  if (info.notAfter.getTime() <= Date.now()) {
    log(`tls-renew check: certificate expired at ${info.notAfter.toISOString()}`);
    return EXIT.check;
  }
  return EXIT.ok;
}

export async function main(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const log = (line: string): void => console.log(`${new Date().toISOString()} ${line}`);
  const [cmd = 'once', ...rest] = argv;
  if (cmd === 'help' || cmd === '--help' || !['once', 'loop', 'check'].includes(cmd)) {
    console.log(`usage: tls-renew once [--force] | loop | check\nenvironment:\n${SETTINGS.map((s) => `  ${s.env.padEnd(28)} ${s.help}`).join('\n')}`);
    return cmd === 'help' || cmd === '--help' ? EXIT.ok : EXIT.usage;
  }
  let setup: CliSetup;
  try {
    setup = setupFromEnv(env, log);
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`tls-renew: ${err.message}`);
      return EXIT.usage;
    }
    throw err;
  }
  try {
    if (cmd === 'check') return await check(setup, () => undefined);
    if (cmd === 'once') return await once(setup, rest.includes('--force'), log);
    // loop: never exits on a failed pass (the previous certificate is still served; the
    // issuer's back-off spaces ACME attempts), so the container stays up and keeps trying.
    let stop = false;
    const wake: { fn?: () => void } = {};
    for (const sig of ['SIGTERM', 'SIGINT'] as const) {
      process.once(sig, () => {
        stop = true;
        wake.fn?.();
      });
    }
    while (!stop) {
      await once(setup, false, log);
      await new Promise<void>((r) => {
        const t = setTimeout(r, setup.intervalMs);
        wake.fn = () => {
          clearTimeout(t);
          r();
        };
      });
    }
    return EXIT.ok;
  } finally {
    await setup.close();
  }
}

if (require.main === module) {
  main(process.argv.slice(2), process.env).then(
    (code) => process.exit(code),
    (err: unknown) => {
      console.error(`tls-renew: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
      process.exit(EXIT.failed);
    },
  );
}
