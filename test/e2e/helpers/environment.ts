/**
 * What a user of a deployed environment does, as functions: HTTPS through
 * the published stage-1 port with the environment's CA (the operator API at
 * ganymede.<domain>, an organization's pages), and the laptop-side
 * `npm run gateway-pool -- --stack <stack>` CLI. Secrets (the operator token)
 * travel in request headers or files, never on a command line.
 */
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as https from 'https';
import * as path from 'path';
import { ganymedeFqdn } from '../../../runtime/naming';
import type { Deployment } from '../realise/deployment';

export interface HttpsAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** HTTPS to `name` at the published stage-1 port, verifying the certificate against the dev CA (SNI = name). */
export function httpsTo(
  d: Deployment,
  name: string,
  urlPath: string,
  opts: { method?: string; headers?: Record<string, string>; body?: unknown; timeoutMs?: number } = {},
): Promise<HttpsAnswer> {
  const payload = opts.body === undefined ? undefined : JSON.stringify(opts.body);
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: d.httpsHost,
        port: d.httpsPort,
        servername: name,
        path: urlPath,
        method: opts.method ?? 'GET',
        ca: d.caFile ? fs.readFileSync(d.caFile) : undefined,
        agent: false,
        timeout: opts.timeoutMs ?? 15_000,
        headers: {
          host: name,
          ...(payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(payload)) }),
          ...(opts.headers ?? {}),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`timeout: https://${name}${urlPath}`)));
    req.on('error', reject);
    req.end(payload);
  });
}

export interface OperatorAnswer {
  status: number;
  json: Record<string, unknown> & { success?: boolean; code?: string; message?: string };
}

/** `https://ganymede.<domain>/operator/...` with the stack's operator token. */
export async function operator(d: Deployment, token: string, method: 'GET' | 'POST', urlPath: string, body?: unknown): Promise<OperatorAnswer> {
  const r = await httpsTo(d, ganymedeFqdn(d.outputs.domain), `/operator${urlPath}`, {
    method,
    headers: { authorization: `Bearer ${token}` },
    body: method === 'POST' ? (body ?? {}) : undefined,
  });
  let json: OperatorAnswer['json'];
  try {
    json = JSON.parse(r.body) as OperatorAnswer['json'];
  } catch {
    throw new Error(`operator ${method} ${urlPath}: ${r.status} is not JSON: ${r.body.slice(0, 300)}`);
  }
  return { status: r.status, json };
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * The laptop-side CLI exactly as the README runs it (`npm run -s gateway-pool -- --stack <stack> ...`),
 * from `cwd`; `stackDir` holds the Pulumi.<stack>.yaml naming the environment.
 */
export function stackCli(repoRoot: string, stack: string, stackDir: string | undefined, args: string[], timeoutMs = 120_000): Promise<CliResult> {
  const argv = ['run', '-s', 'gateway-pool', '--', '--stack', stack, ...(stackDir ? ['--dir', stackDir] : []), ...args];
  return new Promise((resolve, reject) => {
    const child = spawn('npm', argv, { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
    });
  });
}

/** A Pulumi.<stack>.yaml naming the environment, as a user's checkout would hold it. */
export function writeStackFile(dir: string, stack: string, config: Record<string, string>): string {
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `Pulumi.${stack}.yaml`);
  const lines = Object.entries(config)
    .filter(([k]) => k.startsWith('demiurge:'))
    .map(([k, v]) => `  ${k}: ${JSON.stringify(v)}`);
  fs.writeFileSync(file, `config:\n${lines.join('\n')}\n`);
  return file;
}

/** Polls `probe` until it returns a value (not undefined), at most `timeoutMs`; the error names `what` and the last observation. */
export async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>, intervalMs = 250): Promise<T> {
  const t0 = Date.now();
  let last = '';
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (err) {
      last = (err as Error).message;
    }
    if (Date.now() - t0 > timeoutMs) throw new Error(`${what}: not within ${Math.round(timeoutMs / 1000)} s${last ? ` (last: ${last})` : ''}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
