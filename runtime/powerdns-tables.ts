/**
 * Writes A RRsets straight into PowerDNS's own gpgsql tables (`records`,
 * `comments`) instead of through its HTTP API: one statement per batch, which
 * PostgreSQL runs as one transaction (all of it or nothing). What a PATCH did
 * through the API costs PowerDNS ≈5 statements per RRset and a new database
 * session per request; this is one round trip on a kept-alive connection
 * (docs/bench.md, "Row 3").
 *
 * What PowerDNS 4.7 needs of a row, for the zones the allocator writes
 * (Native, not DNSSEC-signed, API rectify off, no delegations or empty
 * non-terminals): the lowercase name without the trailing dot, `type`,
 * `content`, `ttl`, `prio` 0, `disabled`, `auth` true and `ordername` NULL —
 * exactly what the API writes for such a zone. `ordername` only matters for
 * DNSSEC (NSEC/NSEC3 ordering): rectify the zone before it is ever signed.
 * The ownership comment goes to `comments` (the API's per-RRset comments), so
 * the API, PowerDNS-Admin and listOwned() all see the same mark.
 *
 * PowerDNS's packet and query caches do not see these writes: the caller
 * purges them through the API afterwards (PowerDnsClient.flushCache).
 */
import type { Pool } from 'pg';
import { AllocatorError } from './errors';
import type { RRset, RRsetChange, RRsetComment } from './powerdns-client';

/** The arrays one batch statement takes: every name whose A RRset it replaces or deletes, and the rows it inserts. */
export interface RecordRows {
  /** Names (lowercase, no trailing dot) whose A records and comments are deleted first. */
  names: string[];
  records: { name: string[]; content: string[]; ttl: number[]; disabled: boolean[] };
  comments: { name: string[]; account: string[]; comment: string[] };
}

/** `Org-X.Example.` → `org-x.example`, as gpgsql stores names; refuses what PowerDNS would not store as given. */
export function storedName(fqdn: string): string {
  const name = fqdn.replace(/\.$/, '');
  if (name === '' || name !== name.toLowerCase() || /\s/.test(name)) throw new Error(`not a lowercase DNS name: ${JSON.stringify(fqdn)}`);
  return name;
}

/**
 * The rows of a batch of A RRset changes (REPLACE: delete then insert; DELETE:
 * delete), with PowerDNS's semantics: a REPLACE sets the RRset's records and
 * comments, a DELETE removes both. Other types at the same names are not touched.
 */
export function recordRowsOf(changes: readonly RRsetChange[]): RecordRows {
  const rows: RecordRows = { names: [], records: { name: [], content: [], ttl: [], disabled: [] }, comments: { name: [], account: [], comment: [] } };
  const seen = new Set<string>();
  for (const c of changes) {
    if (c.type !== 'A') throw new Error(`only A RRsets are written to the tables (got ${c.type} ${c.name})`);
    const name = storedName(c.name);
    if (seen.has(name)) throw new Error(`RRset ${c.name} appears twice in one batch`);
    seen.add(name);
    rows.names.push(name);
    if (c.changetype === 'DELETE') continue;
    if (c.ttl === undefined || !Number.isInteger(c.ttl) || c.ttl < 0) throw new Error(`REPLACE of ${c.name} needs a ttl`);
    for (const r of c.records ?? []) {
      rows.records.name.push(name);
      rows.records.content.push(r.content);
      rows.records.ttl.push(c.ttl);
      rows.records.disabled.push(r.disabled);
    }
    for (const m of c.comments ?? []) {
      rows.comments.name.push(name);
      rows.comments.account.push(m.account);
      rows.comments.comment.push(m.content);
    }
  }
  return rows;
}

/**
 * One statement: the zone's id, the deletes and the inserts as data-modifying
 * CTEs. They all run on the statement's one snapshot, so the deletes remove
 * only rows that existed before it and never the rows it inserts.
 */
export const WRITE_RECORDS_SQL = `WITH zone AS (SELECT id FROM domains WHERE name = $1),
old_records AS (DELETE FROM records r USING zone WHERE r.domain_id = zone.id AND r.type = 'A' AND r.name = ANY($2::text[]) RETURNING 1),
old_comments AS (DELETE FROM comments c USING zone WHERE c.domain_id = zone.id AND c.type = 'A' AND c.name = ANY($2::text[]) RETURNING 1),
new_records AS (
  INSERT INTO records (domain_id, name, type, content, ttl, prio, disabled, ordername, auth)
  SELECT zone.id, n, 'A', v, t, 0, d, NULL, true FROM zone, unnest($3::text[], $4::text[], $5::int[], $6::bool[]) AS x(n, v, t, d)
  RETURNING 1),
new_comments AS (
  INSERT INTO comments (domain_id, name, type, modified_at, account, comment)
  SELECT zone.id, n, 'A', $7::int, a, m FROM zone, unnest($8::text[], $9::text[], $10::text[]) AS y(n, a, m)
  RETURNING 1)
SELECT (SELECT count(*) FROM zone)::int AS zones, (SELECT count(*) FROM new_records)::int AS inserted`;

/** The A RRsets (records and comments) of names under the zone that start with `org-` or `*.org-`. */
const LIST_RECORDS_SQL = `SELECT r.name, r.ttl, r.content, r.disabled FROM records r JOIN domains d ON d.id = r.domain_id
 WHERE d.name = $1 AND r.type = 'A' AND (r.name LIKE 'org-%' OR r.name LIKE '*.org-%') ORDER BY r.name, r.id`;
const LIST_COMMENTS_SQL = `SELECT c.name, c.account, c.comment FROM comments c JOIN domains d ON d.id = c.domain_id
 WHERE d.name = $1 AND c.type = 'A' AND (c.name LIKE 'org-%' OR c.name LIKE '*.org-%') ORDER BY c.name, c.id`;

const NOT_CONNECTED = ['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH'];

/** PowerDNS's tables of one zone, reached through the `pdns` database's own pool. */
export class PowerDnsTables {
  /** Batches written (the bench's cost table counts them with PATCHes). */
  writes = 0;
  private readonly zone: string;

  constructor(
    private readonly pool: Pool,
    zone: string,
  ) {
    this.zone = storedName(zone);
  }

  /** Applies the changes in one transaction; DNS_FAILED (nothing written) if the zone does not exist. */
  async write(changes: readonly RRsetChange[]): Promise<void> {
    if (changes.length === 0) return;
    const rows = recordRowsOf(changes);
    this.writes += 1;
    let res: { rows: Array<{ zones: number; inserted: number }> };
    try {
      res = await this.pool.query(WRITE_RECORDS_SQL, [
        this.zone,
        rows.names,
        rows.records.name,
        rows.records.content,
        rows.records.ttl,
        rows.records.disabled,
        Math.floor(Date.now() / 1000),
        rows.comments.name,
        rows.comments.account,
        rows.comments.comment,
      ]);
    } catch (err) {
      // One statement: PostgreSQL's own error (an SQLSTATE) or no connection means all of it was rolled back;
      // a connection lost while it ran may have lost only the answer to its COMMIT.
      const code = (err as { code?: unknown }).code;
      const notApplied = typeof code === 'string' && (/^[0-9A-Z]{5}$/.test(code) || NOT_CONNECTED.includes(code));
      throw new AllocatorError('DNS_FAILED', `PowerDNS records write (${this.zone}) failed: ${(err as Error).message}`, { notApplied }, err);
    }
    if (res.rows[0]?.zones !== 1) throw new AllocatorError('DNS_FAILED', `PowerDNS zone ${this.zone} does not exist in its database`, { notApplied: true });
  }

  /** The zone's org A RRsets as the API lists them (absolute names), comments included. */
  async listRRsets(): Promise<RRset[]> {
    const [records, comments] = await Promise.all([this.pool.query(LIST_RECORDS_SQL, [this.zone]), this.pool.query(LIST_COMMENTS_SQL, [this.zone])]);
    const byName = new Map<string, RRset>();
    const rrset = (name: string, ttl: number): RRset => {
      let r = byName.get(name);
      if (!r) {
        r = { name: `${name}.`, type: 'A', ttl, records: [], comments: [] };
        byName.set(name, r);
      }
      return r;
    };
    for (const row of records.rows as Array<{ name: string; ttl: number; content: string; disabled: boolean }>) rrset(row.name, row.ttl).records.push({ content: row.content, disabled: row.disabled });
    for (const row of comments.rows as Array<{ name: string; account: string | null; comment: string }>) {
      const c: RRsetComment = { content: row.comment, account: row.account ?? '' };
      // A comment without records is an RRset PowerDNS would not list; keep it so reconcile sees (and cleans) it.
      (byName.get(row.name) ?? rrset(row.name, 0)).comments.push(c);
    }
    return [...byName.values()];
  }
}
