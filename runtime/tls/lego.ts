/**
 * Running lego (Debian package `lego`) for one ACME order: its command line
 * and environment (the `httpreq` DNS provider pointed at our loopback
 * endpoint), the child process with its time limit and abort, and what its
 * files and log mean. Node built-ins only; no @pulumi imports.
 */
import { spawn } from 'child_process';
import { promises as dns } from 'dns';
import { promises as fs } from 'fs';
import { isIP } from 'net';
import * as path from 'path';
import { AcmeIssueError } from './acme-errors';

export type AcmeKeyType = 'ec256' | 'ec384' | 'rsa2048' | 'rsa4096';

/** What one order's lego run needs (AcmeIssuerOptions' part plus the order's own). */
export interface LegoOrder {
  names: string[];
  directoryUrl: string;
  email: string;
  /** The order's scratch folder (lego's --path). */
  scratch: string;
  keyType?: AcmeKeyType;
  resolvers: string[];
  completePropagation?: boolean;
  caCertificatesFile?: string;
  propagationTimeoutSeconds?: number;
  endpoint: { url: string; user: string; password: string };
}

export interface LegoResult {
  code: number;
  output: string;
  aborted: boolean;
}

/** lego's file name for a certificate: `*` becomes `_` (certificates/<first domain>.crt). */
export function legoFileBase(name: string): string {
  return name.replace(/\*/g, '_');
}

/** lego's account folder for a directory URL: accounts/<host with : → _>/<email>/. */
export function accountDir(stateDir: string, directoryUrl: string, email: string): string {
  return path.join(stateDir, 'accounts', new URL(directoryUrl).host.replace(/:/g, '_'), email);
}

/**
 * host:port with a host NAME (e.g. the PowerDNS container on the environment
 * network) becomes address:port here, once per order, so lego's DNS client
 * needs no name resolution of its own.
 */
export async function resolveResolvers(resolvers: string[]): Promise<string[]> {
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

export async function exists(p: string): Promise<boolean> {
  try {
    await fs.access(p);
    return true;
  } catch {
    return false;
  }
}

/** The most useful lines of lego's log for an error message (never contains the PowerDNS key: lego does not have it). */
export function legoFailure(output: string): string {
  const lines = output.split('\n').map((l) => l.trim()).filter(Boolean);
  const interesting = lines.filter((l) => /error|acme:|Could not|fatal|invalid|urn:ietf/i.test(l));
  return (interesting.length > 0 ? interesting : lines).slice(-6).join(' | ').slice(0, 1500);
}

/** lego's command line and environment for one order (the credentials go in the environment, never the command line). */
export async function legoInvocation(o: LegoOrder): Promise<{ args: string[]; env: NodeJS.ProcessEnv }> {
  const args = [
    '--accept-tos',
    '--email', o.email,
    '--server', o.directoryUrl,
    '--path', o.scratch,
    '--key-type', o.keyType ?? 'ec256',
    '--dns', 'httpreq',
    ...(await resolveResolvers(o.resolvers)).flatMap((r) => ['--dns.resolvers', r]),
    ...(o.completePropagation === true ? [] : ['--dns.disable-cp']),
    ...o.names.flatMap((n) => ['--domains', n]),
    'run',
  ];
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: process.env.HOME ?? o.scratch,
    HTTPREQ_ENDPOINT: o.endpoint.url,
    HTTPREQ_USERNAME: o.endpoint.user,
    HTTPREQ_PASSWORD: o.endpoint.password,
    HTTPREQ_PROPAGATION_TIMEOUT: String(o.propagationTimeoutSeconds ?? 120),
    HTTPREQ_POLLING_INTERVAL: '1',
    ...(o.caCertificatesFile === undefined ? {} : { LEGO_CA_CERTIFICATES: o.caCertificatesFile }),
  };
  return { args, env };
}

/** Runs lego to its end: SIGTERM after `timeoutMs`; on `signal`, SIGTERM then SIGKILL after 3 s, reported as aborted. */
export function runLego(legoPath: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs: number, signal?: AbortSignal): Promise<LegoResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(legoPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
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
      output += `\nlego timed out after ${timeoutMs} ms`;
      child.kill('SIGTERM');
    }, timeoutMs);
    signal?.addEventListener('abort', kill, { once: true });
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new AcmeIssueError(`cannot run lego (${legoPath}): ${err.message}; install the Debian package lego`, 'failed', []));
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', kill);
      resolve({ code: code ?? 1, output, aborted });
    });
  });
}
