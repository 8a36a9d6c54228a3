/** The run's figures put together: the results document (bench/results/*.json) and its targets. */
import { DNS_SAMPLE_EVERY, DNS_WRITES, PG_POOL_MAX, QUICK, SCALE_BURST_CONCURRENCY, CONFIG, scalePoolSize } from './config';
import { stageRows } from './figures';
import { ZONE_DESCRIPTION, type DnsWriteCost } from './pdns-probes';
import type { ConcurrencyPhase } from './phases';
import type { BurstResult } from './protocol';
import type { BenchResults, OpFigures, RoutingFigures, ScaleFigures, TargetResult } from './results-types';
import type { SeedRep } from './seed-baseline';
import type { MachineFacts } from './system';
import { latencySummary, round, spread, type Spread } from './stats';

export interface RunFigures {
  runId: string;
  durationS: number;
  machine: MachineFacts;
  seed: { reps: SeedRep[]; allocate: OpFigures; release: OpFigures };
  conc: ConcurrencyPhase;
  routing: RoutingFigures;
  scale: ScaleFigures[];
  dnsWrites: BenchResults['profile']['dnsWrites'];
  everyBurst: BurstResult[];
  rssByPhase: Record<string, number>;
  /** Rows measured elsewhere (rows 1-2, bench/realised/): their targets join the table, their sections the report. */
  extra?: { targets: TargetResult[]; sections: Array<{ title: string; markdown: string }> };
}

export function dnsWriteFigures(runs: DnsWriteCost[][]): BenchResults['profile']['dnsWrites'] {
  return runs[0].map((first, i) => ({
    variant: first.variant,
    rrsetsPerOrg: first.rrsetsPerOrg,
    publishMs: spread(runs.map((r) => r[i].publishMs)),
    withdrawMs: spread(runs.map((r) => r[i].withdrawMs)),
    postgresCpuMsPerOrg: spread(runs.map((r) => r[i].postgresCpuMsPerOrg)),
    powerdnsCpuMsPerOrg: spread(runs.map((r) => r[i].powerdnsCpuMsPerOrg)),
  }));
}

const sum = (bs: BurstResult[], f: (b: BurstResult) => number): number => bs.reduce((n, b) => n + f(b), 0);

function targetsOf(r: Omit<BenchResults, 'targets'>, reloads64: number, allocs64: number, allAllocs: number): TargetResult[] {
  const t: TargetResult[] = [];
  const at = (c: number): BenchResults['concurrency'][number] | undefined => r.concurrency.find((x) => x.concurrency === c);
  const c64 = at(64);
  if (c64) {
    t.push({ id: 'throughput', row: 3, description: 'allocate throughput at concurrency 64 (pool of 1,000; durable, published, live when it resolves)', target: '>= 1,000/s', measured: `${round(c64.allocate.throughput.median, 0)}/s (min ${round(c64.allocate.throughput.min, 0)}, max ${round(c64.allocate.throughput.max, 0)})`, pass: c64.allocate.throughput.median >= 1000 });
    t.push({ id: 'p99', row: 3, description: 'p99 allocate latency at concurrency 64', target: '<= 100 ms', measured: `${round(c64.allocate.p99.median, 1)} ms (min ${round(c64.allocate.p99.min, 1)}, max ${round(c64.allocate.p99.max, 1)})`, pass: c64.allocate.p99.median <= 100 });
  }
  const c256 = at(256);
  if (c256) t.push({ id: 'c256', row: 3, description: 'allocate at concurrency 256', target: 'reported', measured: `${round(c256.allocate.throughput.median, 0)}/s, p50 ${round(c256.allocate.p50.median, 1)} ms, p99 ${round(c256.allocate.p99.median, 1)} ms`, pass: null });
  t.push({
    id: 'live',
    row: 3,
    description: `allocations answered before their route was live (every allocation of the run checked through stage-1 HTTPS; every ${DNS_SAMPLE_EVERY}th also in PowerDNS)`,
    target: '0',
    measured: `${r.liveness.notLive} of ${r.liveness.checked} (DNS: ${r.liveness.dnsMissing} of ${r.liveness.dnsChecked} not yet answered by PowerDNS)`,
    pass: r.liveness.notLive === 0 && r.liveness.checked === allAllocs && r.liveness.dnsMissing === 0,
  });
  t.push({ id: 'reloads', row: 3, description: 'nginx reloads per allocation in the concurrency-64 phase', target: '<= 1 per 20', measured: `${reloads64} reloads for ${allocs64} allocations`, pass: reloads64 * 20 <= allocs64 });
  if (c64) {
    const ratio = c64.vsBaseline.allocateThroughput;
    t.push({ id: 'vs-seed', row: 4, description: "allocate throughput at concurrency 64 vs the seed's algorithm (sequential) in the same run", target: '>= 300x', measured: `${round(ratio, 0)}x (${round(c64.allocate.throughput.median, 0)}/s vs ${round(r.baseline.allocate.throughput.median, 2)}/s)`, pass: ratio >= 300 });
  }
  const rt = r.routing;
  // Medians of the back-to-back pairs (see RoutingFigures.pairs).
  const rpsRatio = rt.pairs.requestsPerSRatio.median;
  const addedP99 = rt.pairs.addedP99Ms.median;
  t.push({ id: 'routing-rps', row: 5, description: 'stage-1 requests/s (TLS, shared-dict route lookup per request) vs the same nginx proxying to a static upstream (wrk, loopback)', target: '>= 95%', measured: `${round(rpsRatio * 100, 1)}% (median of ${rt.pairs.requestsPerSRatio.min === rt.pairs.requestsPerSRatio.max ? 'one pair' : `back-to-back pairs, ${round(rt.pairs.requestsPerSRatio.min * 100, 0)}–${round(rt.pairs.requestsPerSRatio.max * 100, 0)}%`}; medians ${round(rt.stage1.requestsPerS.median, 0)}/s vs ${round(rt.staticProxy.requestsPerS.median, 0)}/s)`, pass: rpsRatio >= 0.95 && rt.stage1.errors === 0 });
  t.push({ id: 'routing-p99', row: 5, description: 'stage-1 p99 added to the static proxy p99 (one connection: no queueing)', target: '<= 0.2 ms', measured: `${addedP99 >= 0 ? '+' : ''}${round(addedP99, 3)} ms (median of the latency rounds' differences; medians ${round(rt.stage1.p99Ms.median, 3)} ms vs ${round(rt.staticProxy.p99Ms.median, 3)} ms)`, pass: addedP99 <= 0.2 });
  const small = r.scale[0];
  const big = r.scale[r.scale.length - 1];
  const scaleRatio = big.sequentialAllocate.p50.median / small.sequentialAllocate.p50.median;
  t.push({ id: 'scale', row: 6, description: `allocate latency (p50, sequential) with ${big.orgs.toLocaleString('en-US')} organizations allocated vs with ${small.orgs}`, target: '<= 2x', measured: `${round(scaleRatio, 2)}x (${round(big.sequentialAllocate.p50.median, 1)} ms vs ${round(small.sequentialAllocate.p50.median, 1)} ms)`, pass: scaleRatio <= 2 });
  const k = r.cost.per1000;
  t.push({ id: 'cost', row: 6, description: 'cost per 1,000 allocations and their 1,000 releases at concurrency 64', target: 'reported', measured: `${round(k.dnsPatches.median, 1)} PATCHes, ${round(k.dnsTableWrites.median, 1)} PowerDNS table writes (+ as many cache purges), ${round(k.nginxReloads.median, 1)} reloads, ${round(k.sqlStatements.median, 0)} SQL statements`, pass: null });
  return t;
}

export function assembleResults(f: RunFigures): BenchResults {
  const { conc, everyBurst } = f;
  const c64 = conc.reps64.flatMap((x) => [x.a, x.r]);
  const allocs64 = sum(c64.filter((b) => b.kind === 'allocate'), (b) => b.latencies.length);
  /** A count per 1,000 allocations (with their releases), per repetition: median, min, max. */
  const per1000Reps = (g: (b: BurstResult) => number): Spread => spread(conc.reps64.map(({ a, r }) => ((g(a) + g(r)) / Math.max(1, a.latencies.length)) * 1000));
  const reloads64 = sum(c64, (b) => b.metrics.nginxReloads);
  const checked = sum(everyBurst, (b) => b.checked);
  const notLive = everyBurst.flatMap((b) => b.notLive);
  const dnsMissing = everyBurst.flatMap((b) => b.dnsMissing);
  const allAllocs = sum(everyBurst.filter((b) => b.kind === 'allocate'), (b) => b.latencies.length);
  const cpuPer1000 = (k: string): number => round((conc.cpu64[k] / Math.max(1, allocs64)) * 1000, 0);
  const seedAllocations = f.seed.reps.reduce((n, r) => n + r.allocate.length, 0);
  const big = f.scale[f.scale.length - 1];
  const partial: Omit<BenchResults, 'targets'> = {
    version: 1,
    date: new Date().toISOString(),
    runId: f.runId,
    mode: QUICK ? 'quick' : 'full',
    dnsWrites: DNS_WRITES,
    durationS: round(f.durationS, 1),
    machine: f.machine,
    config: {
      zone: ZONE_DESCRIPTION,
      poolSize: CONFIG.poolSize,
      scalePoolSize,
      reps: CONFIG.reps,
      concurrency: CONFIG.concurrency,
      opsPerRep: Object.fromEntries(Object.entries(CONFIG.opsPerRep)),
      scaleOrgs: CONFIG.scaleOrgs,
      scaleSequentialOps: CONFIG.scaleSequentialOps,
      scaleBurstOps: CONFIG.scaleBurstOps,
      scaleBurstConcurrency: SCALE_BURST_CONCURRENCY,
      seedOpsPerRep: CONFIG.seedOpsPerRep,
      pgPoolMax: PG_POOL_MAX,
      nginxWorkers: 2,
    },
    baseline: {
      description:
        "the seed's algorithm (bench/seed/gateway-pool.sh, one bash per call): state files, first-ready walk, sed, one PowerDNS PATCH (curl), one per-organization TLS server block and one `nginx -s reload` per allocation (and per release), sequential; no database, no wait for the route to be live",
      allocate: f.seed.allocate,
      release: f.seed.release,
      allocations: seedAllocations,
      notLiveAtAnswer: f.seed.reps.reduce((n, r) => n + r.notLiveAtAnswer, 0),
      untilLiveMs: spread(f.seed.reps.map((r) => latencySummary(r.untilLive).p50)),
      per1000: { dnsPatches: 1000, nginxReloads: 1000, sqlStatements: 0 },
    },
    concurrency: conc.concurrency,
    scale: f.scale,
    routing: f.routing,
    cost: {
      phase: `concurrency 64 (${conc.reps64.length} repetitions of ${CONFIG.opsPerRep[64]} allocations and their releases)`,
      allocations: allocs64,
      releases: sum(c64.filter((b) => b.kind === 'release'), (b) => b.latencies.length),
      per1000: {
        dnsPatches: per1000Reps((b) => b.metrics.dnsPatches),
        dnsTableWrites: per1000Reps((b) => b.metrics.dnsTableWrites),
        dnsCacheFlushes: per1000Reps((b) => b.metrics.dnsCacheFlushes),
        nginxReloads: per1000Reps((b) => b.metrics.nginxReloads),
        nginxTests: per1000Reps((b) => b.metrics.nginxTests),
        sqlStatements: per1000Reps((b) => b.sqlStatements),
        storeRoundTrips: per1000Reps((b) => b.metrics.sqlRoundTrips),
      },
      allocationsPerReload: reloads64 > 0 ? round(allocs64 / reloads64, 1) : null,
      wholeRun: {
        allocations: allAllocs,
        releases: sum(everyBurst.filter((b) => b.kind === 'release'), (b) => b.latencies.length),
        dnsPatches: sum(everyBurst, (b) => b.metrics.dnsPatches),
        dnsTableWrites: sum(everyBurst, (b) => b.metrics.dnsTableWrites),
        nginxReloads: sum(everyBurst, (b) => b.metrics.nginxReloads),
        nginxTests: sum(everyBurst, (b) => b.metrics.nginxTests),
        sqlStatements: sum(everyBurst, (b) => b.sqlStatements),
      },
    },
    rss: {
      allocatorPeakMiB: round(Math.max(...Object.values(f.rssByPhase)), 1),
      byPhase: Object.fromEntries(Object.entries(f.rssByPhase).map(([k, v]) => [k, round(v, 1)])),
      nginxMiBAtMaxOrgs: round(big.nginxRssMiB, 1),
    },
    liveness: {
      method:
        "every allocation of the run (warm-up, all phases, fills) is followed, in the same tick allocate resolves, by an HTTPS request through stage-1 (CA-verified TLS over kept-alive connections, Host = the organization name); it counts as live only if answered 200 by that organization's own stand-in gateway",
      checked,
      notLive: notLive.length,
      examples: notLive.slice(0, 5),
      dnsMethod: `every ${DNS_SAMPLE_EVERY}th allocation is also asked to PowerDNS (UDP, A record of org-<uuid>.<domain>) in the same tick allocate resolves; it must answer NOERROR with the public IP`,
      dnsChecked: sum(everyBurst, (b) => b.dnsChecked),
      dnsMissing: dnsMissing.length,
      dnsExamples: dnsMissing.slice(0, 5),
    },
    profile: {
      phase: 'concurrency 64',
      stages: stageRows(c64.filter((b) => b.kind === 'allocate')),
      releaseStages: stageRows(c64.filter((b) => b.kind === 'release')),
      sequentialStages: stageRows(everyBurst.filter((b) => b.kind === 'allocate' && b.concurrency === 1 && b.ops === CONFIG.opsPerRep[1])),
      cpuMsPer1000: [
        { process: 'allocator (Node.js)', ms: cpuPer1000('allocator') },
        { process: 'nginx (master + workers, incl. the HTTPS checks)', ms: cpuPer1000('nginx') },
        { process: 'PostgreSQL (whole cluster)', ms: cpuPer1000('postgres'), note: 'shared with PowerDNS (gpgsql) and any other test running' },
        { process: 'PowerDNS', ms: cpuPer1000('powerdns') },
      ],
      cpu: conc.profileSummary,
      dnsWrites: f.dnsWrites,
    },
  };
  return { ...partial, targets: [...(f.extra?.targets ?? []), ...targetsOf(partial, reloads64, allocs64, allAllocs)], ...(f.extra ? { sections: f.extra.sections } : {}) };
}
