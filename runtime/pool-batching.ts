/** Helpers of PoolStore's coalesced statements (one statement over arrays answers many calls; see Coalescer). */

/** An item of a statement fenced on (name, allocation id). */
export interface FencedRow {
  name: string;
  allocationId: string;
}

/** Items answered by a batched fenced UPDATE: true for those whose (name, allocation_id) it changed. */
export function matchFenced(items: FencedRow[], rows: Array<{ name: string; allocation_id: string }>): boolean[] {
  const done = new Set(rows.map((r) => `${r.name}\u0000${r.allocation_id}`));
  return items.map((i) => done.has(`${i.name}\u0000${i.allocationId}`));
}

/** Runs `fn` once per distinct key (a batch rarely mixes keys) and puts the answers back in item order. */
export async function groupedBy<I, K, O>(items: I[], key: (i: I) => K, fn: (group: I[], k: K) => Promise<O[]>): Promise<O[]> {
  const groups = new Map<K, number[]>();
  items.forEach((item, idx) => {
    const k = key(item);
    const g = groups.get(k);
    if (g) g.push(idx);
    else groups.set(k, [idx]);
  });
  const out = new Array<O>(items.length);
  for (const [k, idxs] of groups) {
    const answers = await fn(idxs.map((i) => items[i]), k);
    idxs.forEach((i, j) => (out[i] = answers[j]));
  }
  return out;
}

/** PostgreSQL broke a deadlock by failing this statement (it changed nothing). */
export function isDeadlock(err: unknown): boolean {
  return (err as { code?: string } | null)?.code === '40P01';
}

export function isUniqueViolation(err: unknown, constraint?: string): boolean {
  const e = err as { code?: string; constraint?: string } | null;
  return !!e && e.code === '23505' && (constraint === undefined || e.constraint === constraint);
}
