import { promises as fs } from 'fs';
import * as path from 'path';
import type { Pool } from 'pg';
import { inTransaction } from './pg-transaction';

export const MIGRATIONS_DIR = path.join(__dirname, 'migrations');

export interface MigrationResult {
  applied: string[];
  alreadyApplied: string[];
}

/** Quotes a schema identifier; the allocator only accepts simple lowercase names anyway. */
export function quoteSchema(schema: string): string {
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(schema)) {
    throw new Error(`schema name must match [a-z_][a-z0-9_]*, got ${JSON.stringify(schema)}`);
  }
  return `"${schema}"`;
}

async function readMigrations(): Promise<Array<{ id: string; sql: string }>> {
  const files = (await fs.readdir(MIGRATIONS_DIR)).filter((f) => /^\d{3}_[a-z0-9_]+\.sql$/.test(f)).sort();
  return Promise.all(files.map(async (f) => ({ id: f.replace(/\.sql$/, ''), sql: await fs.readFile(path.join(MIGRATIONS_DIR, f), 'utf8') })));
}

/**
 * Applies pending migrations in one transaction under a transaction-scoped
 * advisory lock, so several API-server processes may call it at start-up at once:
 * the first applies, the others wait and then find nothing to do.
 */
export async function migrate(pool: Pool, schema: string): Promise<MigrationResult> {
  const q = quoteSchema(schema);
  const migrations = await readMigrations();
  return inTransaction(
    pool,
    async (client) => {
      await client.query(`CREATE SCHEMA IF NOT EXISTS ${q}`);
      await client.query(`CREATE TABLE IF NOT EXISTS ${q}.schema_migrations (id text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`);
      const done = new Set((await client.query<{ id: string }>(`SELECT id FROM ${q}.schema_migrations`)).rows.map((r) => r.id));
      const applied: string[] = [];
      for (const m of migrations) {
        if (done.has(m.id)) continue;
        await client.query(m.sql.split('{{schema}}').join(q));
        await client.query(`INSERT INTO ${q}.schema_migrations (id) VALUES ($1)`, [m.id]);
        applied.push(m.id);
      }
      return { applied, alreadyApplied: [...done].sort() };
    },
    { lockKey: `demiurge-migrate:${schema}` },
  );
}
