/**
 * The README's "Use the runtime from your own API server (Ganymede)" snippet is the file the package-install
 * integration test compiles and runs (docs/examples/ganymede.ts), verbatim.
 */
import { strict as assert } from 'assert';
import { readFileSync } from 'fs';
import * as path from 'path';

const ROOT = path.resolve(__dirname, '..', '..');

describe('package docs', () => {
  it('README "Use the runtime from your own API server" shows docs/examples/ganymede.ts verbatim', () => {
    const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    const snippet = readFileSync(path.join(ROOT, 'docs', 'examples', 'ganymede.ts'), 'utf8');
    const heading = '## Use the runtime from your own API server (Ganymede)';
    const section = readme.slice(readme.indexOf(heading));
    assert.ok(readme.includes(heading), 'the section exists');
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
