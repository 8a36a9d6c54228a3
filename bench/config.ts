/** The bench's options, sizes and fixed ports, read once from the command line. */
import * as path from 'path';
import { performance } from 'perf_hooks';
import { readEnvFile, testServicesOf, type TestServices } from '../test/helpers/services-env';

export const ROOT = path.resolve(__dirname, '..');
export const RESULTS_DIR = path.join(ROOT, 'bench', 'results');
// Ports of this suite only. Like every fixed port of the test set-up they lie below Linux's
// ephemeral range (test/unit/fixed-ports.test.ts), so no outgoing connection can hold one.
export const HTTPS_PORT = 29443;
export const STATUS_PORT = 29099;
/** Row 5: the same stage-1 nginx proxying to one static upstream (no route lookup). */
export const STATIC_PROXY_PORT = 29444;
/** The stand-in gateways (one nginx on every 127.0.x.y). */
export const STAND_IN_PORT = 29180;
export const SCALE_BURST_CONCURRENCY = 64;
/** Every Nth allocation is also looked up in PowerDNS (UDP) the moment it resolves. */
export const DNS_SAMPLE_EVERY = 8;
export const PG_POOL_MAX = 20; // the allocator's default

const USAGE = 'usage: npm run bench [-- --quick] [-- --no-readme] [-- --profile] [-- --only-routing] [-- --dns-api]';
const args = new Set(process.argv.slice(2));
for (const a of args) {
  if (!['--quick', '--no-readme', '--profile', '--only-routing', '--dns-api'].includes(a)) {
    console.error(`unknown option ${a}; ${USAGE}`);
    process.exit(2);
  }
}
export const QUICK = args.has('--quick');
/** Row 5 alone (stage 1 vs the static proxy): no seed baseline, no other phase, no results files written. */
export const ONLY_ROUTING = args.has('--only-routing');
/**
 * How the measured allocator writes DNS: `tables` (default, as the environment: PowerDNS's own
 * tables plus a cache purge) or `api` (--dns-api: one PATCH per batch, the previous design, for
 * interleaved comparisons in one sitting). A run with --dns-api never rewrites the docs.
 */
export const DNS_WRITES: 'tables' | 'api' = args.has('--dns-api') ? 'api' : 'tables';
export const WRITE_README = !QUICK && !ONLY_ROUTING && DNS_WRITES === 'tables' && !args.has('--no-readme');

export interface BenchConfig {
  poolSize: number;
  reps: number;
  concurrency: number[];
  opsPerRep: Record<number, number>;
  scaleOrgs: number[];
  scaleSequentialOps: number;
  scaleBurstOps: number;
  /**
   * Sequential allocations (then their releases) per repetition of the seed's algorithm: as many as the
   * allocator's concurrency-1 rows, the conditions of issue #16's own measurement of it (2.9/s). Its
   * first-ready walk reads every allocated state file first, so each allocation costs more than the one
   * before: the figure depends on how many are outstanding, and this is the same count as ours.
   */
  seedOpsPerRep: number;
  patchProbes: number;
  profile: boolean;
  /** Row 5: seconds of each wrk run, and its connections. */
  wrkSeconds: number;
  wrkConnections: number;
  /**
   * Row 5: back-to-back pairs (stage 1 and the static proxy) of saturating wrk runs. Each pair's order
   * alternates, so a machine that speeds up or slows down within a pair (a VM's host, a neighbour) counts
   * against each side equally often.
   */
  wrkThroughputPairs: number;
  /** Row 5: runs of the alternating one-connection latency client (bench/routing.ts, alternatingLatency). */
  latencyRounds: number;
  latencySeconds: number;
}

export const CONFIG: BenchConfig = QUICK
  ? {
      poolSize: 200,
      reps: 3,
      concurrency: [1, 16, 64],
      opsPerRep: { 1: 15, 16: 48, 64: 128 },
      scaleOrgs: [10, 300],
      scaleSequentialOps: 8,
      scaleBurstOps: 64,
      seedOpsPerRep: 15,
      patchProbes: 1,
      profile: args.has('--profile'),
      wrkSeconds: 1,
      wrkConnections: 16,
      wrkThroughputPairs: 4,
      latencyRounds: 2,
      latencySeconds: 1,
    }
  : {
      poolSize: 1000,
      reps: 3,
      concurrency: [1, 16, 64, 256],
      opsPerRep: { 1: 100, 16: 400, 64: 960, 256: 960 },
      scaleOrgs: [10, 1000, 5000],
      scaleSequentialOps: 25,
      scaleBurstOps: 128,
      seedOpsPerRep: 100,
      patchProbes: 2,
      profile: true,
      wrkSeconds: 2,
      wrkConnections: 32,
      wrkThroughputPairs: 32,
      latencyRounds: 4,
      latencySeconds: 5,
    };
export const scalePoolSize = Math.max(CONFIG.poolSize, Math.max(...CONFIG.scaleOrgs) + CONFIG.scaleBurstOps + 72);

const t0 = performance.now();
export function elapsedS(): number {
  return (performance.now() - t0) / 1000;
}
export function log(msg: string): void {
  process.stdout.write(`[bench ${elapsedS().toFixed(1).padStart(6)}s] ${msg}\n`);
}

export function readServices(): TestServices {
  const file = path.join(ROOT, '.test-services', 'env');
  return testServicesOf(readEnvFile(file, `${file} missing: run \`bash scripts/test-services.sh up\` first (scripts/bench.sh does)`));
}
