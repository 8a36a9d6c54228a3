/** Thin wrappers around the docker CLI and the engine, for the image tests. */
import { execFile, spawn } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';

export const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs a command; never throws for a non-zero exit (see `sh` for that). */
export function run(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string; input?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    const child = execFile(
      cmd,
      args,
      { env: opts.env ?? process.env, cwd: opts.cwd ?? REPO_ROOT, maxBuffer: 64 * 1024 * 1024, timeout: opts.timeoutMs ?? 600_000 },
      (err, stdout, stderr) => {
        const raw = (err as { code?: unknown } | null)?.code;
        const code = typeof raw === 'number' ? raw : err ? 1 : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr), ms: Date.now() - t0 });
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

/** docker <args>, throwing with stderr on failure; returns trimmed stdout. */
export async function docker(args: string[], opts: { input?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  const r = await run('docker', args, { ...opts, env: { ...process.env, DOCKER_BUILDKIT: '0', ...opts.env } });
  if (r.code !== 0) throw new Error(`docker ${args.join(' ')} failed (${r.code}): ${r.stderr.trim() || r.stdout.trim()}`);
  return r.stdout.trim();
}

/**
 * The IPv4 address of the default bridge on this host (docker0: containers reach it, it stays on
 * this machine). The engine reports it as the bridge network's IPAM gateway, but not always: a
 * freshly started dockerd 20.10 lists only the subnet (seen in CI), so the address is then read
 * from the bridge interface itself.
 */
export async function bridgeAddress(): Promise<string> {
  const ipv4 = /^\d+\.\d+\.\d+\.\d+$/;
  const gateway = await docker(['network', 'inspect', 'bridge', '-f', '{{range .IPAM.Config}}{{.Gateway}} {{end}}']);
  const reported = gateway.split(/\s+/).find((a) => ipv4.test(a));
  if (reported) return reported;
  const iface = (await docker(['network', 'inspect', 'bridge', '-f', '{{index .Options "com.docker.network.bridge.name"}}'])).replace('<no value>', '') || 'docker0';
  const r = await run('ip', ['-j', '-4', 'addr', 'show', 'dev', iface]);
  const links = r.code === 0 ? (JSON.parse(r.stdout || '[]') as Array<{ addr_info?: Array<{ family: string; local: string }> }>) : [];
  const local = links.flatMap((l) => l.addr_info ?? []).find((a) => a.family === 'inet' && ipv4.test(a.local))?.local;
  if (!local) throw new Error(`the default bridge has no IPv4 address: IPAM gateway "${gateway}", interface ${iface}: ${r.stderr.trim() || r.stdout.trim() || 'no inet address'}`);
  return local;
}

export async function dockerOk(args: string[]): Promise<boolean> {
  return (await run('docker', args)).code === 0;
}

/** Names of all containers / networks / volumes, for "leave the engine as found" checks. */
export async function engineInventory(): Promise<{ containers: string[]; networks: string[]; volumes: string[] }> {
  const lines = (s: string): string[] => s.split('\n').map((l) => l.trim()).filter(Boolean).sort();
  return {
    containers: lines(await docker(['ps', '-a', '--format', '{{.Names}}'])),
    networks: lines(await docker(['network', 'ls', '--format', '{{.Name}}'])),
    volumes: lines(await docker(['volume', 'ls', '--format', '{{.Name}}'])),
  };
}

/** Removes exactly these containers, then networks, then volumes (missing ones are fine). */
export async function removeByName(names: { containers?: string[]; networks?: string[]; volumes?: string[] }): Promise<void> {
  for (const c of names.containers ?? []) await run('docker', ['rm', '-f', '-v', c]);
  for (const n of names.networks ?? []) await run('docker', ['network', 'rm', n]);
  for (const v of names.volumes ?? []) await run('docker', ['volume', 'rm', '-f', v]);
}

function hashDir(h: crypto.Hash, root: string, rel = ''): void {
  const entries = fs.readdirSync(path.join(root, rel), { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name));
  for (const e of entries) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    const full = path.join(root, r);
    const st = fs.lstatSync(full);
    h.update(`${r}\0${st.mode.toString(8)}\0`);
    if (e.isDirectory()) hashDir(h, root, r);
    else if (e.isSymbolicLink()) h.update(fs.readlinkSync(full));
    else h.update(fs.readFileSync(full));
  }
}

/** Hash of a build context plus the ids of the images it builds on. */
export async function contextHash(contextDir: string, baseImages: string[]): Promise<string> {
  const h = crypto.createHash('sha256');
  hashDir(h, contextDir);
  for (const b of baseImages) h.update(`base ${b} ${await docker(['image', 'inspect', '-f', '{{.Id}}', b])}\n`);
  return h.digest('hex').slice(0, 24);
}

export const CONTEXT_HASH_LABEL = 'org.demiurge.context-hash';

export interface BuildOutcome {
  tag: string;
  cached: boolean;
  ms: number;
}

/** Builds `tag` from `contextDir` unless an image with that tag and context hash already exists. */
export async function buildImageCached(tag: string, contextDir: string, baseImages: string[], logFile: string): Promise<BuildOutcome> {
  const t0 = Date.now();
  const hash = await contextHash(contextDir, baseImages);
  const r = await run('docker', ['image', 'inspect', '-f', `{{index .Config.Labels "${CONTEXT_HASH_LABEL}"}}`, tag]);
  if (r.code === 0 && r.stdout.trim() === hash) return { tag, cached: true, ms: Date.now() - t0 };
  const previousId = r.code === 0 ? (await run('docker', ['image', 'inspect', '-f', '{{.Id}}', tag])).stdout.trim() : '';
  await new Promise<void>((resolve, reject) => {
    const out = fs.openSync(logFile, 'w');
    const child = spawn('docker', ['build', '--label', `${CONTEXT_HASH_LABEL}=${hash}`, '-t', tag, contextDir], {
      stdio: ['ignore', out, out],
      env: { ...process.env, DOCKER_BUILDKIT: '0' },
    });
    child.on('error', reject);
    child.on('exit', (code) => {
      fs.closeSync(out);
      if (code === 0) resolve();
      else reject(new Error(`docker build ${tag} failed (${code}); log: ${logFile}\n${fs.readFileSync(logFile, 'utf8').split('\n').slice(-25).join('\n')}`));
    });
  });
  // The image this tag pointed to before is now untagged: drop it (fails harmlessly if in use).
  const newId = (await run('docker', ['image', 'inspect', '-f', '{{.Id}}', tag])).stdout.trim();
  if (previousId && previousId !== newId) await run('docker', ['rmi', previousId]);
  return { tag, cached: false, ms: Date.now() - t0 };
}

export async function containerHealth(name: string): Promise<string> {
  return docker(['inspect', '-f', '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.State.Status}}', name]);
}

export async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>, intervalMs = 100): Promise<{ value: T; ms: number }> {
  const t0 = Date.now();
  let last: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined) return { value: v, ms: Date.now() - t0 };
    } catch (err) {
      last = err;
    }
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
