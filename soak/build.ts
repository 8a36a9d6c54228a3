/**
 * Compiles a worker and everything it imports (runtime/, soak/, bench/) to
 * plain JavaScript once per run, with esbuild (the project's one bundler). A
 * worker is killed and replaced dozens of times; on ts-node each replacement
 * spends ~2-4 s of CPU compiling on this 2-core machine (stealing it from the
 * operations under test), as plain JS it starts in a fraction of a second.
 *
 * esbuild's bundler finds the closure (static and dynamic imports, `./lib` →
 * `lib/index.ts`), then each module is emitted as its own file: the bench's
 * CPU profile attributes time by file (runtime/ vs bench/ vs node_modules/pg),
 * which one bundled file would erase. Packages stay external; the output lives
 * inside the repository tree so Node finds node_modules by walking up.
 */
import { buildSync } from 'esbuild';
import { cpSync, existsSync, rmSync } from 'fs';
import * as path from 'path';

const COMMON = { platform: 'node', target: 'node20', format: 'cjs', logLevel: 'error' } as const;

/** The repository's source files the entry reaches (absolute paths), resolved by esbuild. */
export function sourceClosure(root: string, entry: string): string[] {
  const probe = buildSync({
    ...COMMON,
    absWorkingDir: root,
    entryPoints: [entry],
    bundle: true,
    // Only our sources matter here; packages are required from node_modules at run time (pg-native is pg's optional native binding).
    packages: 'external',
    external: ['pg-native'],
    write: false,
    metafile: true,
  });
  return Object.keys(probe.metafile.inputs).map((f) => path.resolve(root, f));
}

/** Returns the path of the compiled entry file. */
export function buildClosure(root: string, entry: string, outDir: string): string {
  rmSync(outDir, { recursive: true, force: true });
  buildSync({
    ...COMMON,
    absWorkingDir: root,
    entryPoints: sourceClosure(root, entry),
    outbase: root,
    outdir: outDir,
    bundle: false,
    // A kept import('./b') would be resolved as ESM (no extension guessing): make it a require, like the modules' static imports.
    supported: { 'dynamic-import': false },
    sourcemap: 'inline',
  });
  // migrate.ts reads its SQL files next to itself.
  const migrations = path.join(root, 'runtime', 'migrations');
  if (existsSync(migrations)) cpSync(migrations, path.join(outDir, 'runtime', 'migrations'), { recursive: true });
  return path.join(outDir, path.relative(root, path.resolve(root, entry))).replace(/\.ts$/, '.js');
}
