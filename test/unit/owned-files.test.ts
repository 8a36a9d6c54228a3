import { strict as assert } from 'assert';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { orgIdOfRouteFile, renderRoute, routeFileName, routeOwnerLine } from '../../runtime/nginx-config';
import { ABANDONED_TEMP_FILE_AGE_MS, isAbandonedTempFile, readOwnedFiles, removeAbandonedTempFiles, restore, tempFileFor, writeAtomic } from '../../runtime/owned-files';

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

  describe('abandoned temp files (a writer killed between write and rename)', () => {
    /** A pid that existed and is gone: a child that has exited. */
    const deadPid = (): number => {
      const child = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
      return Number(child.stdout);
    };
    const here = (exists: (pid: number) => boolean) => ({ host: os.hostname(), exists });

    it('the temp file of a write names its host and pid, so a dead writer can be told from a live one', () => {
      const name = path.basename(tempFileFor(path.join(dir, routeFileName(orgA))));
      assert.match(name, new RegExp(`^${routeFileName(orgA).replace(/\./g, '\\.')}\\.tmp-`));
      assert.equal(isAbandonedTempFile(name, 0, here(() => false)), true, 'writer gone from this host: abandoned');
      assert.equal(isAbandonedTempFile(name, 0, here(() => true)), false, 'writer alive: in use');
      assert.equal(isAbandonedTempFile(name, ABANDONED_TEMP_FILE_AGE_MS + 1, here(() => true)), true, 'older than any write: abandoned (a reused pid)');
      assert.equal(isAbandonedTempFile(name, 0, { host: 'another-host', exists: () => false }), false, 'another host: judged by age only');
      assert.equal(isAbandonedTempFile(routeFileName(orgA), ABANDONED_TEMP_FILE_AGE_MS * 10, here(() => false)), false, 'a final file is never a temp file');
    });

    it('removes only abandoned temp files of organization files, and is idempotent', async () => {
      const routeName = routeFileName(orgA);
      const dead = `${routeName}.tmp-${os.hostname()}.${deadPid()}-abc123`;
      const live = `${routeName}.tmp-${os.hostname()}.${process.pid}-def456`;
      const foreignFresh = `${routeFileName(orgB)}.tmp-another-host.42-ghi789`;
      const foreignOld = `${routeFileName(orgC)}.tmp-another-host.42-jkl012`;
      const oldFormatOld = `${routeName}.tmp-4242-mno345`;
      const notOurs = `notes.conf.tmp-${os.hostname()}.${deadPid()}-pqr678`;
      for (const n of [dead, live, foreignFresh, foreignOld, oldFormatOld, notOurs]) fs.writeFileSync(path.join(dir, n), '# owner=demiurge-allocator env=dev org=');
      const old = new Date(Date.now() - ABANDONED_TEMP_FILE_AGE_MS - 5_000);
      for (const n of [foreignOld, oldFormatOld]) fs.utimesSync(path.join(dir, n), old, old);
      const isOrgFile = (n: string) => orgIdOfRouteFile(n) !== undefined;
      assert.deepEqual((await removeAbandonedTempFiles(dir, isOrgFile)).sort(), [dead, foreignOld, oldFormatOld].sort());
      assert.deepEqual(fs.readdirSync(dir).sort(), [foreignFresh, live, notOurs].sort());
      assert.deepEqual(await removeAbandonedTempFiles(dir, isOrgFile), []);
      assert.deepEqual(await removeAbandonedTempFiles(path.join(dir, 'absent'), isOrgFile), [], 'a missing directory holds none');
    });
  });
});
