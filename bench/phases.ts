/** The measured phases of a run, each on the shared context the orchestrator (run.ts) builds. */
import { readdirSync } from 'fs';
import * as path from 'path';
import type { TestServices } from '../test/helpers/services-env';
import type { Stage1Nginx } from '../test/helpers/stage1-nginx';
import { CONFIG, HTTPS_PORT, SCALE_BURST_CONCURRENCY, STATIC_PROXY_PORT, log, scalePoolSize } from './config';
import { inventory, opFigures, orgsOf } from './figures';
import { PDNS_DEFAULTS, SOA_EDIT_ONLY, measurePatch } from './pdns-probes';
import type { BurstResult, ProfileSummary } from './protocol';
import type { ReloadProbe, ReloadTiming } from './reload-probe';
import type { ConcurrencyFigures, OpFigures, RoutingFigures, ScaleFigures } from './results-types';
import { alternatingLatency, runWrk, workersCpuUs, type AlternatingSide, type WrkRun } from './routing';
import { latencySummary, spread } from './stats';
import { cpuMs, postgresPids, powerDnsPid, resetPeakRss, rssMiB } from './system';
import type { Worker } from './worker-client';

export interface PhaseContext {
  s: TestServices;
  domain: string;
  worker: Worker;
  nginx: Stage1Nginx;
  probe: ReloadProbe;
  standInPort: number;
  /** Every burst of the run (the liveness and whole-run counts are over all of them). */
  everyBurst: BurstResult[];
  run: (kind: 'allocate' | 'release', orgs: string[], c: number, what: string) => Promise<BurstResult>;
  rssByPhase: Record<string, number>;
}

export interface ConcurrencyPhase {
  concurrency: ConcurrencyFigures[];
  /** The measured repetitions at concurrency 64 (allocate burst + its release burst): cost and profile figures. */
  reps64: Array<{ a: BurstResult; r: BurstResult }>;
  cpu64: Record<string, number>;
  profileSummary: ProfileSummary | null;
}

export function nginxPids(probe: ReloadProbe): number[] {
  return [probe.masterPid(), ...probe.workerPids()];
}

/** Row 3: allocate then release bursts at each concurrency (closed loop). */
export async function concurrencyPhase(ctx: PhaseContext, baseline: { allocate: OpFigures; release: OpFigures }): Promise<ConcurrencyPhase> {
  const { worker, probe, run } = ctx;
  const pgPids = postgresPids();
  const pdnsPid = powerDnsPid(Number(new URL(ctx.s.pdnsApiUrl).port));
  const cpuOf = (): Record<string, number> => ({
    allocator: cpuMs([worker.pid]),
    nginx: cpuMs(nginxPids(probe), [probe.masterPid()]),
    postgres: cpuMs(postgresPids(), pgPids.slice(0, 1)),
    powerdns: pdnsPid ? cpuMs([pdnsPid]) : Number.NaN,
  });
  const cpu64: Record<string, number> = { allocator: 0, nginx: 0, postgres: 0, powerdns: 0 };
  const reps64: ConcurrencyPhase['reps64'] = [];
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
        allocateThroughput: fa.throughput.median / baseline.allocate.throughput.median,
        releaseThroughput: fr.throughput.median / baseline.release.throughput.median,
        allocateP50Speedup: baseline.allocate.p50.median / fa.p50.median,
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
  return { concurrency, reps64, cpu64, profileSummary };
}

/** An alternating run's side as a WrkRun (requests/s is not measured there: sequential requests). */
function latencyRun(side: AlternatingSide): WrkRun {
  const l = latencySummary(side.latenciesMs);
  return { requestsPerS: Number.NaN, p50Ms: l.p50, p99Ms: l.p99, requests: l.n, errors: side.errors };
}

/**
 * Row 5: wrk through stage 1 (one allocated organization) vs the static proxy. Requests/s come from
 * saturating wrk runs (CONFIG.wrkConnections) in back-to-back pairs, each pair's order alternating: on a
 * VM whose speed drifts, whichever side ran first would otherwise be favoured in every pair (measured:
 * docs/bench.md, row 5). Latency comes from one client with one kept-alive connection to each server
 * whose sequential requests alternate between the two (alternatingLatency): a request never queues
 * behind another, so its p99 is the routing's own added time, and a stall of the machine falls on both
 * sides alike.
 */
export async function routingPhase(ctx: PhaseContext): Promise<RoutingFigures> {
  const [org] = orgsOf(1);
  await ctx.run('allocate', [org], 1, 'routing: allocate the measured organization');
  const host = `org-${org}.${ctx.domain}`;
  const urls = { stage1: `https://127.0.0.1:${HTTPS_PORT}/`, staticProxy: `https://127.0.0.1:${STATIC_PROXY_PORT}/` };
  type Side = keyof typeof urls;
  const runs = { stage1: { thr: [] as WrkRun[], lat: [] as WrkRun[], cpuUs: [] as number[] }, staticProxy: { thr: [] as WrkRun[], lat: [] as WrkRun[], cpuUs: [] as number[] } };
  const orderOf = (pair: number): Side[] => (pair % 2 === 0 ? ['staticProxy', 'stage1'] : ['stage1', 'staticProxy']);
  try {
    // One short unmeasured run each: TLS session set-up, worker warm-up.
    for (const side of ['stage1', 'staticProxy'] as const) await runWrk(urls[side], host, 1, CONFIG.wrkConnections);
    for (let pair = 0; pair < CONFIG.wrkThroughputPairs; pair++) {
      for (const side of orderOf(pair)) {
        const c0 = workersCpuUs(ctx.nginx);
        const w = await runWrk(urls[side], host, CONFIG.wrkSeconds, CONFIG.wrkConnections);
        runs[side].cpuUs.push((workersCpuUs(ctx.nginx) - c0) / w.requests);
        runs[side].thr.push(w);
      }
      const [s1, st] = [runs.stage1.thr[pair], runs.staticProxy.thr[pair]];
      log(
        `  routing pair ${pair + 1} (${orderOf(pair)[0] === 'stage1' ? 'stage 1 first' : 'static first'}): c=${CONFIG.wrkConnections} stage 1 ${s1.requestsPerS.toFixed(0)}/s vs static ${st.requestsPerS.toFixed(0)}/s ` +
          `(${((s1.requestsPerS / st.requestsPerS) * 100).toFixed(1)} %) | worker CPU/request stage 1 ${runs.stage1.cpuUs[pair].toFixed(1)} µs vs static ${runs.staticProxy.cpuUs[pair].toFixed(1)} µs | errors ${s1.errors}/${st.errors}`,
      );
    }
    for (let round = 0; round < CONFIG.latencyRounds; round++) {
      const { a, b } = await alternatingLatency(urls.stage1, urls.staticProxy, host, CONFIG.latencySeconds);
      const [s1, st] = [latencyRun(a), latencyRun(b)];
      runs.stage1.lat.push(s1);
      runs.staticProxy.lat.push(st);
      log(`  routing latency round ${round + 1} (${s1.requests} + ${st.requests} requests alternating): p50/p99 stage 1 ${s1.p50Ms.toFixed(3)}/${s1.p99Ms.toFixed(3)} ms vs static ${st.p50Ms.toFixed(3)}/${st.p99Ms.toFixed(3)} ms | errors ${s1.errors}/${st.errors}`);
    }
  } finally {
    await ctx.run('release', [org], 1, 'routing: release the measured organization');
  }
  const fig = (r: { thr: WrkRun[]; lat: WrkRun[]; cpuUs: number[] }): RoutingFigures['stage1'] => ({
    requestsPerS: spread(r.thr.map((x) => x.requestsPerS)),
    p50Ms: spread(r.lat.map((x) => x.p50Ms)),
    p99Ms: spread(r.lat.map((x) => x.p99Ms)),
    saturatedP99Ms: spread(r.thr.map((x) => x.p99Ms)),
    workerCpuUsPerRequest: spread(r.cpuUs),
    errors: [...r.thr, ...r.lat].reduce((n, x) => n + x.errors, 0),
  });
  return {
    method:
      `HTTPS on loopback (kept-alive TLS connections, Host = the organization's name), ${CONFIG.wrkSeconds} s per run: requests/s from ${CONFIG.wrkThroughputPairs} back-to-back pairs of wrk runs (one thread, -c${CONFIG.wrkConnections}, saturating), each pair's order alternating; ` +
      `p50/p99 from ${CONFIG.latencyRounds} runs of ${CONFIG.latencySeconds} s of one client with one connection to each server, sequential requests alternating between the two (no queueing; a stall of the machine falls on both sides alike); ` +
      `stage 1 (regex server_name; the route looked up per request by demiurge.route(): the organization id cut out of the Host, then the shared dict) and the same nginx's static-proxy server (same certificate and proxy directives, proxy_pass to one stand-in gateway)`,
    seconds: CONFIG.wrkSeconds,
    connections: CONFIG.wrkConnections,
    stage1: fig(runs.stage1),
    staticProxy: fig(runs.staticProxy),
    pairs: {
      requestsPerSRatio: spread(runs.stage1.thr.map((x, i) => x.requestsPerS / runs.staticProxy.thr[i].requestsPerS)),
      addedP99Ms: spread(runs.stage1.lat.map((x, i) => x.p99Ms - runs.staticProxy.lat[i].p99Ms)),
      addedCpuUs: spread(runs.stage1.cpuUs.map((x, i) => x - runs.staticProxy.cpuUs[i])),
    },
  };
}

/** Row 6: with 10, 1,000 and 5,000 organizations allocated (and routed). */
export async function scalePhase(ctx: PhaseContext, baselineP50: number): Promise<ScaleFigures[]> {
  const { worker, run, probe, s, domain } = ctx;
  resetPeakRss(worker.pid);
  log(`scale: registering ${scalePoolSize - CONFIG.poolSize} more gateways (pool of ${scalePoolSize})`);
  await worker.call({ type: 'register', inventory: inventory(CONFIG.poolSize, scalePoolSize, ctx.standInPort) });
  const background: string[] = [];
  const scale: ScaleFigures[] = [];
  for (const target of CONFIG.scaleOrgs) {
    const fill = orgsOf(target - background.length);
    for (let i = 0; i < fill.length; i += 500) await run('allocate', fill.slice(i, i + 500), 64, `filling to ${target} organizations`);
    background.push(...fill);
    const routeFiles = readdirSync(path.join(ctx.nginx.confDir, 'routes')).length;
    log(`  ${target} organizations allocated (${routeFiles} route files)`);
    const seqA: BurstResult[] = [];
    const seqR: BurstResult[] = [];
    const burA: BurstResult[] = [];
    const burR: BurstResult[] = [];
    const reloads: ReloadTiming[] = [];
    const patch = { zoneSettings: [] as number[], soaEdit: [] as number[], pdnsDefaults: [] as number[] };
    for (let rep = 0; rep < CONFIG.reps; rep++) {
      const seq = orgsOf(CONFIG.scaleSequentialOps);
      seqA.push(await run('allocate', seq, 1, `sequential allocate at ${target}`));
      seqR.push(await run('release', seq, 1, `sequential release at ${target}`));
      const bur = orgsOf(CONFIG.scaleBurstOps);
      burA.push(await run('allocate', bur, SCALE_BURST_CONCURRENCY, `burst allocate at ${target}`));
      burR.push(await run('release', bur, SCALE_BURST_CONCURRENCY, `burst release at ${target}`));
      reloads.push(await probe.measure());
      patch.zoneSettings.push(...(await measurePatch(s, domain, null, CONFIG.patchProbes)));
      patch.soaEdit.push(...(await measurePatch(s, domain, SOA_EDIT_ONLY, CONFIG.patchProbes)));
      patch.pdnsDefaults.push(...(await measurePatch(s, domain, PDNS_DEFAULTS, CONFIG.patchProbes)));
      const last = reloads[reloads.length - 1];
      const fmt = (xs: number[]): string => xs.slice(-CONFIG.patchProbes).map((x) => x.toFixed(0)).join('/');
      log(
        `    rep ${rep + 1}: sequential allocate p50 ${latencySummary(seqA[rep].latencies).p50.toFixed(1)} ms, release p50 ${latencySummary(seqR[rep].latencies).p50.toFixed(1)} ms;` +
          ` c=${SCALE_BURST_CONCURRENCY} allocate p99 ${latencySummary(burA[rep].latencies).p99.toFixed(1)} ms; nginx -s reload until new workers serve ${last.untilNewServesMs.toFixed(0)} ms (old gone ${last.untilOldGoneMs.toFixed(0)} ms);` +
          ` one-org PATCH ${fmt(patch.zoneSettings)} ms (SOA edit on ${fmt(patch.soaEdit)}, PowerDNS defaults ${fmt(patch.pdnsDefaults)})`,
      );
    }
    const nginxRss = nginxPids(probe).reduce((sum, p) => sum + (rssMiB(p).current || 0), 0);
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
      dnsPatchMs: { zoneSettings: spread(patch.zoneSettings), soaEdit: spread(patch.soaEdit), pdnsDefaults: spread(patch.pdnsDefaults) },
      nginxRssMiB: nginxRss,
      routeFiles,
      vsBaseline: { allocateP50Speedup: baselineP50 / sa.p50.median },
    });
  }
  ctx.rssByPhase['scale phase'] = rssMiB(worker.pid).peak;
  return scale;
}
