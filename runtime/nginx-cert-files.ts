/**
 * Per-organization certificate bundles (`<confDir>/certs/`), which nginx's
 * workers load per handshake. A bundle holds a private key: it is mode 0600
 * and owned by the worker user, and counts as written only once the workers
 * report they can read it (status server).
 */
import { promises as fs } from 'fs';
import * as path from 'path';
import type { Pool } from 'pg';
import type { AllocatorError } from './errors';
import { FencedBatchWriter, type ActionCondition, type Guard, type OwnedEntry } from './fenced-batch-writer';
import { certOwnerLine, orgCertFileName, orgIdOfCertFile, renderCertFile } from './nginx-config';
import { nginxLockFailure, nginxLockKey } from './nginx-lock';
import { readOrUndefined, readOwnedFiles, removeAbandonedTempFiles, writeAtomic } from './owned-files';
import type { LookupAnswer, Stage1Status } from './stage1-status';

export interface CertFileChange {
  orgId: string;
  /** Checked inside the config lock, as for routes. */
  onlyIf?: ActionCondition;
  /** Private key + chain (OrgCertificate.bundlePem); undefined removes the file. */
  bundlePem?: string;
}

type Owner = { uid: number; gid: number };

/** uid/gid of an nginx worker process, if `pid` is one in our PID namespace. */
async function nginxWorkerIds(pid: number): Promise<Owner | undefined> {
  try {
    const cmdline = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8');
    if (!cmdline.startsWith('nginx: worker process')) return undefined;
    const status = await fs.readFile(`/proc/${pid}/status`, 'utf8');
    const uid = /^Uid:\s+(\d+)/m.exec(status)?.[1];
    const gid = /^Gid:\s+(\d+)/m.exec(status)?.[1];
    return uid !== undefined && gid !== undefined ? { uid: Number(uid), gid: Number(gid) } : undefined;
  } catch {
    return undefined;
  }
}

/** The bundles' writer; `P` is the owner the bundles of a batch get, found before the lock is taken. */
export class CertFiles extends FencedBatchWriter<CertFileChange, string, Owner | undefined> {
  protected readonly lockKey: string;
  private workerIds: Promise<Owner | undefined> | undefined;

  constructor(
    pool: Pool,
    guard: Guard,
    confDir: string,
    /** `<confDir>/certs`. */
    readonly dir: string,
    private readonly envName: string,
    private readonly status: Stage1Status,
    /** nginx.conf's `user`, if given (NginxOptions.workerUser); else read from the worker that answers the status server. */
    private readonly workerUser: Owner | undefined,
    private readonly liveTimeoutMs: number,
  ) {
    super(pool, guard);
    this.lockKey = nginxLockKey(confDir);
  }

  /** What the allocator writes for a bundle (owner line first; PEM readers skip text before -----BEGIN). */
  renderFile(orgId: string, bundlePem: string): string {
    return renderCertFile(this.envName, orgId, bundlePem);
  }

  /** True when the organization's bundle file holds exactly this bundle (a repeated allocate need not rewrite it). */
  async fileMatches(orgId: string, bundlePem: string): Promise<boolean> {
    return (await readOrUndefined(path.join(this.dir, orgCertFileName(orgId))).catch(() => undefined)) === this.renderFile(orgId, bundlePem);
  }

  /** Certificate bundles this allocator owns for this environment, with their content. */
  listOwned(): Promise<Array<OwnedEntry<string>>> {
    return readOwnedFiles(this.dir, orgIdOfCertFile, (orgId) => `${certOwnerLine(this.envName, orgId)}\n`);
  }

  /** Temp files of bundle writes whose writer died before its rename (owned-files.ts); their names. */
  removeAbandonedTempFiles(): Promise<string[]> {
    return removeAbandonedTempFiles(this.dir, (name) => orgIdOfCertFile(name) !== undefined);
  }

  protected prepare(changes: CertFileChange[]): Promise<Owner | undefined> {
    return changes.some((c) => c.bundlePem !== undefined) ? this.bundleOwner() : Promise.resolve(undefined);
  }

  protected async write(changes: CertFileChange[], owner: Owner | undefined): Promise<void> {
    await fs.mkdir(this.dir, { recursive: true });
    for (const c of changes) {
      const file = path.join(this.dir, orgCertFileName(c.orgId));
      if (c.bundlePem === undefined) await fs.rm(file, { force: true });
      else await writeAtomic(file, this.renderFile(c.orgId, c.bundlePem), 0o600, owner);
    }
  }

  /** A written bundle counts only once the workers can read it (a root-owned 0600 key would fail every handshake). */
  protected async confirm(changes: CertFileChange[]): Promise<void> {
    const written = changes.filter((c) => c.bundlePem !== undefined).map((c) => c.orgId);
    if (written.length === 0) return;
    let last: LookupAnswer | undefined;
    await this.status.waitFor(
      async () => {
        last = await this.status.lookup(written);
        return !!last && written.every((id) => last?.certs?.[id] === true);
      },
      () =>
        `nginx workers cannot read the certificate bundle(s) of ${written.slice(0, 5).join(', ')} in ${this.dir}: ${
          last ? `status server answers ${JSON.stringify(last.certs ?? {}).slice(0, 200)}; run the allocator as root or as the worker user, or set nginx.workerUser` : 'status server does not answer'
        }`,
      // The file is in place before the first check, so a worker that still cannot read it soon never will.
      Math.min(this.liveTimeoutMs, 5_000),
    );
  }

  protected failure(err: unknown): AllocatorError {
    return nginxLockFailure(err);
  }

  /** The uid/gid bundles must belong to so the workers (not only the root master) can read them; undefined: leave as written. */
  private bundleOwner(): Promise<Owner | undefined> {
    if (!this.workerIds) {
      this.workerIds = (async () => {
        const ids = this.workerUser ?? (await this.detectWorkerIds());
        const me = process.getuid?.();
        // Only root can give a file away; a non-root allocator's files are readable by workers running as itself.
        return ids && me === 0 && ids.uid !== 0 ? ids : undefined;
      })();
      this.workerIds.then((ids) => {
        if (!ids && !this.workerUser) this.workerIds = undefined; // retry detection next time
      }, () => (this.workerIds = undefined));
    }
    return this.workerIds;
  }

  private async detectWorkerIds(): Promise<Owner | undefined> {
    const live = await this.status.lookup([]);
    return live?.pid ? nginxWorkerIds(live.pid) : undefined;
  }
}
