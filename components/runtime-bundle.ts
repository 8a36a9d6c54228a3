/**
 * Ships the runtime (runtime/) into the environment's containers as single
 * CommonJS files built with esbuild, the one bundler of this repository: no
 * registry, no image build from the repository root, no `npm run build`
 * before `pulumi up`. Each entry is bundled with its npm dependencies (pg,
 * axios, ...) into one file that runs on the images' bare Node.js 20.
 *
 * Deterministic: the same sources give the same bytes in every checkout
 * (paths in the output are relative to the source root, no source maps, no
 * legal comments, no timestamps), so an unchanged runtime changes no input of
 * any resource, and a change reaches exactly the containers that carry the
 * changed bundle on the next `pulumi up`.
 *
 * `DEMIURGE_RUNTIME_SOURCE_ROOT` (tests, CI) bundles from another checkout of
 * the repository instead of this one (it needs its own node_modules; a
 * symlink to another checkout's is fine: symlinks are kept as they are, so
 * the paths esbuild writes into its module comments stay relative).
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { buildSync } from 'esbuild';

export const REPO_ROOT = path.resolve(__dirname, '..');

/** The bundles the program ships, by output file name → repository-relative entry. */
export const RUNTIME_ENTRIES = {
  /** Built-in API server ("embedded Ganymede"), dev container. */
  'api-server.js': 'runtime/server/main.ts',
  /** Operator CLI, dev container. */
  'gateway-pool.js': 'runtime/cli/gateway-pool.ts',
  /** Stage-1 certificate renewer, renewer container. */
  'tls-renew.js': 'runtime/cli/tls-renew.ts',
  /** Gateway default app (served when no build is packed), every gateway container. */
  'gateway-app.js': 'runtime/gateway-app/main.ts',
} as const;

export type RuntimeBundleName = keyof typeof RUNTIME_ENTRIES;

export interface BundledFile {
  /** Path relative to the directory the bundle is installed in, e.g. `api-server.js`, `migrations/001_gateway_pool.sql`. */
  path: string;
  content: string;
  /** sha256 (hex) of the content. */
  sha256: string;
}

const sha256 = (s: string | Buffer): string => crypto.createHash('sha256').update(s).digest('hex');

/** Where runtime sources are read from (this checkout unless DEMIURGE_RUNTIME_SOURCE_ROOT says otherwise). */
/** A plain file installed next to the bundles (e.g. a CA bundle from the stack configuration). */
export function plainFile(filePath: string, content: string): BundledFile {
  return { path: filePath, content, sha256: sha256(content) };
}

export function runtimeSourceRoot(): string {
  const override = process.env.DEMIURGE_RUNTIME_SOURCE_ROOT;
  return override === undefined || override === '' ? REPO_ROOT : path.resolve(override);
}

interface CacheEntry {
  file: BundledFile;
  /** Every input esbuild read (relative to the root) with the sha256 of its content. */
  inputs: Array<[string, string]>;
}

// One process runs the program many times (tests): keep bundles while none of their inputs changed.
const CACHE_KEY = Symbol.for('demiurge.runtimeBundleCache');
const cache: Map<string, CacheEntry> = ((globalThis as Record<symbol, unknown>)[CACHE_KEY] as Map<string, CacheEntry> | undefined) ??
  ((globalThis as Record<symbol, unknown>)[CACHE_KEY] = new Map<string, CacheEntry>());

function unchanged(root: string, entry: CacheEntry): boolean {
  return entry.inputs.every(([rel, hash]) => {
    try {
      return sha256(fs.readFileSync(path.join(root, rel))) === hash;
    } catch {
      return false;
    }
  });
}

/** One entry bundled to a single CommonJS file. Throws naming the entry and esbuild's errors. */
export function bundleRuntimeEntry(name: RuntimeBundleName, root: string = runtimeSourceRoot()): BundledFile {
  const entry = RUNTIME_ENTRIES[name];
  const key = `${root}\0${name}`;
  const hit = cache.get(key);
  if (hit !== undefined && unchanged(root, hit)) return { ...hit.file };
  if (!fs.existsSync(path.join(root, entry))) throw new Error(`runtime bundle ${name}: entry ${entry} does not exist under ${root}`);
  const result = buildSync({
    entryPoints: [entry],
    absWorkingDir: root,
    preserveSymlinks: true,
    // The TypeScript settings that change emitted code (tsconfig.json's), given here so the output
    // does not depend on which tsconfig.json esbuild would find.
    tsconfigRaw: { compilerOptions: { strict: true, target: 'ES2022', useDefineForClassFields: true, esModuleInterop: true } },
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    write: false,
    outfile: name,
    external: ['pg-native'],
    legalComments: 'none',
    sourcemap: false,
    charset: 'utf8',
    metafile: true,
    logLevel: 'silent',
  });
  if (result.errors.length > 0) {
    throw new Error(`runtime bundle ${name} (${entry}): ${result.errors.map((e) => `${e.location?.file ?? ''}:${e.location?.line ?? ''} ${e.text}`).join('; ')}`);
  }
  const text = result.outputFiles?.[0]?.text;
  if (text === undefined) throw new Error(`runtime bundle ${name}: esbuild produced no output`);
  const file: BundledFile = { path: name, content: text, sha256: sha256(text) };
  const inputs = Object.keys(result.metafile?.inputs ?? {})
    .filter((rel) => !rel.includes(':'))
    .map((rel): [string, string] => [rel, sha256(fs.readFileSync(path.join(root, rel)))]);
  cache.set(key, { file, inputs });
  return { ...file };
}

/** SQL migrations, read at run time by runtime/migrate.ts from `<bundle dir>/migrations`. */
export function runtimeMigrations(root: string = runtimeSourceRoot()): BundledFile[] {
  const dir = path.join(root, 'runtime', 'migrations');
  return fs
    .readdirSync(dir)
    .filter((f) => /^\d{3}_[a-z0-9_]+\.sql$/.test(f))
    .sort()
    .map((f) => {
      const content = fs.readFileSync(path.join(dir, f), 'utf8');
      return { path: `migrations/${f}`, content, sha256: sha256(content) };
    });
}

/** sha256 over several files (paths and contents): one value that changes when any of them does. */
export function filesDigest(files: readonly BundledFile[]): string {
  return sha256(files.map((f) => `${f.path}\0${f.sha256}`).join('\n'));
}
