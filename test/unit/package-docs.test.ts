/**
 * The README's "Use from Ganymede" snippet is the file the package-install
 * integration test compiles and runs (docs/examples/ganymede.ts), verbatim.
 */
import { strict as assert } from 'assert';
import { readFileSync } from 'fs';
import * as path from 'path';

const ROOT = path.resolve(__dirname, '..', '..');

describe('package docs', () => {
  it('README "Use from Ganymede" shows docs/examples/ganymede.ts verbatim', () => {
    const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    const snippet = readFileSync(path.join(ROOT, 'docs', 'examples', 'ganymede.ts'), 'utf8');
    const section = readme.slice(readme.indexOf('### Use from Ganymede'));
    assert.ok(readme.includes('### Use from Ganymede'), 'the section exists');
    assert.ok(section.includes('```ts\n' + snippet + '```'), 'the snippet is the compiled example, unchanged');
  });

  it('the runtime package lists only what it uses: pg as a peer, no @pulumi/*, no HTTP library', () => {
    const manifest = JSON.parse(readFileSync(path.join(ROOT, 'runtime', 'package.json'), 'utf8')) as {
      dependencies?: Record<string, string>;
      peerDependencies?: Record<string, string>;
    };
    assert.deepEqual(Object.keys(manifest.dependencies ?? {}), ['@types/pg']);
    assert.match(manifest.peerDependencies?.pg ?? '', /^\^8\./);
  });
});
