/**
 * Host side of allocator-driver.ts: ships the runtime allocator into the dev
 * container (transpiled runtime/ with its migrations, and the node_modules
 * closure of the packages it requires: pg, axios, ...) and drives one allocator instance there over
 * `docker exec -i` (JSON lines). Secrets travel in the init request on stdin,
 * never on a command line.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'child_process';
import * as fs from 'fs';
import { builtinModules } from 'module';
import * as os from 'os';
import * as path from 'path';
import * as ts from 'typescript';
import type { Allocation, GatewayListing, GatewaySpec, PoolStatus } from '../../../runtime';
import { runCommand } from './realise';

export const BUNDLE_DIR = '/opt/demiurge-e2e-allocator';

export interface AllocatorInit {
  envName: string;
  domain: string;
  publicIp: string;
  pg: { connectionString: string };
  powerdns: { apiUrl: string; apiKey: string; zone: string };
  nginx: { confDir: string };
}

export class DriverError extends Error {
  constructor(
    message: string,
    readonly code: string | null,
  ) {
    super(message);
    this.name = 'DriverError';
  }
}

function transpile(src: string, dst: string): void {
  const out = ts.transpileModule(fs.readFileSync(src, 'utf8'), {
    compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
    fileName: src,
  });
  fs.writeFileSync(dst, out.outputText);
}

const BUILTINS = new Set(builtinModules);

/** Package name of a bare specifier (`pg`, `axios/lib/x` → `axios`, `@scope/pkg/x` → `@scope/pkg`), undefined for builtins. */
function packageOf(spec: string): string | undefined {
  if (spec.startsWith('node:') || BUILTINS.has(spec) || BUILTINS.has(spec.split('/')[0])) return undefined;
  const parts = spec.split('/');
  return spec.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
}

/**
 * The packages the transpiled runtime really loads: a walk over relative
 * requires from the entry files, collecting the bare ones. (runtime/ is
 * edited concurrently; a fixed list would go stale.)
 */
function requiredPackages(entries: string[]): string[] {
  const packages = new Set<string>();
  const seen = new Set<string>();
  const visit = (file: string): void => {
    if (seen.has(file)) return;
    seen.add(file);
    const text = fs.readFileSync(file, 'utf8');
    for (const m of text.matchAll(/\brequire\((["'])([^"']+)\1\)/g)) {
      const spec = m[2];
      if (spec.startsWith('.')) {
        const base = path.resolve(path.dirname(file), spec);
        const target = [base, `${base}.js`, path.join(base, 'index.js')].find((f) => fs.existsSync(f) && fs.statSync(f).isFile());
        if (target === undefined) throw new Error(`${file}: cannot resolve ${spec} in the bundle`);
        visit(target);
      } else {
        const pkg = packageOf(spec);
        if (pkg !== undefined) packages.add(pkg);
      }
    }
  };
  entries.forEach(visit);
  return [...packages].sort();
}

/** Those packages and what they depend on, as npm installed them (nested node_modules travel with their package). */
function dependencyClosure(root: string, names: string[]): string[] {
  const seen = new Set<string>();
  const visit = (name: string, from: string): void => {
    if (seen.has(name)) return;
    const dir = path.join(root, 'node_modules', name);
    if (!fs.existsSync(path.join(dir, 'package.json'))) throw new Error(`${from} needs ${name}, which is not in node_modules (npm ci)`);
    seen.add(name);
    const pj = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { dependencies?: Record<string, string> };
    for (const dep of Object.keys(pj.dependencies ?? {})) {
      if (!fs.existsSync(path.join(dir, 'node_modules', dep))) visit(dep, name);
    }
  };
  for (const n of names) visit(n, 'runtime/');
  return [...seen].sort();
}

/** Transpiles every .ts under `src` into `dst` (same layout) and copies every other file (migrations, templates). */
function transpileTree(src: string, dst: string): number {
  let n = 0;
  fs.mkdirSync(dst, { recursive: true });
  for (const e of fs.readdirSync(src, { withFileTypes: true })) {
    const from = path.join(src, e.name);
    if (e.isDirectory()) n += transpileTree(from, path.join(dst, e.name));
    else if (e.name.endsWith('.d.ts')) continue;
    else if (e.name.endsWith('.ts')) {
      transpile(from, path.join(dst, e.name.replace(/\.ts$/, '.js')));
      n += 1;
    } else fs.copyFileSync(from, path.join(dst, e.name));
  }
  return n;
}

/** Builds the bundle in a temporary directory and copies it into the container. */
export async function installAllocator(repoRoot: string, container: string): Promise<{ files: number; packages: string[] }> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'demiurge-e2e-alloc-'));
  try {
    const bundle = path.join(tmp, 'bundle');
    const files = transpileTree(path.join(repoRoot, 'runtime'), path.join(bundle, 'runtime'));
    transpile(path.join(__dirname, 'allocator-driver.ts'), path.join(bundle, 'driver.js'));
    const direct = requiredPackages([path.join(bundle, 'driver.js'), path.join(bundle, 'runtime', 'index.js')]);
    const packages = dependencyClosure(repoRoot, direct);
    for (const p of packages) fs.cpSync(path.join(repoRoot, 'node_modules', p), path.join(bundle, 'node_modules', p), { recursive: true });
    await runCommand(['docker', 'exec', container, 'rm', '-rf', BUNDLE_DIR], {}, repoRoot);
    const cp = await runCommand(['docker', 'cp', bundle, `${container}:${BUNDLE_DIR}`], {}, repoRoot);
    if (cp.code !== 0) throw new Error(`docker cp of the allocator bundle into ${container} failed: ${cp.stderr.trim()}`);
    return { files, packages: direct };
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** One allocator process in the container. */
export class ContainerAllocator {
  private readonly child: ChildProcessWithoutNullStreams;
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private buffer = '';
  private exited: string | undefined;

  constructor(
    readonly container: string,
    private readonly logFile: string,
  ) {
    this.child = spawn('docker', ['exec', '-i', container, 'node', `${BUNDLE_DIR}/driver.js`], { stdio: ['pipe', 'pipe', 'pipe'] });
    const log = fs.createWriteStream(logFile, { flags: 'a' });
    this.child.stderr.pipe(log);
    this.child.stdout.setEncoding('utf8');
    this.child.stdout.on('data', (chunk: string) => {
      this.buffer += chunk;
      for (let i = this.buffer.indexOf('\n'); i >= 0; i = this.buffer.indexOf('\n')) {
        const line = this.buffer.slice(0, i);
        this.buffer = this.buffer.slice(i + 1);
        if (line.trim() === '') continue;
        const msg = JSON.parse(line) as { id: number; ok: boolean; result?: unknown; error?: { message: string; code: string | null } };
        const w = this.waiting.get(msg.id);
        if (!w) continue;
        this.waiting.delete(msg.id);
        if (msg.ok) w.resolve(msg.result);
        else w.reject(new DriverError(msg.error?.message ?? 'error', msg.error?.code ?? null));
      }
    });
    this.child.on('exit', (code) => {
      this.exited = `allocator driver exited (${code}); log ${logFile}`;
      for (const w of this.waiting.values()) w.reject(new Error(this.exited));
      this.waiting.clear();
    });
  }

  private send<T>(op: string, args?: unknown): Promise<T> {
    if (this.exited) return Promise.reject(new Error(this.exited));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.waiting.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.child.stdin.write(`${JSON.stringify({ id, op, args })}\n`);
    });
  }

  init(options: AllocatorInit): Promise<{ certPath: string; keyPath: string }> {
    return this.send('init', options);
  }
  migrate(): Promise<unknown> {
    return this.send('migrate');
  }
  registerGateways(inventory: GatewaySpec[]): Promise<unknown> {
    return this.send('registerGateways', inventory);
  }
  markReady(names: string[]): Promise<Record<string, string>> {
    return this.send('markReady', names);
  }
  allocate(orgId: string): Promise<Allocation> {
    return this.send('allocate', orgId);
  }
  release(orgId: string): Promise<{ name: string; organizationId: string }> {
    return this.send('release', orgId);
  }
  status(): Promise<PoolStatus> {
    return this.send('status');
  }
  list(): Promise<GatewayListing[]> {
    return this.send('list');
  }

  /** Closes the allocator (its pg pool) and the driver. */
  async close(): Promise<void> {
    if (!this.exited) {
      await this.send('close').catch(() => undefined);
      this.child.stdin.end();
      await new Promise<void>((resolve) => {
        if (this.exited) resolve();
        else this.child.on('exit', () => resolve());
      });
    }
  }

  logTail(lines = 20): string {
    try {
      return fs.readFileSync(this.logFile, 'utf8').trim().split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  }
}
