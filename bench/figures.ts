/** Turning repetitions into the report's figures (median with min and max). */
import { randomUUID } from 'crypto';
import type { GatewaySpec } from '../runtime/inventory';
import { gatewayHost } from '../test/helpers/fixtures';
import type { BurstResult } from './protocol';
import type { OpFigures, StageRow } from './results-types';
import type { SeedRep } from './seed-baseline';
import { latencySummary, round, spread } from './stats';

export function opFigures(bursts: BurstResult[]): OpFigures {
  const per = bursts.map((b) => ({ s: latencySummary(b.latencies), thr: (b.latencies.length / b.elapsedMs) * 1000 }));
  return {
    opsPerRep: bursts[0]?.ops ?? 0,
    throughput: spread(per.map((p) => p.thr)),
    p50: spread(per.map((p) => p.s.p50)),
    p95: spread(per.map((p) => p.s.p95)),
    p99: spread(per.map((p) => p.s.p99)),
    max: spread(per.map((p) => p.s.max)),
    errors: bursts.reduce((n, b) => n + b.errors.length, 0),
  };
}

/** A sequential baseline's figures: throughput is operations over the summed latencies. */
export function sequentialFigures(reps: SeedRep[], pick: (r: SeedRep) => number[]): OpFigures {
  const per = reps.map((r) => {
    const lat = pick(r);
    return { s: latencySummary(lat), thr: (lat.length / lat.reduce((a, b) => a + b, 0)) * 1000 };
  });
  return {
    opsPerRep: pick(reps[0]).length,
    throughput: spread(per.map((p) => p.thr)),
    p50: spread(per.map((p) => p.s.p50)),
    p95: spread(per.map((p) => p.s.p95)),
    p99: spread(per.map((p) => p.s.p99)),
    max: spread(per.map((p) => p.s.max)),
    errors: 0,
  };
}

/** `path:` rows first (the steps of one operation), then the batches, by time per operation. */
export function stageRows(bursts: BurstResult[]): StageRow[] {
  const ops = bursts.reduce((n, b) => n + b.latencies.length, 0);
  const totals = new Map<string, { count: number; ms: number }>();
  for (const b of bursts) {
    for (const [k, v] of Object.entries(b.stages)) {
      const t = totals.get(k) ?? { count: 0, ms: 0 };
      t.count += v.count;
      t.ms += v.ms;
      totals.set(k, t);
    }
  }
  const pathFirst = (x: StageRow): number => (x.stage.startsWith('path:') ? 0 : 1);
  return [...totals]
    .map(([stage, t]) => ({ stage, callsPer1000: round((t.count / Math.max(1, ops)) * 1000, 1), avgMs: round(t.ms / t.count, 2), msPerAllocation: round(t.ms / Math.max(1, ops), 2) }))
    .sort((a, b) => pathFirst(a) - pathFirst(b) || b.msPerAllocation - a.msPerAllocation);
}

export const orgsOf = (n: number): string[] => Array.from({ length: n }, () => randomUUID());

export function inventory(from: number, to: number, port: number): GatewaySpec[] {
  return Array.from({ length: to - from }, (_, k) => {
    const i = from + k;
    return { name: `gw-pool-bench-${i}`, host: gatewayHost(i), httpPort: port, vpnPort: 10_000 + (i % 50_000) };
  });
}

export function throwOnErrors(b: BurstResult, what: string): void {
  if (b.errors.length > 0) {
    const codes = [...new Set(b.errors.map((e) => e.code))].join(', ');
    throw new Error(`${what}: ${b.errors.length} of ${b.ops} failed (${codes}); first: ${b.errors[0].message}`);
  }
}
