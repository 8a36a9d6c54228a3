/**
 * Ships a runtime CLI (e.g. runtime/cli/tls-renew.ts) into a container as
 * plain CommonJS, without a registry, an image build from the repository
 * root, or a `npm run build` before `pulumi up`: the entry and the relative
 * modules it imports are transpiled here with the TypeScript compiler the
 * Pulumi program already runs on, and uploaded as files (docker Container
 * `uploads`). A change to any of them changes the uploads, which replaces the
 * container with the new code.
 *
 * Only Node built-ins may be imported besides relative modules (the container
 * has a bare Node.js, no node_modules); anything else fails the program with
 * the offending import, before any resource is declared.
 */
import { readFileSync } from 'fs';
import { builtinModules } from 'module';
import * as path from 'path';
import * as ts from 'typescript';

export const REPO_ROOT = path.resolve(__dirname, '..');

export interface BundledFile {
  /** Repository-relative path of the emitted file, e.g. runtime/tls/renew.js. */
  path: string;
  content: string;
}

// Value imports only: `import type` / `export type` are erased by the compiler.
const IMPORT_RE = /(?:^|\n)\s*(import|export)\s+(type\s+)?(?:[^'";]*?\sfrom\s+)?['"]([^'"]+)['"]|require\(\s*['"]([^'"]+)['"]\s*\)/g;

function isBuiltin(spec: string): boolean {
  const name = spec.startsWith('node:') ? spec.slice(5) : spec;
  return builtinModules.includes(name) || builtinModules.includes(name.split('/')[0]);
}

const cache = new Map<string, BundledFile[]>();

/** The entry (repository-relative .ts) and its relative imports, transpiled to CommonJS, entry first. */
export function bundleRuntimeEntry(entry: string, root: string = REPO_ROOT): BundledFile[] {
  const key = `${root}\0${entry}`;
  const cached = cache.get(key);
  if (cached) return cached.map((f) => ({ ...f }));
  const out: BundledFile[] = [];
  const seen = new Set<string>();
  const visit = (rel: string, from: string): void => {
    const normalized = rel.replace(/\\/g, '/');
    if (seen.has(normalized)) return;
    seen.add(normalized);
    let source: string;
    try {
      source = readFileSync(path.join(root, normalized), 'utf8');
    } catch {
      throw new Error(`runtime bundle: cannot read ${normalized} (imported by ${from})`);
    }
    const js = ts.transpileModule(source, {
      fileName: normalized,
      compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true, removeComments: false },
    }).outputText;
    out.push({ path: normalized.replace(/\.ts$/, '.js'), content: js });
    for (const m of source.matchAll(IMPORT_RE)) {
      if (m[2] !== undefined) continue;
      const spec = m[3] ?? m[4];
      if (spec === undefined) continue;
      if (spec.startsWith('.')) {
        visit(path.posix.join(path.posix.dirname(normalized), `${spec}.ts`), normalized);
      } else if (!isBuiltin(spec)) {
        throw new Error(`runtime bundle: ${normalized} imports ${JSON.stringify(spec)}; ${entry} must use Node built-ins only (it runs from a bare Node.js)`);
      }
    }
  };
  visit(entry, entry);
  cache.set(key, out);
  return out.map((f) => ({ ...f }));
}
