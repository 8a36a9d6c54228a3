/** File primitives of the stage-1 writers: atomic replacement, and reading back the files this environment owns. */
import { promises as fs } from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { OwnedEntry } from './fenced-batch-writer';

/**
 * A temp file's name says who writes it: `<file>.tmp-<host>.<pid>-<random>`.
 * A writer killed between write and rename (SIGKILL, OOM) leaves it behind;
 * `removeAbandonedTempFiles` can then tell a dead writer's file from a live one's.
 */
const TEMP_INFIX = '.tmp-';
const TEMP_NAME = /\.tmp-(.+)\.(\d+)-[a-z0-9]+$/;

/** Final-name stem of retired files kept for reuse (spare-files.ts): `<dir>/.spare.tmp-<host>.<pid>-<random>`. */
export const SPARE_STEM = '.spare';

/** A temp file older than this is abandoned whoever wrote it: a write + rename takes milliseconds. */
export const ABANDONED_TEMP_FILE_AGE_MS = 60_000;

/** The temp file a write of `file` by this process goes through (exported for tests). */
export function tempFileFor(file: string): string {
  return `${file}${TEMP_INFIX}${os.hostname()}.${process.pid}-${Math.random().toString(36).slice(2)}`;
}

/** Replaces `file` atomically (temp file + rename), with exactly `mode` and, if given, `owner`. */
export async function writeAtomic(file: string, content: string, mode = 0o644, owner?: { uid: number; gid: number }): Promise<void> {
  const tmp = tempFileFor(file);
  try {
    await fs.writeFile(tmp, content, { mode });
    // writeFile's mode is subject to the umask; a key bundle must be exactly 0600.
    await fs.chmod(tmp, mode);
    if (owner) await fs.chown(tmp, owner.uid, owner.gid);
    await fs.rename(tmp, file);
  } catch (err) {
    await fs.rm(tmp, { force: true }).catch(() => undefined);
    throw err;
  }
}

export async function readOrUndefined(file: string): Promise<string | undefined> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** The entries of `dir`; a missing directory has none. */
async function namesIn(dir: string): Promise<string[]> {
  try {
    return await fs.readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

/** Puts back what `readOrUndefined` returned before a write (undefined: the file did not exist). */
export async function restore(file: string, previous: string | undefined): Promise<void> {
  if (previous === undefined) await fs.rm(file, { force: true });
  else await writeAtomic(file, previous);
}

/**
 * The files of `dir` that belong to an organization (`orgIdOf` their name)
 * and whose text starts with `ownerPrefix` of it (this allocator and
 * environment), with their content. A missing directory owns nothing.
 */
export async function readOwnedFiles(dir: string, orgIdOf: (name: string) => string | undefined, ownerPrefix: (orgId: string) => string): Promise<Array<OwnedEntry<string>>> {
  const names = await namesIn(dir);
  const owned: Array<OwnedEntry<string>> = [];
  for (const name of names) {
    const orgId = orgIdOf(name);
    if (!orgId) continue;
    const content = await readOrUndefined(path.join(dir, name));
    if (content !== undefined && content.startsWith(ownerPrefix(orgId))) owned.push({ orgId, content });
  }
  return owned;
}

/** Whether process `pid` exists in this pid namespace (EPERM: it exists, owned by another user). */
function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Whether a temp file (by its name and age) was left by a writer that will
 * never rename it: written on this host by a process that no longer exists,
 * or older than `ABANDONED_TEMP_FILE_AGE_MS` (another host or pid namespace,
 * or a reused pid). A live writer's file is never taken: if a foreign
 * namespace shared our host name, the worst case is that its rename fails and
 * its batch is undone, never a half-written route.
 */
export function isAbandonedTempFile(name: string, ageMs: number, here = { host: os.hostname(), exists: processExists }): boolean {
  if (!name.includes(TEMP_INFIX)) return false;
  if (ageMs > ABANDONED_TEMP_FILE_AGE_MS) return true;
  const m = TEMP_NAME.exec(name);
  return !!m && m[1] === here.host && !here.exists(Number(m[2]));
}

/**
 * Removes the abandoned temp files of `dir` whose final name `isOwnedName`
 * accepts (this environment's org files), and the abandoned spares
 * (spare-files.ts), and returns their names. Idempotent; a missing directory
 * holds none.
 */
export async function removeAbandonedTempFiles(dir: string, isOwnedName: (finalName: string) => boolean, now = Date.now()): Promise<string[]> {
  const names = await namesIn(dir);
  const removed: string[] = [];
  for (const name of names) {
    const at = name.indexOf(TEMP_INFIX);
    if (at <= 0 || (name.slice(0, at) !== SPARE_STEM && !isOwnedName(name.slice(0, at)))) continue;
    const file = path.join(dir, name);
    const stat = await fs.stat(file).catch(() => undefined);
    if (!stat || !isAbandonedTempFile(name, now - stat.mtimeMs)) continue;
    await fs.rm(file, { force: true });
    removed.push(name);
  }
  return removed;
}
