/**
 * Transpiles a worker and everything it imports (runtime/, soak/, bench/) to plain
 * JavaScript once per run. A worker is killed and replaced dozens of times; on
 * ts-node each replacement spends ~2-4 s of CPU compiling on this 2-core
 * machine (stealing it from the operations under test), as plain JS it starts
 * in a fraction of a second. The output lives inside the repository tree so
 * Node finds node_modules by walking up.
 */
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'fs';
import * as path from 'path';
import * as ts from 'typescript';

function resolveLocal(fromFile: string, spec: string): string | undefined {
  const base = path.resolve(path.dirname(fromFile), spec);
  for (const candidate of [`${base}.ts`, path.join(base, 'index.ts')]) {
    if (existsSync(candidate) && statSync(candidate).isFile()) return candidate;
  }
  return undefined;
}

/** Returns the path of the transpiled entry file. */
export function buildClosure(root: string, entry: string, outDir: string): string {
  rmSync(outDir, { recursive: true, force: true });
  const options: ts.CompilerOptions = {
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.CommonJS,
    esModuleInterop: true,
    sourceMap: false,
    inlineSourceMap: true,
  };
  const seen = new Set<string>();
  const queue = [path.resolve(root, entry)];
  while (queue.length > 0) {
    const file = queue.pop() as string;
    if (seen.has(file)) continue;
    seen.add(file);
    const text = readFileSync(file, 'utf8');
    for (const imp of ts.preProcessFile(text, true, true).importedFiles) {
      if (!imp.fileName.startsWith('.')) continue;
      const dep = resolveLocal(file, imp.fileName);
      if (dep) queue.push(dep);
    }
    const out = ts.transpileModule(text, { compilerOptions: options, fileName: file });
    const target = path.join(outDir, path.relative(root, file)).replace(/\.ts$/, '.js');
    mkdirSync(path.dirname(target), { recursive: true });
    writeFileSync(target, out.outputText);
  }
  // migrate.ts reads its SQL files next to itself.
  const migrations = path.join(root, 'runtime', 'migrations');
  if (existsSync(migrations)) cpSync(migrations, path.join(outDir, 'runtime', 'migrations'), { recursive: true });
  return path.join(outDir, path.relative(root, path.resolve(root, entry))).replace(/\.ts$/, '.js');
}
