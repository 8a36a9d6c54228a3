import { createHash } from 'crypto';
import type { Pool, PoolClient } from 'pg';
import { AllocatorError, asAllocatorError } from './errors';
import { stillHoldsSql } from './gateway-states';
import { quoteSchema } from './migrate';
import { inTransaction } from './pg-transaction';
import { assertGatewayName, assertOrganizationId } from './validation';

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** What a gateway pushes and pulls (the seed's `data`): Yjs state per project (base64) and its own state. */
export interface OrgDataSnapshot {
  yjs_state: Record<string, string>;
  gateway_state: { [key: string]: JsonValue };
}

export interface PushResult {
  version: number;
  /** When the server stored it. */
  storedAt: string;
  bytes: number;
  sha256: string;
}

export interface PullResult {
  version: number | null;
  /** The snapshot's own time (the gateway's `timestamp` if it sent one, else when it was stored); null for a new organization. */
  timestamp: string | null;
  data: OrgDataSnapshot | null;
  sha256: string | null;
}

export interface SnapshotInfo {
  version: number;
  timestamp: string;
  storedAt: string;
  bytes: number;
  sha256: string;
  gateway: string;
  restoredFrom: number | null;
}

export interface OrgDataStoreOptions {
  pg: Pool;
  /** Schema of the pool tables (the allocator's `schema`); default `gateway_pool`. */
  schema?: string;
  /** Largest accepted snapshot (its JSON text), default 16 MiB. */
  maxBytes?: number;
  /** Older snapshots kept besides the current one, for rollback; default 3. */
  keep?: number;
}

export interface PushWriter {
  gateway: string;
  /** Fences the push to one allocation: a gateway that was released and re-allocated cannot write with an old token. */
  allocationId?: string;
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
const MAX_PROJECTS = 10_000;

/**
 * Validates a snapshot's shape before anything is stored; returns its canonical
 * JSON text (what is stored and given back). Throws INVALID_SNAPSHOT naming the field.
 */
export function serializeSnapshot(input: unknown, maxBytes: number): { text: string; bytes: number } {
  const bad = (msg: string): never => {
    throw new AllocatorError('INVALID_SNAPSHOT', `invalid snapshot: ${msg}`);
  };
  if (typeof input !== 'object' || input === null || Array.isArray(input)) bad('data must be an object { yjs_state, gateway_state }');
  const obj = input as Record<string, unknown>;
  const extra = Object.keys(obj).filter((k) => k !== 'yjs_state' && k !== 'gateway_state');
  if (extra.length > 0) bad(`unknown field(s) ${extra.slice(0, 5).join(', ')}`);
  const yjs = obj.yjs_state;
  if (typeof yjs !== 'object' || yjs === null || Array.isArray(yjs)) bad('yjs_state must be an object mapping project ids to base64 strings');
  const entries = Object.entries(yjs as Record<string, unknown>);
  if (entries.length > MAX_PROJECTS) bad(`yjs_state has more than ${MAX_PROJECTS} projects`);
  for (const [project, state] of entries) {
    if (typeof state !== 'string' || state.length % 4 !== 0 || !BASE64.test(state)) bad(`yjs_state[${JSON.stringify(project.slice(0, 60))}] must be a base64 string`);
  }
  const gw = obj.gateway_state;
  if (typeof gw !== 'object' || gw === null || Array.isArray(gw)) bad('gateway_state must be an object');
  // Fixed key order, so the stored text does not depend on how the client ordered its fields.
  const text = JSON.stringify({ yjs_state: yjs, gateway_state: gw });
  const bytes = Buffer.byteLength(text, 'utf8');
  if (bytes > maxBytes) {
    throw new AllocatorError('PAYLOAD_TOO_LARGE', `snapshot is ${bytes} bytes; the limit is ${maxBytes}`, { bytes, maxBytes });
  }
  return { text, bytes };
}

/**
 * Organization data snapshots in PostgreSQL. A push is accepted only from the
 * gateway that holds the organization right now, and it serialises with
 * release on that gateway's row: a push either commits before the gateway is
 * released or fails with NOT_ALLOCATED, so an acknowledged push is never lost
 * to a concurrent stop.
 */
export class OrgDataStore {
  readonly maxBytes: number;
  readonly keep: number;
  private readonly pool: Pool;
  private readonly gateways: string;
  private readonly snapshots: string;

  constructor(opts: OrgDataStoreOptions) {
    const schema = quoteSchema(opts.schema ?? 'gateway_pool');
    this.pool = opts.pg;
    this.maxBytes = opts.maxBytes ?? 16 * 1024 * 1024;
    this.keep = opts.keep ?? 3;
    if (!Number.isInteger(this.maxBytes) || this.maxBytes < 1024) throw new AllocatorError('INVALID_CONFIG', 'maxBytes must be an integer >= 1024');
    if (!Number.isInteger(this.keep) || this.keep < 0 || this.keep > 100) throw new AllocatorError('INVALID_CONFIG', 'keep must be an integer 0..100');
    this.gateways = `${schema}.gateways`;
    this.snapshots = `${schema}.org_snapshots`;
  }

  async push(organizationId: string, data: unknown, writer: PushWriter, snapshotAt?: Date): Promise<PushResult> {
    assertOrganizationId(organizationId);
    assertGatewayName(writer.gateway);
    if (writer.allocationId !== undefined && !/^\d{1,19}$/.test(writer.allocationId)) throw new AllocatorError('INVALID_GATEWAY', 'allocationId must be a decimal integer');
    if (snapshotAt !== undefined && Number.isNaN(snapshotAt.getTime())) throw new AllocatorError('INVALID_SNAPSHOT', 'invalid snapshot: timestamp is not a valid date');
    const { text, bytes } = serializeSnapshot(data, this.maxBytes);
    const sha = createHash('sha256').update(text, 'utf8').digest();
    return this.tx('push failed', async (c) => {
      // Row lock on the holder: conflicts with release's UPDATE, and serialises pushes of this organization.
      const holder = await c.query<{ allocation_id: string }>(
        `SELECT g.allocation_id::text AS allocation_id FROM ${this.gateways} g
         WHERE g.name = $1 AND g.organization_id = $2 AND ${stillHoldsSql('g', 'coalesce($3::bigint, g.allocation_id)')}
         FOR UPDATE`,
        [writer.gateway, organizationId, writer.allocationId ?? null],
      );
      if (holder.rows.length === 0) {
        throw new AllocatorError('NOT_ALLOCATED', `gateway ${writer.gateway} does not hold organization ${organizationId}`, { organizationId, gateway: writer.gateway });
      }
      const cur = await c.query<{ version: string; snapshot_at: Date | null }>(
        // s.version: a bare `version` in ORDER BY would sort the text alias ('9' > '10').
        `SELECT s.version::text AS version, s.snapshot_at FROM ${this.snapshots} s WHERE s.organization_id = $1 ORDER BY s.version DESC LIMIT 1`,
        [organizationId],
      );
      const current = cur.rows[0];
      if (snapshotAt && current?.snapshot_at && snapshotAt.getTime() < current.snapshot_at.getTime()) {
        throw new AllocatorError('STALE_SNAPSHOT', `snapshot of ${snapshotAt.toISOString()} is older than the stored one (${current.snapshot_at.toISOString()})`, {
          organizationId,
          stored: current.snapshot_at.toISOString(),
        });
      }
      const version = current ? Number(current.version) + 1 : 1;
      const ins = await c.query<{ created_at: Date }>(
        `INSERT INTO ${this.snapshots} (organization_id, version, payload, sha256, gateway, allocation_id, snapshot_at)
         VALUES ($1, $2, $3, $4, $5, $6::bigint, $7) RETURNING created_at`,
        [organizationId, version, Buffer.from(text, 'utf8'), sha, writer.gateway, holder.rows[0].allocation_id, snapshotAt ?? null],
      );
      await this.prune(c, organizationId, version);
      return { version, storedAt: ins.rows[0].created_at.toISOString(), bytes, sha256: sha.toString('hex') };
    });
  }

  async pull(organizationId: string): Promise<PullResult> {
    assertOrganizationId(organizationId);
    return this.get(organizationId, null);
  }

  /** One stored version (current or kept), for inspection or rollback. */
  async get(organizationId: string, version: number | null): Promise<PullResult> {
    assertOrganizationId(organizationId);
    const rows = await this.q<{ version: string; payload: Buffer; sha256: Buffer; snapshot_at: Date | null; created_at: Date }>(
      // s.version: a bare `version` in ORDER BY would sort the text alias ('9' > '10').
      `SELECT s.version::text AS version, s.payload, s.sha256, s.snapshot_at, s.created_at FROM ${this.snapshots} s
       WHERE s.organization_id = $1 AND ($2::bigint IS NULL OR s.version = $2::bigint) ORDER BY s.version DESC LIMIT 1`,
      [organizationId, version],
      'pull failed',
    );
    const r = rows[0];
    if (!r) {
      if (version !== null) throw new AllocatorError('UNKNOWN_VERSION', `organization ${organizationId} has no snapshot version ${version}`, { organizationId, version });
      return { version: null, timestamp: null, data: null, sha256: null };
    }
    return {
      version: Number(r.version),
      timestamp: (r.snapshot_at ?? r.created_at).toISOString(),
      data: JSON.parse(r.payload.toString('utf8')) as OrgDataSnapshot,
      sha256: r.sha256.toString('hex'),
    };
  }

  /** The current and kept versions, newest first. */
  async history(organizationId: string): Promise<SnapshotInfo[]> {
    assertOrganizationId(organizationId);
    const rows = await this.q<{ version: string; sha256: Buffer; bytes: number; gateway: string; snapshot_at: Date | null; created_at: Date; restored_from: string | null }>(
      `SELECT version::text AS version, sha256, octet_length(payload) AS bytes, gateway, snapshot_at, created_at, restored_from::text AS restored_from
       FROM ${this.snapshots} s WHERE organization_id = $1 ORDER BY s.version DESC`,
      [organizationId],
      'history failed',
    );
    return rows.map((r) => ({
      version: Number(r.version),
      timestamp: (r.snapshot_at ?? r.created_at).toISOString(),
      storedAt: r.created_at.toISOString(),
      bytes: r.bytes,
      sha256: r.sha256.toString('hex'),
      gateway: r.gateway,
      restoredFrom: r.restored_from === null ? null : Number(r.restored_from),
    }));
  }

  /**
   * Makes a kept version current again (as a new version, so the bad one stays
   * inspectable). Refused while the organization holds a gateway: its next push
   * would overwrite the restored data; stop it first, or pass `force`.
   */
  async restore(organizationId: string, version: number, options: { force?: boolean; by?: string } = {}): Promise<PushResult> {
    assertOrganizationId(organizationId);
    if (!Number.isSafeInteger(version) || version < 1) throw new AllocatorError('UNKNOWN_VERSION', 'version must be a positive integer');
    return this.tx('restore failed', async (c) => {
      const held = await c.query<{ name: string }>(`SELECT name FROM ${this.gateways} WHERE organization_id = $1 FOR UPDATE`, [organizationId]);
      if (held.rows.length > 0 && !options.force) {
        throw new AllocatorError('ORGANIZATION_ACTIVE', `organization ${organizationId} holds gateway ${held.rows[0].name}; stop it before restoring data (or force)`, {
          organizationId,
          gateway: held.rows[0].name,
        });
      }
      // Serialise with pushes of an org without a gateway (restores only) through an advisory lock.
      await c.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [`demiurge-snapshot:${organizationId}`]);
      const src = await c.query<{ payload: Buffer; sha256: Buffer; snapshot_at: Date | null }>(
        `SELECT payload, sha256, snapshot_at FROM ${this.snapshots} WHERE organization_id = $1 AND version = $2`,
        [organizationId, version],
      );
      if (src.rows.length === 0) throw new AllocatorError('UNKNOWN_VERSION', `organization ${organizationId} has no snapshot version ${version}`, { organizationId, version });
      const top = await c.query<{ v: string }>(`SELECT max(version)::text AS v FROM ${this.snapshots} WHERE organization_id = $1`, [organizationId]);
      const next = Number(top.rows[0].v) + 1;
      const s = src.rows[0];
      const ins = await c.query<{ created_at: Date }>(
        `INSERT INTO ${this.snapshots} (organization_id, version, payload, sha256, gateway, snapshot_at, restored_from)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING created_at`,
        [organizationId, next, s.payload, s.sha256, options.by ?? 'restore', s.snapshot_at, version],
      );
      await this.prune(c, organizationId, next);
      return { version: next, storedAt: ins.rows[0].created_at.toISOString(), bytes: s.payload.length, sha256: s.sha256.toString('hex') };
    });
  }

  private async prune(c: PoolClient, organizationId: string, newest: number): Promise<void> {
    await c.query(`DELETE FROM ${this.snapshots} WHERE organization_id = $1 AND version <= $2`, [organizationId, newest - this.keep - 1]);
  }

  private async q<R extends Record<string, unknown>>(sql: string, params: unknown[], what: string): Promise<R[]> {
    try {
      return (await this.pool.query<R>(sql, params)).rows;
    } catch (err) {
      throw asAllocatorError(err, 'DATABASE_FAILED', what);
    }
  }

  private async tx<T>(what: string, fn: (c: PoolClient) => Promise<T>): Promise<T> {
    try {
      return await inTransaction(this.pool, fn);
    } catch (err) {
      throw asAllocatorError(err, 'DATABASE_FAILED', what);
    }
  }
}
