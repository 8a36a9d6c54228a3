/** Shape of bench/results/<date>.json (written by run.ts, rendered by report.ts). */
import type { ProfileSummary } from './protocol';
import type { Spread } from './stats';
import type { MachineFacts } from './system';

/** Throughput and latency figures of one operation, each the median of the repetitions (min, max kept). */
export interface OpFigures {
  opsPerRep: number;
  throughput: Spread;
  p50: Spread;
  p95: Spread;
  p99: Spread;
  max: Spread;
  errors: number;
}

export interface ConcurrencyFigures {
  concurrency: number;
  allocate: OpFigures;
  release: OpFigures;
  /** Median throughput / the seed baseline's median throughput; its median latency / median p50. */
  vsBaseline: { allocateThroughput: number; releaseThroughput: number; allocateP50Speedup: number };
}

export interface ScaleFigures {
  orgs: number;
  sequentialAllocate: OpFigures;
  sequentialRelease: OpFigures;
  burstAllocate: OpFigures;
  burstRelease: OpFigures;
  reload: { commandMs: Spread; untilNewServesMs: Spread; untilOldGoneMs: Spread };
  /**
   * One PowerDNS PATCH publishing one organization at this zone size: with the zone as the
   * environment creates it (rectify off, no SOA edit), with SOA-EDIT-API `DEFAULT` switched back
   * on, and with PowerDNS's defaults (rectify on too).
   */
  dnsPatchMs: { zoneSettings: Spread; soaEdit: Spread; pdnsDefaults: Spread };
  nginxRssMiB: number;
  routeFiles: number;
  vsBaseline: { allocateP50Speedup: number };
}

export interface TargetResult {
  id: string;
  /** The row of issue #16 the target belongs to (1-6). */
  row: number;
  description: string;
  target: string;
  measured: string;
  /** null: reported only (no target). */
  pass: boolean | null;
}

/** Row 5: wrk through stage 1 vs the same nginx proxying to a static upstream. */
export interface RoutingFigures {
  method: string;
  seconds: number;
  connections: number;
  stage1: RoutingSide;
  staticProxy: RoutingSide;
  /**
   * Per repetition, the two servers measured back to back: stage 1's requests/s over the static proxy's, and
   * its one-connection p99 minus the static proxy's. The targets use the medians of these pairs, so a change
   * of the machine's load between repetitions does not count as routing cost.
   */
  pairs: { requestsPerSRatio: Spread; addedP99Ms: Spread; /** Stage 1's worker CPU per request minus the static proxy's (µs). */ addedCpuUs: Spread };
}

/** One server of row 5. requestsPerS, saturatedP99Ms and workerCpuUsPerRequest from the saturating runs; p50Ms and p99Ms from the one-connection runs. */
export interface RoutingSide {
  requestsPerS: Spread;
  p50Ms: Spread;
  p99Ms: Spread;
  saturatedP99Ms: Spread;
  /** The stage-1 nginx's workers' CPU (user + system, /proc) per request, µs. */
  workerCpuUsPerRequest: Spread;
  errors: number;
}

export interface StageRow {
  stage: string;
  callsPer1000: number;
  avgMs: number;
  /** Summed wall time of the stage's calls per allocation (calls of a batch overlap many allocations). */
  msPerAllocation: number;
}

export interface BenchResults {
  version: 1;
  date: string;
  runId: string;
  mode: 'full' | 'quick';
  /** How the measured allocator wrote DNS: PowerDNS's tables (default) or API PATCHes (--dns-api). Absent in runs before it existed (PATCHes). */
  dnsWrites?: 'tables' | 'api';
  durationS: number;
  machine: MachineFacts;
  config: {
    /** How the bench's zone is created (see README: API rectify). */
    zone: string;
    poolSize: number;
    scalePoolSize: number;
    reps: number;
    concurrency: number[];
    opsPerRep: Record<string, number>;
    scaleOrgs: number[];
    scaleSequentialOps: number;
    scaleBurstOps: number;
    scaleBurstConcurrency: number;
    seedOpsPerRep: number;
    pgPoolMax: number;
    nginxWorkers: number;
  };
  baseline: {
    description: string;
    allocate: OpFigures;
    release: OpFigures;
    allocations: number;
    notLiveAtAnswer: number;
    untilLiveMs: Spread;
    per1000: { dnsPatches: number; nginxReloads: number; sqlStatements: number };
  };
  concurrency: ConcurrencyFigures[];
  scale: ScaleFigures[];
  routing: RoutingFigures;
  cost: {
    phase: string;
    allocations: number;
    releases: number;
    /** Per 1,000 allocations (with their 1,000 releases), concurrency-64 phase. */
    per1000: { dnsPatches: Spread; dnsTableWrites: Spread; dnsCacheFlushes: Spread; nginxReloads: Spread; nginxTests: Spread; sqlStatements: Spread; storeRoundTrips: Spread };
    allocationsPerReload: number | null;
    /** The same counts over the whole run (every phase, fills included). */
    wholeRun: { allocations: number; releases: number; dnsPatches: number; dnsTableWrites: number; nginxReloads: number; nginxTests: number; sqlStatements: number };
  };
  rss: { allocatorPeakMiB: number; byPhase: Record<string, number>; nginxMiBAtMaxOrgs: number };
  liveness: {
    method: string;
    checked: number;
    notLive: number;
    examples: Array<{ org: string; status: number; detail: string }>;
    dnsMethod: string;
    dnsChecked: number;
    dnsMissing: number;
    dnsExamples: Array<{ org: string; detail: string }>;
  };
  profile: {
    phase: string;
    /** Allocate bursts at concurrency 64: `path:` rows are one operation's steps (queueing included), the others batches. */
    stages: StageRow[];
    releaseStages: StageRow[];
    /** Allocate at concurrency 1 (phase 1): the same rows for a lone caller. */
    sequentialStages: StageRow[];
    cpuMsPer1000: Array<{ process: string; ms: number; note?: string }>;
    cpu: ProfileSummary | null;
    /** A 64-organization PATCH (publish, then withdraw) measured with the allocator idle, per way of writing the records. */
    dnsWrites: Array<{ variant: string; rrsetsPerOrg: number; publishMs: Spread; withdrawMs: Spread; postgresCpuMsPerOrg: Spread; powerdnsCpuMsPerOrg: Spread }>;
  };
  targets: TargetResult[];
  /** Sections other phases add (rows 1-2, the realised environment: bench/realised/), rendered after the targets. */
  sections?: Array<{ title: string; markdown: string }>;
}
