import { strict as assert } from 'assert';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { orgIdOfRouteFile, renderRoute, routeFileName, routeOwnerLine } from '../../runtime/nginx-config';
import { readOwnedFiles, removeAbandonedTempFiles } from '../../runtime/owned-files';
import { SpareFiles } from '../../runtime/spare-files';

describe('spare files (runtime/spare-files.ts: removed route files reused by later writes)', () => {
  const orgA = 'a3bb189e-8bf9-3888-9912-ace4e6543002';
  const orgB = 'b3bb189e-8bf9-3888-9912-ace4e6543002';
  let dir: string;
  const file = (org: string): string => path.join(dir, routeFileName(org));
  const spareNames = (): string[] => fs.readdirSync(dir).filter((n) => n.startsWith('.spare.tmp-'));
  const isOrgFile = (n: string): boolean => orgIdOfRouteFile(n) !== undefined;

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'spare-files-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('a removal keeps the inode; the next write fills it (exact text, mode 0644) under the new name, and no spare is left', async () => {
    const spares = new SpareFiles(dir);
    const long = renderRoute('dev', orgA, 'gw-pool-dev-0', '10.0.0.100', 7100) + '# a longer text than the next one\n';
    fs.writeFileSync(file(orgA), long, { mode: 0o600 }); // written by hand, unreadable for nginx's workers
    const inode = fs.statSync(file(orgA)).ino;
    await spares.remove(file(orgA));
    assert.equal(fs.existsSync(file(orgA)), false, 'removed under its name at once');
    assert.equal(spares.size, 1);
    assert.equal(spareNames().length, 1);
    const text = renderRoute('dev', orgB, 'gw-pool-dev-1', '10.0.0.1', 7101);
    await spares.write(file(orgB), text);
    assert.equal(fs.readFileSync(file(orgB), 'utf8'), text, 'the shorter text, nothing of the old one after it');
    assert.equal(fs.statSync(file(orgB)).ino, inode, 'the retired inode, no new one');
    assert.equal(fs.statSync(file(orgB)).mode & 0o777, 0o644);
    assert.equal(spares.size, 0);
    assert.deepEqual(fs.readdirSync(dir), [routeFileName(orgB)]);
  });

  it('spares are neither route files nor owned files (nginx and the reconcile never read them)', async () => {
    const spares = new SpareFiles(dir);
    fs.writeFileSync(file(orgA), renderRoute('dev', orgA, 'gw-0', '10.0.0.1', 7100));
    await spares.remove(file(orgA));
    const [spare] = spareNames();
    assert.equal(orgIdOfRouteFile(spare), undefined);
    assert.deepEqual(await readOwnedFiles(dir, orgIdOfRouteFile, (org) => `${routeOwnerLine('dev', org)} `), []);
  });

  it('removing an absent file does nothing; without a spare a write creates the file', async () => {
    const spares = new SpareFiles(dir);
    await spares.remove(file(orgA));
    assert.equal(spares.size, 0);
    await spares.write(file(orgA), 'text');
    assert.equal(fs.readFileSync(file(orgA), 'utf8'), 'text');
    assert.equal(fs.statSync(file(orgA)).mode & 0o777, 0o644);
  });

  it('a spare removed meanwhile (another process cleaned it up) is dropped and the write still lands', async () => {
    const spares = new SpareFiles(dir);
    fs.writeFileSync(file(orgA), 'old');
    await spares.remove(file(orgA));
    for (const n of spareNames()) fs.rmSync(path.join(dir, n));
    await spares.write(file(orgB), 'new');
    assert.equal(fs.readFileSync(file(orgB), 'utf8'), 'new');
    assert.equal(spares.size, 0);
    assert.deepEqual(fs.readdirSync(dir), [routeFileName(orgB)]);
  });

  it('keeps at most `max` spares: a removal beyond it unlinks', async () => {
    const spares = new SpareFiles(dir, 1);
    fs.writeFileSync(file(orgA), 'a');
    fs.writeFileSync(file(orgB), 'b');
    await spares.remove(file(orgA));
    await spares.remove(file(orgB));
    assert.equal(spares.size, 1);
    assert.equal(spareNames().length, 1);
    assert.equal(fs.readdirSync(dir).length, 1, 'the second file is gone, not kept');
  });

  it('clear() unlinks every spare it holds (a closing allocator leaves none)', async () => {
    const spares = new SpareFiles(dir);
    for (const org of [orgA, orgB]) {
      fs.writeFileSync(file(org), org);
      await spares.remove(file(org));
    }
    assert.equal(spareNames().length, 2);
    await spares.clear();
    assert.equal(spares.size, 0);
    assert.deepEqual(fs.readdirSync(dir), []);
    await spares.clear();
  });

  it("a dead process's spares are abandoned temp files: the clean-up removes them and keeps a live process's", async () => {
    const spares = new SpareFiles(dir);
    fs.writeFileSync(file(orgA), 'a');
    await spares.remove(file(orgA));
    const [live] = spareNames();
    const deadPid = Number(spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' }).stdout);
    const dead = `.spare.tmp-${os.hostname()}.${deadPid}-abc123`;
    fs.writeFileSync(path.join(dir, dead), 'stale');
    assert.deepEqual(await removeAbandonedTempFiles(dir, isOrgFile), [dead]);
    assert.deepEqual(spareNames(), [live]);
  });
});
