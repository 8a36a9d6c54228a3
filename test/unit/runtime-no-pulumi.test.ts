/**
 * The runtime (the allocator imported by the API server) must never depend on
 * Pulumi: it changes per-organization state outside the declarative graph.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as path from 'path';

const RUNTIME_DIR = path.resolve(__dirname, '..', '..', 'runtime');
const SOURCE_EXT = /\.(?:[cm]?[jt]s|tsx|jsx)$/;

/** import/export ... from '@pulumi/x', import('@pulumi/x'), require('@pulumi/x'), import '@pulumi/x'. */
const PULUMI_IMPORT =
  /(?:\bfrom\s*|\bimport\s*\(\s*|\brequire\s*\(\s*|\bimport\s+)(['"`])@pulumi\/[^'"`]*\1/;

function sourceFiles(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return entry.name === 'node_modules' ? [] : sourceFiles(full);
    return SOURCE_EXT.test(entry.name) ? [full] : [];
  });
}

export function pulumiImports(text: string): string[] {
  return text
    .split('\n')
    .map((line, i) => ({ line, n: i + 1 }))
    .filter(({ line }) => PULUMI_IMPORT.test(line))
    .map(({ line, n }) => `${n}: ${line.trim()}`);
}

describe('runtime/ never imports @pulumi/*', () => {
  it('the detector recognises every import form', () => {
    for (const line of [
      "import * as pulumi from '@pulumi/pulumi';",
      'import { Config } from "@pulumi/pulumi";',
      "import type { Output } from '@pulumi/pulumi/output';",
      "export { x } from '@pulumi/docker';",
      "const p = require('@pulumi/pulumi');",
      "const d = await import('@pulumi/command');",
      "import '@pulumi/random';",
    ]) {
      assert.equal(pulumiImports(line).length, 1, line);
    }
    assert.deepEqual(pulumiImports("// mentions @pulumi/pulumi in a comment\nconst s = 'pulumi';"), []);
  });

  it('no file under runtime/ imports @pulumi/*', () => {
    const files = sourceFiles(RUNTIME_DIR);
    assert.ok(files.length >= 2, 'runtime/ has sources');
    const offenders = files.flatMap((f) =>
      pulumiImports(fs.readFileSync(f, 'utf8')).map((hit) => `${path.relative(RUNTIME_DIR, f)}:${hit}`),
    );
    assert.deepEqual(offenders, [], `runtime/ must not depend on Pulumi:\n${offenders.join('\n')}`);
  });
});
