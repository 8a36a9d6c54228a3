/**
 * Messages between the bench orchestrator (bench/run.ts) and the measured
 * allocator process (bench/worker.ts). The allocator runs in its own process
 * so its peak RSS and CPU time are its own, not the harness's.
 */

import type { GatewaySpec } from '../runtime/inventory';

export interface WorkerInit {
  envName: string;
  domain: string;
  pgUrl: string;
  pgMax: number;
  schema: string;
  powerdns: { apiUrl: string; apiKey: string; zone: string };
  /** PowerDNS's gpgsql database: records are written to its tables (undefined: PATCHes, --dns-api). */
  pdnsDbUrl?: string;
  nginx: {
    confDir: string;
    tls: { certPath: string; keyPath: string };
    listen: string;
    statusListen: string;
    testCommand: string[];
    reloadCommand: string[];
  };
  /** Where the "is it live?" HTTPS request goes: stage-1's TLS port, with the suite CA. */
  check: { port: number; caFile: string; servername: string; dnsPort: number; publicIp: string; dnsSampleEvery: number };
}

export type Request =
  | { id: number; type: 'init'; init: WorkerInit }
  | { id: number; type: 'register'; inventory: GatewaySpec[] }
  | { id: number; type: 'burst'; kind: 'allocate' | 'release'; orgs: string[]; concurrency: number; check: boolean }
  | { id: number; type: 'profile'; action: 'start' | 'stop' }
  | { id: number; type: 'close' };

/** Time and count of one instrumented stage (see worker.ts `instrument`). */
export interface StageTotals {
  count: number;
  ms: number;
}

export interface BurstResult {
  kind: 'allocate' | 'release';
  concurrency: number;
  ops: number;
  /** Per successful operation, ms from call to resolution (the HTTPS check is not included). */
  latencies: number[];
  elapsedMs: number;
  errors: Array<{ org: string; code: string; message: string }>;
  /** Allocations checked through stage-1 HTTPS the moment allocate resolved. */
  checked: number;
  /** Allocations whose check did not reach their own gateway: answered before the route was live. */
  notLive: Array<{ org: string; status: number; detail: string }>;
  /** A sample of allocations (every Nth) whose name was asked to PowerDNS over UDP the moment allocate resolved. */
  dnsChecked: number;
  /** Of those, the ones PowerDNS did not answer with the public IP. */
  dnsMissing: Array<{ org: string; detail: string }>;
  metrics: { sqlRoundTrips: number; dnsPatches: number; dnsTableWrites: number; dnsCacheFlushes: number; nginxTests: number; nginxReloads: number; nginxRouteMs: number };
  /** Every statement sent to PostgreSQL by the allocator's pool (wire level, including lock transactions). */
  sqlStatements: number;
  stages: Record<string, StageTotals>;
  /** CPU time of the allocator process during the burst (user + system). */
  cpuMs: number;
}

export interface ProfileSummary {
  /** Sampled self time per function (top entries), and grouped by where the code lives. */
  top: Array<{ fn: string; where: string; selfMs: number; pct: number }>;
  byGroup: Array<{ group: string; selfMs: number; pct: number }>;
  totalMs: number;
}

export type Response =
  | { id: number; ok: true; type: 'init' | 'close' | 'register' }
  | { id: number; ok: true; type: 'burst'; result: BurstResult }
  | { id: number; ok: true; type: 'profile'; profile?: ProfileSummary }
  | { id: number; ok: false; error: string };
