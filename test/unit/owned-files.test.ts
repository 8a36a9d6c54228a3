import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { orgIdOfRouteFile, renderRoute, routeFileName, routeOwnerLine } from '../../runtime/nginx-config';
import { readOwnedFiles, restore, writeAtomic } from '../../runtime/owned-files';

describe('owned files (runtime/owned-files.ts: what route and bundle writers read back and write)', () => {
  const orgA = 'a3bb189e-8bf9-3888-9912-ace4e6543002';
  const orgB = 'b3bb189e-8bf9-3888-9912-ace4e6543002';
  const orgC = 'c3bb189e-8bf9-3888-9912-ace4e6543002';
  let dir: string;
  const owned = (d: string) => readOwnedFiles(d, orgIdOfRouteFile, (orgId) => `${routeOwnerLine('dev', orgId)} `);

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'owned-files-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('lists only files named for an organization whose owner line is this environment', async () => {
    fs.writeFileSync(path.join(dir, routeFileName(orgA)), renderRoute('dev', orgA, 'gw-0', '10.0.0.1', 7100));
    fs.writeFileSync(path.join(dir, routeFileName(orgB)), renderRoute('prod', orgB, 'gw-0', '10.0.0.1', 7100));
    // Owner line of another organization than the file name says: not ours to judge.
    fs.writeFileSync(path.join(dir, routeFileName(orgC)), renderRoute('dev', orgA, 'gw-0', '10.0.0.1', 7100));
    fs.writeFileSync(path.join(dir, 'notes.conf'), 'hand-written');
    assert.deepEqual(await owned(dir), [{ orgId: orgA, content: renderRoute('dev', orgA, 'gw-0', '10.0.0.1', 7100) }]);
  });

  it('a missing directory owns nothing', async () => {
    assert.deepEqual(await owned(path.join(dir, 'absent')), []);
  });

  it('writes atomically with exactly the mode asked (umask notwithstanding), leaving no temporary file', async () => {
    const file = path.join(dir, 'bundle.pem');
    const umask = process.umask(0o077);
    try {
      await writeAtomic(file, 'secret', 0o640);
    } finally {
      process.umask(umask);
    }
    assert.equal(fs.statSync(file).mode & 0o777, 0o640);
    assert.deepEqual(fs.readdirSync(dir), ['bundle.pem']);
  });

  it('restore puts back the previous text, or removes a file that did not exist', async () => {
    const file = path.join(dir, 'orgs.conf');
    fs.writeFileSync(file, 'new');
    await restore(file, 'old');
    assert.equal(fs.readFileSync(file, 'utf8'), 'old');
    await restore(file, undefined);
    assert.equal(fs.existsSync(file), false);
  });
});
