/** File primitives of the stage-1 writers: atomic replacement, and reading back the files this environment owns. */
import { promises as fs } from 'fs';
import * as path from 'path';
import type { OwnedEntry } from './fenced-batch-writer';

/** Replaces `file` atomically (temp file + rename), with exactly `mode` and, if given, `owner`. */
export async function writeAtomic(file: string, content: string, mode = 0o644, owner?: { uid: number; gid: number }): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
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
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const owned: Array<OwnedEntry<string>> = [];
  for (const name of names) {
    const orgId = orgIdOf(name);
    if (!orgId) continue;
    const content = await readOrUndefined(path.join(dir, name));
    if (content !== undefined && content.startsWith(ownerPrefix(orgId))) owned.push({ orgId, content });
  }
  return owned;
}
