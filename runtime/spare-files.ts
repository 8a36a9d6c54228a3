/**
 * Retired route files kept for reuse, so that steady allocate/release cycles
 * create and free no inodes.
 *
 * Why: creating a file is the one costly step of a route write on some disks.
 * On a 2-core VM's ext4 (shared with PostgreSQL's and PowerDNS's commits) the
 * bench measured 24.9–51.6 ms per `writeFile` at concurrency 64, the path of
 * an allocation; filling an existing file and renaming it took ≈4.7 ms per
 * batch of 64 against 7.4–14 ms for creating them (docs/bench.md, row 3 and 4).
 *
 * How: a removal renames the organization's file to a spare name (atomic: the
 * next load finds no file, as after an unlink); a write fills a spare in place
 * (open, write, truncate, chmod: no new inode) and renames it to the
 * organization's name (atomic, as writeAtomic's temp file). Spares are this
 * process's own (`.spare.tmp-<host>.<pid>-<random>`, a temp-file name of
 * owned-files.ts, so `removeAbandonedTempFiles` removes a dead writer's, or any
 * older than a minute) and at most `max`. A spare is only an optimization: any
 * failure with one (removed by another process's clean-up, unreadable) drops
 * it and the write goes the usual way (writeAtomic).
 */
import { promises as fs } from 'fs';
import * as path from 'path';
import { SPARE_STEM, tempFileFor, writeAtomic } from './owned-files';

const ROUTE_FILE_MODE = 0o644;

export class SpareFiles {
  private readonly spares: string[] = [];

  constructor(
    private readonly dir: string,
    /** Spares kept at most; a removal beyond it unlinks. */
    private readonly max = 1024,
  ) {}

  /** How many spares this process holds. */
  get size(): number {
    return this.spares.length;
  }

  /** Replaces `file` atomically with `content` (mode 0644), from a spare when there is one. */
  async write(file: string, content: string): Promise<void> {
    for (let spare = this.spares.pop(); spare !== undefined; spare = this.spares.pop()) {
      if (await fillAndRename(spare, file, content)) return;
    }
    await writeAtomic(file, content, ROUTE_FILE_MODE);
  }

  /** Removes `file` (nothing when it is absent) and keeps its inode as a spare. */
  async remove(file: string): Promise<void> {
    if (this.spares.length >= this.max) return fs.rm(file, { force: true });
    const spare = tempFileFor(path.join(this.dir, SPARE_STEM));
    try {
      await fs.rename(file, spare);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    this.spares.push(spare);
  }

  /** Unlinks every spare (a closing allocator leaves none behind; a dead one's go by removeAbandonedTempFiles). */
  async clear(): Promise<void> {
    const all = this.spares.splice(0);
    await Promise.all(all.map((f) => fs.rm(f, { force: true }).catch(() => undefined)));
  }
}

/** Fills `spare` with `content` and renames it to `file`; false (spare dropped) when the spare cannot be used. */
async function fillAndRename(spare: string, file: string, content: string): Promise<boolean> {
  try {
    const handle = await fs.open(spare, 'r+');
    try {
      const bytes = Buffer.from(content, 'utf8');
      const { bytesWritten } = await handle.write(bytes, 0, bytes.length, 0);
      if (bytesWritten !== bytes.length) throw new Error(`short write to ${spare}`);
      await handle.truncate(bytes.length);
      // A retired file may have been written by hand with another mode; nginx's workers must read it.
      await handle.chmod(ROUTE_FILE_MODE);
    } finally {
      await handle.close();
    }
    await fs.rename(spare, file);
    return true;
  } catch {
    await fs.rm(spare, { force: true }).catch(() => undefined);
    return false;
  }
}
