import type { Pool } from 'pg';
import { AllocatorError } from './errors';
import { FencedBatchWriter, type ActionCondition, type FencedChange, type Guard, type OwnedEntry } from './fenced-batch-writer';
import type { OwnedRRset } from './reconcile-plan';
import { absolute, orgDnsNames, orgFqdn, orgWildcardFqdn, type UserContainerNaming } from './naming';
import type { PowerDnsClient, RRset, RRsetChange } from './powerdns-client';
import type { PowerDnsTables } from './powerdns-tables';

/** The PowerDNS comment account that marks records as written by this allocator. */
export const DNS_OWNER_ACCOUNT = 'demiurge-allocator';

const ORG_NAME_RE = /^(?:\*\.)?org-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.(.+)$/;

export interface DnsPublisherOptions {
  envName: string;
  domain: string;
  publicIp: string;
  ttl: number;
  /** nested (default): org name + `*.org-<uuid>` wildcard; flat: org name only (user containers resolve through `*.<domain>`). */
  naming?: UserContainerNaming;
}

/**
 * `onlyIf` makes an action conditional on the pool state, checked inside the
 * zone lock (see `Guard`): reconcile() uses it so it never withdraws records of
 * an allocation that started after it looked, nor re-publishes a released one.
 */
export interface DnsAction extends FencedChange {
  present: boolean;
}

/** The fence of an action and the guard that checks it (runtime/fenced-batch-writer.ts). */
export type { ActionCondition, Guard } from './fenced-batch-writer';

/** An organization's owned A RRsets, as listOwned reports them. */
export type OwnedRecords = OwnedEntry<OwnedRRset[]>;

/**
 * Publishes and withdraws organization records. All writes to a zone are
 * serialized across processes by a PostgreSQL advisory lock (PowerDNS has no
 * conflict detection; concurrent PATCHes can duplicate records on gpgsql), and
 * coalesced within a process so a burst is one write (FencedBatchWriter).
 *
 * With `tables` (PowerDNS's own database), a batch is one statement in its
 * tables followed by one zone-wide cache purge through the API; without, one
 * PATCH (which purges the zone's caches itself). Both write the same rows.
 */
export class DnsPublisher extends FencedBatchWriter<DnsAction, OwnedRRset[]> {
  protected readonly lockKey: string;

  constructor(
    private readonly client: PowerDnsClient,
    pool: Pool,
    private readonly opts: DnsPublisherOptions,
    guard: Guard,
    private readonly tables?: PowerDnsTables,
  ) {
    super(pool, guard);
    this.lockKey = `demiurge-dns-zone:${client.zone}`;
  }

  get patches(): number {
    return this.client.patchCalls;
  }

  /** Batches written to PowerDNS's tables, and the cache purges that followed them. */
  get tableWrites(): number {
    return this.tables?.writes ?? 0;
  }

  get cacheFlushes(): number {
    return this.client.flushCalls;
  }

  publish(orgId: string, onlyIf?: ActionCondition): Promise<void> {
    return this.submit(onlyIf ? { orgId, present: true, onlyIf } : { orgId, present: true });
  }

  withdraw(orgId: string): Promise<void> {
    return this.submit({ orgId, present: false });
  }

  ownerComment(orgId: string): string {
    return `owner=${DNS_OWNER_ACCOUNT} env=${this.opts.envName} org=${orgId}`;
  }

  changesFor(action: DnsAction): RRsetChange[] {
    const all = [orgFqdn(action.orgId, this.opts.domain), orgWildcardFqdn(action.orgId, this.opts.domain)];
    const wanted = new Set(orgDnsNames(action.orgId, this.opts.domain, this.opts.naming));
    // A withdrawal deletes both names whatever the scheme, and a flat publication deletes a
    // wildcard left from nested naming, so switching schemes leaves nothing behind.
    return all.map((name) =>
      action.present && wanted.has(name)
        ? {
            name: absolute(name),
            type: 'A',
            ttl: this.opts.ttl,
            changetype: 'REPLACE' as const,
            records: [{ content: this.opts.publicIp, disabled: false }],
            comments: [{ content: this.ownerComment(action.orgId), account: DNS_OWNER_ACCOUNT }],
          }
        : { name: absolute(name), type: 'A', changetype: 'DELETE' as const },
    );
  }

  /** The A RRsets in the zone owned by this allocator and environment, per organization (reconcile-plan judges them). */
  async listOwned(): Promise<OwnedRecords[]> {
    const owned = new Map<string, OwnedRRset[]>();
    const domainSuffix = absolute(this.opts.domain);
    const rrsets: RRset[] = this.tables ? await this.tables.listRRsets() : await this.client.listRRsets();
    for (const rr of rrsets) {
      if (rr.type !== 'A') continue;
      const m = ORG_NAME_RE.exec(rr.name);
      if (!m || m[2] !== domainSuffix) continue;
      const orgId = m[1];
      const ours = rr.comments.some((c) => c.account === DNS_OWNER_ACCOUNT && c.content === this.ownerComment(orgId));
      if (!ours) continue;
      const list = owned.get(orgId) ?? [];
      list.push({ name: rr.name, ttl: rr.ttl, records: rr.records.map((r) => ({ content: r.content, disabled: r.disabled })) });
      owned.set(orgId, list);
    }
    return [...owned].map(([orgId, content]) => ({ orgId, content }));
  }

  /**
   * One write for the whole batch, under the zone's lock: a PATCH, or one statement in
   * PowerDNS's tables and then a purge of its caches, so the next query (even of a name
   * whose NXDOMAIN it cached) reads the new rows. The purge comes after the commit: a
   * purge before it could let a query re-cache the old answer in between.
   */
  protected async write(actions: DnsAction[]): Promise<void> {
    const changes = actions.flatMap((a) => this.changesFor(a));
    if (!this.tables) return this.client.patch(changes);
    if (changes.length === 0) return;
    await this.tables.write(changes);
    try {
      await this.client.flushCache();
    } catch (err) {
      // The records are written; only PowerDNS's caches may still answer the old state (for at most their TTLs).
      const e = err as AllocatorError;
      throw new AllocatorError('DNS_FAILED', `records written, but PowerDNS's cache purge failed: ${e.message}`, {}, err);
    }
  }

  protected failure(err: unknown, patchSent: boolean): AllocatorError {
    // Before the PATCH only the lock failed and nothing changed; after it (COMMIT lost) the records were written.
    return new AllocatorError('DATABASE_FAILED', `DNS zone lock failed: ${(err as Error).message}`, patchSent ? {} : { notApplied: true }, err);
  }
}
