import type { Pool } from 'pg';
import { Batcher } from './batcher';
import { AllocatorError } from './errors';
import type { ActionCondition } from './gateway-states';
import type { OwnedRRset } from './reconcile-plan';
import { absolute, orgDnsNames, orgFqdn, orgWildcardFqdn, type UserContainerNaming } from './naming';
import type { PowerDnsClient, RRsetChange } from './powerdns-client';
import { inTransaction } from './pg-transaction';

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
export type DnsAction = { orgId: string; present: boolean; onlyIf?: ActionCondition };

/** The fence of an action (defined with the state machine: runtime/gateway-states.ts). */
export type { ActionCondition } from './gateway-states';

/** Returns the subset of organization ids whose condition still holds, using the lock's own connection. */
export type Guard = (query: (sql: string, params: unknown[]) => Promise<Array<Record<string, unknown>>>, orgs: Array<{ orgId: string; onlyIf: ActionCondition }>) => Promise<Set<string>>;

/**
 * Publishes and withdraws organization records. All writes to a zone are
 * serialized across processes by a PostgreSQL advisory lock (PowerDNS has no
 * conflict detection; concurrent PATCHes can duplicate records on gpgsql), and
 * coalesced within a process so a burst is one PATCH.
 */
export class DnsPublisher {
  private readonly batcher: Batcher<DnsAction>;

  constructor(
    private readonly client: PowerDnsClient,
    private readonly pool: Pool,
    private readonly opts: DnsPublisherOptions,
    private readonly guard: Guard,
  ) {
    this.batcher = new Batcher((actions) => this.apply(actions));
  }

  get patches(): number {
    return this.client.patchCalls;
  }

  publish(orgId: string, onlyIf?: ActionCondition): Promise<void> {
    return this.batcher.submit(onlyIf ? { orgId, present: true, onlyIf } : { orgId, present: true });
  }

  withdraw(orgId: string): Promise<void> {
    return this.batcher.submit({ orgId, present: false });
  }

  idle(): Promise<void> {
    return this.batcher.idle();
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
  async listOwned(): Promise<Map<string, OwnedRRset[]>> {
    const owned = new Map<string, OwnedRRset[]>();
    const domainSuffix = absolute(this.opts.domain);
    for (const rr of await this.client.listRRsets()) {
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
    return owned;
  }

  /** One PATCH for many actions, under the zone's cross-process lock. */
  async apply(actions: DnsAction[]): Promise<void> {
    if (actions.length === 0) return;
    // Last action per organization wins: actions for one org are issued in order by its single owner.
    const latest = new Map<string, DnsAction>();
    for (const a of actions) latest.set(a.orgId, a);
    let patchSent = false;
    try {
      await inTransaction(
        this.pool,
        async (client) => {
          const conditional = [...latest.values()].flatMap((a) => (a.onlyIf ? [{ orgId: a.orgId, onlyIf: a.onlyIf }] : []));
          const holds = conditional.length > 0 ? await this.guard(async (sql, params) => (await client.query(sql, params)).rows, conditional) : new Set<string>();
          const rrsets = [...latest.values()].filter((a) => !a.onlyIf || holds.has(a.orgId)).flatMap((a) => this.changesFor(a));
          patchSent = true;
          await this.client.patch(rrsets);
        },
        { lockKey: `demiurge-dns-zone:${this.client.zone}` },
      );
    } catch (err) {
      if (err instanceof AllocatorError) throw err;
      // Before the PATCH only the lock failed and nothing changed; after it (COMMIT lost) the records were written.
      throw new AllocatorError('DATABASE_FAILED', `DNS zone lock failed: ${(err as Error).message}`, patchSent ? {} : { notApplied: true }, err);
    }
  }
}
