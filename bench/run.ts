/**
 * `npm run bench` (issue #8): the gateway allocator against the real
 * PostgreSQL, PowerDNS and nginx of the test set-up, and the naive
 * one-reload-per-allocation sequence measured in the same run.
 *
 *   npx ts-node --transpile-only bench/run.ts [--quick] [--no-readme]
 *
 * Writes bench/results/<date>.json, <date>.md, <date>.svg and latest.{json,md,svg};
 * a full run also refreshes the results block of docs/bench.md.
 */
import { ChildProcess, fork } from 'child_process';
import { randomUUID } from 'crypto';
import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'fs';
import * as path from 'path';
import { performance } from 'perf_hooks';
import axios from 'axios';
import { Pool } from 'pg';
import { buildClosure } from '../soak/build';
import { deleteZone, dropSchema, gatewayHost, startStandInGateways } from '../test/helpers/fixtures';
import { readEnvFile, testServicesOf, type TestServices } from '../test/helpers/services-env';
import { Stage1Nginx } from '../test/helpers/stage1-nginx';
import { NaiveAllocator, NaiveRep } from './naive';
import type { GatewaySpec } from '../runtime/inventory';
import type { BurstResult, ProfileSummary, Request, Response, WorkerInit } from './protocol';
import { ReloadProbe, ReloadTiming } from './reload-probe';
import { measureRealised, realisedTargets } from './realised';
import { renderMarkdown, renderSvg, updateReadme } from './report';
import type { BenchResults, ConcurrencyFigures, OpFigures, ScaleFigures, StageRow, TargetResult } from './results-types';
import { latencySummary, round, spread, Spread } from './stats';
import { cpuMs, machineFacts, postgresPids, powerDnsPid, resetPeakRss, rssMiB } from './system';

const ROOT = path.resolve(__dirname, '..');
const RESULTS_DIR = path.join(ROOT, 'bench', 'results');
// Ports of this suite only (other suites use 58xxx, 57xxx, 60xxx-62xxx).
const HTTPS_PORT = 59443;
const STATUS_PORT = 59099;

const args = new Set(process.argv.slice(2));
const QUICK = args.has('--quick');
const WRITE_README = !QUICK && !args.has('--no-readme');
for (const a of args) {
  if (!['--quick', '--no-readme', '--profile'].includes(a)) {
    console.error(`unknown option ${a}; usage: npm run bench [-- --quick] [-- --no-readme] [-- --profile]`);
    process.exit(2);
  }
}

const CONFIG = QUICK
  ? {
      poolSize: 200,
      reps: 3,
      concurrency: [1, 16, 64],
      opsPerRep: { 1: 15, 16: 48, 64: 128 } as Record<number, number>,
      scaleOrgs: [10, 300],
      scaleSequentialOps: 8,
      scaleBurstOps: 64,
      naiveOpsPerRep: 4,
      patchProbes: 1,
      profile: args.has('--profile'),
    }
  : {
      poolSize: 1000,
      reps: 3,
      concurrency: [1, 16, 64, 256],
      opsPerRep: { 1: 100, 16: 400, 64: 960, 256: 960 } as Record<number, number>,
      scaleOrgs: [10, 1000, 5000],
      scaleSequentialOps: 25,
      scaleBurstOps: 128,
      naiveOpsPerRep: 15,
      patchProbes: 2,
      profile: true,
    };
const SCALE_BURST_CONCURRENCY = 64;
/** Every Nth allocation is also looked up in PowerDNS (UDP) the moment it resolves. */
const DNS_SAMPLE_EVERY = 8;
const PG_POOL_MAX = 20; // the allocator's default
const scalePoolSize = Math.max(CONFIG.poolSize, Math.max(...CONFIG.scaleOrgs) + CONFIG.scaleBurstOps + 72);

const t0 = performance.now();
function log(msg: string): void {
  process.stdout.write(`[bench ${((performance.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${msg}\n`);
}

function readServices(): TestServices {
  const file = path.join(ROOT, '.test-services', 'env');
  return testServicesOf(readEnvFile(file, `${file} missing: run \`bash scripts/test-services.sh up\` first (scripts/bench.sh does)`));
}

// ------------------------------------------------------------ PowerDNS

const ZONE_DESCRIPTION = 'Native, no DNSSEC, `api_rectify: false` (one A rrset per name, no delegations or empty non-terminals: a rectify would change nothing, but costs a full-zone listing on every PATCH)';

/** The bench's zone, created as the environment's zone should be (see ZONE_DESCRIPTION). */
async function createBenchZone(s: TestServices, domain: string): Promise<void> {
  const res = await axios.post(
    `${s.pdnsApiUrl}/api/v1/servers/localhost/zones`,
    { name: `${domain}.`, kind: 'Native', nameservers: [`ns1.${domain}.`], api_rectify: false },
    { headers: { 'X-API-Key': s.pdnsApiKey }, validateStatus: () => true },
  );
  if (res.status !== 201) throw new Error(`zone create ${domain}: ${res.status} ${JSON.stringify(res.data)}`);
}

/**
 * Wall time of one PATCH publishing one organization (both names, with the
 * ownership comment, as the allocator writes them) at the zone's current size,
 * with the zone's API rectify switched to `rectify` for the measurement.
 */
async function measurePatch(s: TestServices, domain: string, rectify: boolean, samples: number): Promise<number[]> {
  const zoneUrl = `${s.pdnsApiUrl}/api/v1/servers/localhost/zones/${domain}.`;
  const headers = { headers: { 'X-API-Key': s.pdnsApiKey }, validateStatus: () => true };
  const put = async (on: boolean): Promise<void> => {
    const r = await axios.put(zoneUrl, { api_rectify: on }, headers);
    if (r.status !== 204) throw new Error(`zone ${domain}: setting api_rectify=${on} answered ${r.status}`);
  };
  await put(rectify);
  const out: number[] = [];
  try {
    for (let i = 0; i < samples; i++) {
      const org = randomUUID();
      const names = [`org-${org}.${domain}.`, `*.org-${org}.${domain}.`];
      const t = performance.now();
      const r = await axios.patch(
        zoneUrl,
        { rrsets: names.map((name) => ({ name, type: 'A', ttl: 60, changetype: 'REPLACE', records: [{ content: '127.0.0.1', disabled: false }], comments: [{ content: `bench probe ${org}`, account: 'bench' }] })) },
        headers,
      );
      out.push(performance.now() - t);
      if (r.status !== 204) throw new Error(`probe PATCH answered ${r.status}`);
      await axios.patch(zoneUrl, { rrsets: names.map((name) => ({ name, type: 'A', changetype: 'DELETE' })) }, headers);
    }
  } finally {
    await put(false);
  }
  return out;
}

interface DnsWriteCost {
  variant: string;
  rrsetsPerOrg: number;
  publishMs: number;
  withdrawMs: number;
  postgresCpuMsPerOrg: number;
  powerdnsCpuMsPerOrg: number;
}

/**
 * What PowerDNS and its PostgreSQL spend to publish and withdraw a batch of 64
 * organizations, written as the allocator writes them (two rrsets, each with
 * the ownership comment) and, for comparison, as one rrset with its comment
 * (the `flat` naming scheme). CPU is read from /proc (PostgreSQL: the whole
 * cluster, including the short-lived session PowerDNS opens per request).
 */
async function measureDnsWrites(s: TestServices, domain: string, pdnsPid: number | undefined): Promise<DnsWriteCost[]> {
  const zoneUrl = `${s.pdnsApiUrl}/api/v1/servers/localhost/zones/${domain}.`;
  const headers = { headers: { 'X-API-Key': s.pdnsApiKey }, validateStatus: () => true };
  const pgCpu = (): number => {
    const p = postgresPids();
    return cpuMs(p, p.slice(0, 1));
  };
  const out: DnsWriteCost[] = [];
  for (const [variant, wildcard] of [
    ['as the allocator writes them: org-<uuid> and *.org-<uuid>, each with the ownership comment', true],
    ['one rrset per organization (org-<uuid> only, with the comment; the `flat` naming scheme)', false],
  ] as Array<[string, boolean]>) {
    const orgs = Array.from({ length: 64 }, () => randomUUID());
    const rrsets = (present: boolean): unknown[] =>
      orgs.flatMap((org) =>
        [`org-${org}.${domain}.`, ...(wildcard ? [`*.org-${org}.${domain}.`] : [])].map((name) =>
          present
            ? { name, type: 'A', ttl: 60, changetype: 'REPLACE', records: [{ content: '127.0.0.1', disabled: false }], comments: [{ content: `bench dns cost ${org}`, account: 'bench' }] }
            : { name, type: 'A', changetype: 'DELETE' },
        ),
      );
    const g0 = pgCpu();
    const p0 = pdnsPid ? cpuMs([pdnsPid]) : Number.NaN;
    let t = performance.now();
    const pub = await axios.patch(zoneUrl, { rrsets: rrsets(true) }, headers);
    const publishMs = performance.now() - t;
    t = performance.now();
    const del = await axios.patch(zoneUrl, { rrsets: rrsets(false) }, headers);
    const withdrawMs = performance.now() - t;
    if (pub.status !== 204 || del.status !== 204) throw new Error(`DNS cost PATCH answered ${pub.status}/${del.status}`);
    // PowerDNS's per-request session ends after its answer: let PostgreSQL reap it so its CPU is counted.
    await new Promise((r) => setTimeout(r, 100));
    out.push({
      variant,
      rrsetsPerOrg: wildcard ? 2 : 1,
      publishMs,
      withdrawMs,
      postgresCpuMsPerOrg: (pgCpu() - g0) / orgs.length,
      powerdnsCpuMsPerOrg: pdnsPid ? (cpuMs([pdnsPid]) - p0) / orgs.length : Number.NaN,
    });
  }
  return out;
}

// ------------------------------------------------------------ the measured allocator process

type Call = Request extends infer R ? (R extends { id: number } ? Omit<R, 'id'> : never) : never;

class Worker {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (r: Response) => void; reject: (e: Error) => void }>();
  readonly pid: number;

  constructor(private readonly child: ChildProcess) {
    this.pid = child.pid as number;
    child.on('message', (m: Response) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.ok) p.resolve(m);
      else p.reject(new Error(`allocator process: ${m.error}`));
    });
    child.on('exit', (code) => {
      for (const p of this.pending.values()) p.reject(new Error(`allocator process exited (${code})`));
      this.pending.clear();
    });
  }

  /** `workerJs`: the worker transpiled to plain JavaScript, so no ts-node or compiler sits in its memory. */
  static start(workerJs: string): Worker {
    return new Worker(fork(workerJs, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [] }));
  }

  call(req: Call): Promise<Response> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.child.send({ ...req, id } as Request);
    });
  }

  async burst(kind: 'allocate' | 'release', orgs: string[], concurrency: number, check = true): Promise<BurstResult> {
    const r = await this.call({ type: 'burst', kind, orgs, concurrency, check });
    if (r.ok && r.type === 'burst') return r.result;
    throw new Error('unexpected answer to burst');
  }

  async profile(action: 'start' | 'stop'): Promise<ProfileSummary | undefined> {
    const r = await this.call({ type: 'profile', action });
    return r.ok && r.type === 'profile' ? r.profile : undefined;
  }

  kill(): void {
    if (this.child.exitCode === null) this.child.kill('SIGTERM');
  }
}

// ------------------------------------------------------------ figures

function opFigures(bursts: BurstResult[]): OpFigures {
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

function naiveFigures(reps: NaiveRep[], pick: (r: NaiveRep) => number[]): OpFigures {
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

const orgsOf = (n: number): string[] => Array.from({ length: n }, () => randomUUID());

function inventory(from: number, to: number, port: number): GatewaySpec[] {
  return Array.from({ length: to - from }, (_, k) => {
    const i = from + k;
    return { name: `gw-pool-bench-${i}`, host: gatewayHost(i), httpPort: port, vpnPort: 10_000 + (i % 50_000) };
  });
}

function throwOnErrors(b: BurstResult, what: string): void {
  if (b.errors.length > 0) {
    const codes = [...new Set(b.errors.map((e) => e.code))].join(', ');
    throw new Error(`${what}: ${b.errors.length} of ${b.ops} failed (${codes}); first: ${b.errors[0].message}`);
  }
}

// ------------------------------------------------------------ main

async function main(): Promise<void> {
  const s = readServices();
  const runId = `${new Date().toISOString().slice(0, 10).replace(/-/g, '')}_${Math.random().toString(36).slice(2, 7)}`;
  const schema = `bench_${runId}`;
  const domain = `bench-${runId.replace(/_/g, '-')}.test`;
  log(`${QUICK ? 'QUICK smoke run' : 'full run'} ${runId}: schema ${schema}, zone ${domain}, nginx 127.0.0.1:${HTTPS_PORT} (status :${STATUS_PORT})`);

  const cleanups: Array<() => Promise<void> | void> = [];
  const cleanup = async (): Promise<void> => {
    for (const c of cleanups.splice(0).reverse()) {
      try {
        await c();
      } catch (err) {
        log(`clean-up step failed: ${(err as Error).message}`);
      }
    }
  };
  let interrupted = false;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (interrupted) process.exit(130);
    interrupted = true;
    log(`${sig}: cleaning up`);
    void cleanup().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  try {
    const pg = new Pool({ connectionString: s.pgUrl, max: 2 });
    cleanups.push(() => pg.end());
    const postgresVersion = (await pg.query<{ server_version: string }>('SHOW server_version')).rows[0].server_version;
    const pdnsInfo = (await axios.get(`${s.pdnsApiUrl}/api/v1/servers/localhost`, { headers: { 'X-API-Key': s.pdnsApiKey } })).data as { version?: string };
    const machine = machineFacts(postgresVersion, pdnsInfo.version ?? 'unknown');
    log(`machine: ${machine.cores} cores (${machine.cpuModel}), ${machine.memoryGiB} GiB, node ${machine.node}, nginx ${machine.nginx}, njs ${machine.njs}, PostgreSQL ${machine.postgres}, PowerDNS ${machine.powerdns}`);

    await createBenchZone(s, domain);
    cleanups.push(() => deleteZone(s, domain));
    cleanups.push(() => dropSchema(s.pgUrl, schema));

    const standIn = await startStandInGateways();
    cleanups.push(() => standIn.close());

    const nginx = new Stage1Nginx(domain, HTTPS_PORT, STATUS_PORT);
    cleanups.push(() => nginx.destroy());
    const probe = new ReloadProbe(nginx);
    probe.install();
    nginx.start();

    const naiveNginx = new Stage1Nginx(domain, 0, 0);
    cleanups.push(() => naiveNginx.destroy());
    const naive = new NaiveAllocator({ nginx: naiveNginx, domain, pdnsApiUrl: s.pdnsApiUrl, pdnsApiKey: s.pdnsApiKey, publicIp: '127.0.0.1' });
    cleanups.push(() => naive.close());
    await naive.writeDefault();
    naiveNginx.start();

    // ---------------------------------------------------------- 1. baseline
    log(`baseline: naive sequence (PATCH + route file + nginx -s reload per allocation), ${CONFIG.reps} x ${CONFIG.naiveOpsPerRep} allocations + releases`);
    const naiveReps: NaiveRep[] = [];
    let naiveHost = 0;
    for (let rep = 0; rep < CONFIG.reps; rep++) {
      const orgs = orgsOf(CONFIG.naiveOpsPerRep).map((org) => ({ org, host: gatewayHost(naiveHost++ % 250) }));
      const r = await naive.rep(orgs, standIn.port);
      naiveReps.push(r);
      log(`  rep ${rep + 1}: allocate p50 ${latencySummary(r.allocate).p50.toFixed(1)} ms, release p50 ${latencySummary(r.release).p50.toFixed(1)} ms, ${r.notLiveAtAnswer}/${r.allocate.length} answered before their route was live`);
    }
    naive.close();
    naiveNginx.destroy();
    const baselineAllocate = naiveFigures(naiveReps, (r) => r.allocate);
    const baselineRelease = naiveFigures(naiveReps, (r) => r.release);
    const naiveAllocations = naiveReps.reduce((n, r) => n + r.allocate.length, 0);

    // ---------------------------------------------------------- the measured allocator
    const buildDir = path.join(ROOT, '.test-services', 'bench', 'build');
    cleanups.push(() => rmSync(buildDir, { recursive: true, force: true }));
    const worker = Worker.start(buildClosure(ROOT, 'bench/worker.ts', buildDir));
    cleanups.push(async () => {
      await Promise.race([worker.call({ type: 'close' }), new Promise((r) => setTimeout(r, 5000))]).catch(() => undefined);
      worker.kill();
    });
    const opts = nginx.nginxOptions();
    const init: WorkerInit = {
      envName: 'bench',
      domain,
      pgUrl: s.pgUrl,
      pgMax: PG_POOL_MAX,
      schema,
      powerdns: { apiUrl: s.pdnsApiUrl, apiKey: s.pdnsApiKey, zone: domain },
      nginx: {
        confDir: opts.confDir,
        tls: opts.tls,
        listen: opts.listen ?? `127.0.0.1:${HTTPS_PORT} ssl`,
        statusListen: opts.statusListen ?? `127.0.0.1:${STATUS_PORT}`,
        testCommand: opts.testCommand ?? [],
        reloadCommand: opts.reloadCommand ?? [],
      },
      check: { port: HTTPS_PORT, caFile: nginx.caFile, servername: `org-00000000-0000-0000-0000-000000000000.${domain}`, dnsPort: s.pdnsDnsPort, publicIp: '127.0.0.1', dnsSampleEvery: DNS_SAMPLE_EVERY },
    };
    await worker.call({ type: 'init', init });
    await worker.call({ type: 'register', inventory: inventory(0, CONFIG.poolSize, standIn.port) });
    log(`allocator process ${worker.pid} ready (plain JS, pg pool max ${PG_POOL_MAX}); pool of ${CONFIG.poolSize} registered gateways`);

    const everyBurst: BurstResult[] = [];
    const run = async (kind: 'allocate' | 'release', orgs: string[], c: number, what: string): Promise<BurstResult> => {
      const b = await worker.burst(kind, orgs, c);
      throwOnErrors(b, what);
      everyBurst.push(b);
      return b;
    };

    // Warm-up (JIT, pg connections, nginx keep-alive): not measured.
    const warm = orgsOf(Math.min(64, CONFIG.poolSize));
    await run('allocate', warm, 16, 'warm-up');
    await run('release', warm, 16, 'warm-up');

    // ---------------------------------------------------------- 2. concurrency
    const rssByPhase: Record<string, number> = {};
    rssByPhase['start (connected, pool registered)'] = rssMiB(worker.pid).peak;
    resetPeakRss(worker.pid);
    const nginxPids = (): number[] => [probe.masterPid(), ...probe.workerPids()];
    const pgPids = postgresPids();
    const pdnsPid = powerDnsPid(Number(new URL(s.pdnsApiUrl).port));
    const cpuOf = (): Record<string, number> => ({
      allocator: cpuMs([worker.pid]),
      nginx: cpuMs(nginxPids(), [probe.masterPid()]),
      postgres: cpuMs(postgresPids(), pgPids.slice(0, 1)),
      powerdns: pdnsPid ? cpuMs([pdnsPid]) : Number.NaN,
    });
    const cpu64: Record<string, number> = { allocator: 0, nginx: 0, postgres: 0, powerdns: 0 };
    // The measured repetitions at concurrency 64 (allocate burst + its release burst): cost and profile figures.
    const reps64: Array<{ a: BurstResult; r: BurstResult }> = [];

    const concurrency: ConcurrencyFigures[] = [];
    let profileSummary: ProfileSummary | null = null;
    for (const c of CONFIG.concurrency) {
      const n = CONFIG.opsPerRep[c];
      const allocs: BurstResult[] = [];
      const releases: BurstResult[] = [];
      for (let rep = 0; rep < CONFIG.reps; rep++) {
        const orgs = orgsOf(n);
        const before = cpuOf();
        const a = await run('allocate', orgs, c, `allocate c=${c}`);
        const r = await run('release', orgs, c, `release c=${c}`);
        const after = cpuOf();
        if (c === 64) {
          for (const k of Object.keys(cpu64)) cpu64[k] += after[k] - before[k];
          reps64.push({ a, r });
        }
        allocs.push(a);
        releases.push(r);
        const sa = latencySummary(a.latencies);
        const sr = latencySummary(r.latencies);
        log(
          `  c=${String(c).padStart(3)} rep ${rep + 1}: allocate ${((n / a.elapsedMs) * 1000).toFixed(0)}/s p50 ${sa.p50.toFixed(1)} p99 ${sa.p99.toFixed(1)} max ${sa.max.toFixed(1)} ms` +
            ` | release ${((n / r.elapsedMs) * 1000).toFixed(0)}/s p50 ${sr.p50.toFixed(1)} p99 ${sr.p99.toFixed(1)} ms` +
            ` | ${a.metrics.dnsPatches + r.metrics.dnsPatches} PATCH, ${a.metrics.nginxReloads + r.metrics.nginxReloads} reloads, ${a.sqlStatements + r.sqlStatements} SQL, not live ${a.notLive.length}/${a.checked}`,
        );
      }
      const fa = opFigures(allocs);
      const fr = opFigures(releases);
      concurrency.push({
        concurrency: c,
        allocate: fa,
        release: fr,
        vsBaseline: {
          allocateThroughput: fa.throughput.median / baselineAllocate.throughput.median,
          releaseThroughput: fr.throughput.median / baselineRelease.throughput.median,
          allocateP50Speedup: baselineAllocate.p50.median / fa.p50.median,
        },
      });
      if (c === 64 && CONFIG.profile) {
        // One extra repetition under V8's sampling profiler; its figures are not used.
        const orgs = orgsOf(n);
        await worker.profile('start');
        await run('allocate', orgs, c, 'profiled allocate');
        await run('release', orgs, c, 'profiled release');
        profileSummary = (await worker.profile('stop')) ?? null;
        log(`  c=64 profiled rep: ${profileSummary?.byGroup.map((g) => `${g.group} ${g.pct}%`).join(', ')}`);
      }
    }
    rssByPhase['concurrency phase'] = rssMiB(worker.pid).peak;

    // ---------------------------------------------------------- 3. scale
    resetPeakRss(worker.pid);
    log(`scale: registering ${scalePoolSize - CONFIG.poolSize} more gateways (pool of ${scalePoolSize})`);
    await worker.call({ type: 'register', inventory: inventory(CONFIG.poolSize, scalePoolSize, standIn.port) });
    const background: string[] = [];
    const scale: ScaleFigures[] = [];
    for (const target of CONFIG.scaleOrgs) {
      const fill = orgsOf(target - background.length);
      for (let i = 0; i < fill.length; i += 500) await run('allocate', fill.slice(i, i + 500), 64, `filling to ${target} organizations`);
      background.push(...fill);
      const routeFiles = readdirSync(path.join(nginx.confDir, 'routes')).length;
      log(`  ${target} organizations allocated (${routeFiles} route files)`);
      const seqA: BurstResult[] = [];
      const seqR: BurstResult[] = [];
      const burA: BurstResult[] = [];
      const burR: BurstResult[] = [];
      const reloads: ReloadTiming[] = [];
      const patchOff: number[] = [];
      const patchOn: number[] = [];
      for (let rep = 0; rep < CONFIG.reps; rep++) {
        const seq = orgsOf(CONFIG.scaleSequentialOps);
        seqA.push(await run('allocate', seq, 1, `sequential allocate at ${target}`));
        seqR.push(await run('release', seq, 1, `sequential release at ${target}`));
        const bur = orgsOf(CONFIG.scaleBurstOps);
        burA.push(await run('allocate', bur, SCALE_BURST_CONCURRENCY, `burst allocate at ${target}`));
        burR.push(await run('release', bur, SCALE_BURST_CONCURRENCY, `burst release at ${target}`));
        reloads.push(await probe.measure());
        patchOff.push(...(await measurePatch(s, domain, false, CONFIG.patchProbes)));
        patchOn.push(...(await measurePatch(s, domain, true, CONFIG.patchProbes)));
        const last = reloads[reloads.length - 1];
        log(
          `    rep ${rep + 1}: sequential allocate p50 ${latencySummary(seqA[rep].latencies).p50.toFixed(1)} ms, release p50 ${latencySummary(seqR[rep].latencies).p50.toFixed(1)} ms;` +
            ` c=${SCALE_BURST_CONCURRENCY} allocate p99 ${latencySummary(burA[rep].latencies).p99.toFixed(1)} ms; nginx -s reload until new workers serve ${last.untilNewServesMs.toFixed(0)} ms (old gone ${last.untilOldGoneMs.toFixed(0)} ms);` +
            ` one-org PATCH rectify off ${patchOff.slice(-CONFIG.patchProbes).map((x) => x.toFixed(0)).join('/')} ms, on ${patchOn.slice(-CONFIG.patchProbes).map((x) => x.toFixed(0)).join('/')} ms`,
        );
      }
      const nginxRss = nginxPids().reduce((sum, p) => sum + (rssMiB(p).current || 0), 0);
      const sa = opFigures(seqA);
      scale.push({
        orgs: target,
        sequentialAllocate: sa,
        sequentialRelease: opFigures(seqR),
        burstAllocate: opFigures(burA),
        burstRelease: opFigures(burR),
        reload: {
          commandMs: spread(reloads.map((r) => r.commandMs)),
          untilNewServesMs: spread(reloads.map((r) => r.untilNewServesMs)),
          untilOldGoneMs: spread(reloads.map((r) => r.untilOldGoneMs)),
        },
        dnsPatchMs: { rectifyOff: spread(patchOff), rectifyOn: spread(patchOn) },
        nginxRssMiB: nginxRss,
        routeFiles,
        vsBaseline: { allocateP50Speedup: baselineAllocate.p50.median / sa.p50.median },
      });
    }
    rssByPhase['scale phase'] = rssMiB(worker.pid).peak;

    // ---------------------------------------------------------- DNS write cost (allocator idle)
    const dnsRuns: DnsWriteCost[][] = [];
    for (let rep = 0; rep < CONFIG.reps; rep++) dnsRuns.push(await measureDnsWrites(s, domain, pdnsPid));
    const dnsWrites = dnsRuns[0].map((first, i) => ({
      variant: first.variant,
      rrsetsPerOrg: first.rrsetsPerOrg,
      publishMs: spread(dnsRuns.map((r) => r[i].publishMs)),
      withdrawMs: spread(dnsRuns.map((r) => r[i].withdrawMs)),
      postgresCpuMsPerOrg: spread(dnsRuns.map((r) => r[i].postgresCpuMsPerOrg)),
      powerdnsCpuMsPerOrg: spread(dnsRuns.map((r) => r[i].powerdnsCpuMsPerOrg)),
    }));
    for (const d of dnsWrites) {
      log(`DNS write cost, 64 organizations, ${d.rrsetsPerOrg} rrset(s) each: publish ${d.publishMs.median.toFixed(0)} ms, withdraw ${d.withdrawMs.median.toFixed(0)} ms; CPU per organization (both): PostgreSQL ${d.postgresCpuMsPerOrg.median.toFixed(2)} ms, PowerDNS ${d.powerdnsCpuMsPerOrg.median.toFixed(2)} ms`);
    }

    // ---------------------------------------------------------- figures
    const sum = (bs: BurstResult[], f: (b: BurstResult) => number): number => bs.reduce((n, b) => n + f(b), 0);
    const c64 = reps64.flatMap((x) => [x.a, x.r]);
    const allocs64 = sum(c64.filter((b) => b.kind === 'allocate'), (b) => b.latencies.length);
    /** A count per 1,000 allocations (with their releases), per repetition: median, min, max. */
    const per1000Reps = (f: (b: BurstResult) => number): Spread =>
      spread(reps64.map(({ a, r }) => ((f(a) + f(r)) / Math.max(1, a.latencies.length)) * 1000));
    const reloads64 = sum(c64, (b) => b.metrics.nginxReloads);
    const stageRows = (bursts: BurstResult[]): StageRow[] => {
      const ops = sum(bursts, (b) => b.latencies.length);
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
    };
    const stages = stageRows(c64.filter((b) => b.kind === 'allocate'));
    const releaseStages = stageRows(c64.filter((b) => b.kind === 'release'));
    const sequentialStages = stageRows(everyBurst.filter((b) => b.kind === 'allocate' && b.concurrency === 1 && b.ops === CONFIG.opsPerRep[1]));

    const checked = sum(everyBurst, (b) => b.checked);
    const notLive = everyBurst.flatMap((b) => b.notLive);
    const dnsChecked = sum(everyBurst, (b) => b.dnsChecked);
    const dnsMissing = everyBurst.flatMap((b) => b.dnsMissing);
    const allAllocs = sum(everyBurst.filter((b) => b.kind === 'allocate'), (b) => b.latencies.length);
    const allReleases = sum(everyBurst.filter((b) => b.kind === 'release'), (b) => b.latencies.length);

    const at64 = concurrency.find((c) => c.concurrency === 64);
    const small = scale[0];
    const big = scale[scale.length - 1];
    const targets: TargetResult[] = [];
    if (at64) {
      const ratio = at64.vsBaseline.allocateThroughput;
      targets.push({
        id: 'throughput',
        description: 'allocate throughput at concurrency 64 vs the naive sequential baseline of the same run',
        target: '>= 50x',
        measured: `${round(ratio, 1)}x (${round(at64.allocate.throughput.median, 0)}/s vs ${round(baselineAllocate.throughput.median, 1)}/s)`,
        pass: ratio >= 50,
      });
      targets.push({
        id: 'p99',
        description: 'p99 allocate latency at concurrency 64',
        target: '<= 100 ms',
        measured: `${round(at64.allocate.p99.median, 1)} ms (min ${round(at64.allocate.p99.min, 1)}, max ${round(at64.allocate.p99.max, 1)})`,
        pass: at64.allocate.p99.median <= 100,
      });
    }
    const scaleRatio = big.sequentialAllocate.p50.median / small.sequentialAllocate.p50.median;
    targets.push({
      id: 'scale',
      description: `allocate latency (p50, sequential) with ${big.orgs} organizations allocated vs with ${small.orgs}`,
      target: '<= 2x',
      measured: `${round(scaleRatio, 2)}x (${round(big.sequentialAllocate.p50.median, 1)} ms vs ${round(small.sequentialAllocate.p50.median, 1)} ms)`,
      pass: scaleRatio <= 2,
    });
    targets.push({
      id: 'reloads',
      description: 'nginx reloads per allocation in the concurrency-64 phase',
      target: '<= 1 per 20',
      measured: `${reloads64} reloads for ${allocs64} allocations`,
      pass: reloads64 * 20 <= allocs64,
    });
    targets.push({
      id: 'live',
      description: 'allocations answered before their route was live (every allocation of the run checked through stage-1 HTTPS; every 8th also in PowerDNS)',
      target: '0',
      measured: `${notLive.length} of ${checked} (DNS: ${dnsMissing.length} of ${dnsChecked} not yet answered by PowerDNS)`,
      pass: notLive.length === 0 && checked === allAllocs && dnsMissing.length === 0,
    });
    // Cold start and hot reload in the realised dev environment (bench/realised; quick mode: "full mode only").
    targets.push(...realisedTargets(await measureRealised({ quick: QUICK, log })));

    const cpuMsPer1000 = [
      { process: 'allocator (Node.js)', ms: round((cpu64.allocator / Math.max(1, allocs64)) * 1000, 0) },
      { process: 'nginx (master + workers, incl. the HTTPS checks)', ms: round((cpu64.nginx / Math.max(1, allocs64)) * 1000, 0) },
      { process: 'PostgreSQL (whole cluster)', ms: round((cpu64.postgres / Math.max(1, allocs64)) * 1000, 0), note: 'shared with PowerDNS (gpgsql) and any other test running' },
      { process: 'PowerDNS', ms: round((cpu64.powerdns / Math.max(1, allocs64)) * 1000, 0) },
    ];

    const date = new Date().toISOString();
    const results: BenchResults = {
      version: 1,
      date,
      runId,
      mode: QUICK ? 'quick' : 'full',
      durationS: round((performance.now() - t0) / 1000, 1),
      machine,
      config: {
        zone: ZONE_DESCRIPTION,
        poolSize: CONFIG.poolSize,
        scalePoolSize,
        reps: CONFIG.reps,
        concurrency: CONFIG.concurrency,
        opsPerRep: Object.fromEntries(Object.entries(CONFIG.opsPerRep).map(([k, v]) => [k, v])),
        scaleOrgs: CONFIG.scaleOrgs,
        scaleSequentialOps: CONFIG.scaleSequentialOps,
        scaleBurstOps: CONFIG.scaleBurstOps,
        scaleBurstConcurrency: SCALE_BURST_CONCURRENCY,
        naiveOpsPerRep: CONFIG.naiveOpsPerRep,
        pgPoolMax: PG_POOL_MAX,
        nginxWorkers: 2,
      },
      baseline: {
        description: 'sequential: one PowerDNS PATCH, one per-organization TLS server file, one `nginx -s reload` per allocation (and per release); no database, no wait for the route to be live',
        allocate: baselineAllocate,
        release: baselineRelease,
        allocations: naiveAllocations,
        notLiveAtAnswer: naiveReps.reduce((n, r) => n + r.notLiveAtAnswer, 0),
        untilLiveMs: spread(naiveReps.map((r) => latencySummary(r.untilLive).p50)),
        per1000: { dnsPatches: 1000, nginxReloads: 1000, sqlStatements: 0 },
      },
      concurrency,
      scale,
      cost: {
        phase: `concurrency 64 (${c64.filter((b) => b.kind === 'allocate').length} repetitions of ${CONFIG.opsPerRep[64]} allocations and their releases)`,
        allocations: allocs64,
        releases: sum(c64.filter((b) => b.kind === 'release'), (b) => b.latencies.length),
        per1000: {
          dnsPatches: per1000Reps((b) => b.metrics.dnsPatches),
          nginxReloads: per1000Reps((b) => b.metrics.nginxReloads),
          nginxTests: per1000Reps((b) => b.metrics.nginxTests),
          sqlStatements: per1000Reps((b) => b.sqlStatements),
          storeRoundTrips: per1000Reps((b) => b.metrics.sqlRoundTrips),
        },
        allocationsPerReload: reloads64 > 0 ? round(allocs64 / reloads64, 1) : null,
        wholeRun: {
          allocations: allAllocs,
          releases: allReleases,
          dnsPatches: sum(everyBurst, (b) => b.metrics.dnsPatches),
          nginxReloads: sum(everyBurst, (b) => b.metrics.nginxReloads),
          nginxTests: sum(everyBurst, (b) => b.metrics.nginxTests),
          sqlStatements: sum(everyBurst, (b) => b.sqlStatements),
        },
      },
      rss: {
        allocatorPeakMiB: round(Math.max(...Object.values(rssByPhase)), 1),
        byPhase: Object.fromEntries(Object.entries(rssByPhase).map(([k, v]) => [k, round(v, 1)])),
        nginxMiBAtMaxOrgs: round(big.nginxRssMiB, 1),
      },
      liveness: {
        method:
          'every allocation of the run (warm-up, all phases, fills) is followed, in the same tick allocate resolves, by an HTTPS request through stage-1 (CA-verified TLS over kept-alive connections, Host = the organization name); it counts as live only if answered 200 by that organization\'s own stand-in gateway',
        checked,
        notLive: notLive.length,
        examples: notLive.slice(0, 5),
        dnsMethod: `every ${DNS_SAMPLE_EVERY}th allocation is also asked to PowerDNS (UDP, A record of org-<uuid>.<domain>) in the same tick allocate resolves; it must answer NOERROR with the public IP`,
        dnsChecked,
        dnsMissing: dnsMissing.length,
        dnsExamples: dnsMissing.slice(0, 5),
      },
      profile: { phase: 'concurrency 64', stages, releaseStages, sequentialStages, cpuMsPer1000, cpu: profileSummary, dnsWrites },
      targets,
    };

    // ---------------------------------------------------------- output
    // A smoke run (CI) writes next to the real results, in a directory git ignores (bench/.gitignore).
    const outDir = QUICK ? path.join(RESULTS_DIR, 'quick') : RESULTS_DIR;
    mkdirSync(outDir, { recursive: true });
    const stamp = date.slice(0, 19).replace(/:/g, '-');
    const md = renderMarkdown(results);
    const svg = renderSvg(results);
    const json = JSON.stringify(results, null, 2);
    // A smoke run keeps only its latest files (it runs in every CI run); a full run also keeps a dated copy.
    const files: Record<string, string> = {
      ...(QUICK ? {} : { [`${stamp}.json`]: json, [`${stamp}.md`]: md, [`${stamp}.svg`]: svg }),
      'latest.json': json,
      'latest.md': md,
      'latest.svg': svg,
    };
    for (const [f, content] of Object.entries(files)) writeFileSync(path.join(outDir, f), `${content.trimEnd()}\n`);
    log(`wrote ${path.relative(ROOT, outDir)}/{${Object.keys(files).join(',')}}`);
    if (WRITE_README) log(updateReadme(path.join(ROOT, 'docs/bench.md'), results) ? 'docs/bench.md results refreshed' : 'docs/bench.md has no bench results markers; left alone');

    process.stdout.write(`\n${md}\n`);
    log(`done in ${((performance.now() - t0) / 1000).toFixed(1)} s: ${targets.filter((t) => t.pass).length}/${targets.length} targets met`);
  } finally {
    await cleanup();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(`[bench] FAILED: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exit(1);
  },
);
