/**
 * `npm run bench` (issues #8, #16): the gateway allocator against the real
 * PostgreSQL, PowerDNS and nginx of the test set-up, the seed's algorithm
 * measured in the same run, and stage 1's per-request routing cost.
 *
 *   npx ts-node --transpile-only bench/run.ts [--quick] [--no-readme] [--profile] [--only-routing]
 *
 * --only-routing runs row 5 alone (after the warm-up) and prints its figures; it writes no files.
 *
 * Writes bench/results/<date>.json, <date>.md, <date>.svg and latest.{json,md,svg};
 * a full run also refreshes the results block of docs/bench.md. The phases
 * live in bench/phases.ts, the figures in bench/assemble.ts, the report in
 * bench/report.ts.
 */
import { mkdirSync, rmSync, writeFileSync } from 'fs';
import * as path from 'path';
import axios from 'axios';
import { Pool } from 'pg';
import { buildClosure } from '../soak/build';
import { deleteZone, dropSchema, gatewayHost } from '../test/helpers/fixtures';
import { Stage1Nginx } from '../test/helpers/stage1-nginx';
import { assembleResults, dnsWriteFigures } from './assemble';
import { CONFIG, DNS_SAMPLE_EVERY, DNS_WRITES, HTTPS_PORT, ONLY_ROUTING, PG_POOL_MAX, QUICK, RESULTS_DIR, ROOT, STAND_IN_PORT, STATIC_PROXY_PORT, STATUS_PORT, WRITE_README, elapsedS, log, readServices } from './config';
import { inventory, orgsOf, sequentialFigures, throwOnErrors } from './figures';
import { createBenchZone, measureDnsWrites, type DnsWriteCost } from './pdns-probes';
import { concurrencyPhase, routingPhase, scalePhase, type PhaseContext } from './phases';
import type { BurstResult, WorkerInit } from './protocol';
import { ReloadProbe } from './reload-probe';
import { measureRealised, realisedTargets } from './realised';
import { renderMarkdown, renderSvg, updateReadme } from './report';
import { writeStaticProxy } from './routing';
import { SeedBaseline, type SeedRep } from './seed-baseline';
import { StandInGateways } from './stand-in-gateways';
import { latencySummary } from './stats';
import { machineFacts, powerDnsPid, resetPeakRss, rssMiB } from './system';
import { Worker } from './worker-client';

type Cleanups = Array<() => Promise<void> | void>;

/** Row 4: the seed's algorithm, sequential, against its own nginx. */
async function seedPhase(s: ReturnType<typeof readServices>, domain: string, standInPort: number, cleanups: Cleanups): Promise<{ reps: SeedRep[]; allocate: ReturnType<typeof sequentialFigures>; release: ReturnType<typeof sequentialFigures> }> {
  const seedNginx = new Stage1Nginx(domain, 0, 0);
  cleanups.push(() => seedNginx.destroy());
  const seed = new SeedBaseline({ nginx: seedNginx, domain, pdnsApiUrl: s.pdnsApiUrl, pdnsApiKey: s.pdnsApiKey, publicIp: '127.0.0.1' });
  await seed.setUp(inventory(0, CONFIG.poolSize, standInPort).map((g) => ({ name: g.name, host: g.host, port: g.httpPort, vpnPort: g.vpnPort })));
  seedNginx.start();
  log(`baseline: the seed's algorithm (bench/seed/gateway-pool.sh: state files, first-ready walk, PATCH, server block, nginx -s reload), ${CONFIG.reps} x ${CONFIG.seedOpsPerRep} allocations + releases`);
  const reps: SeedRep[] = [];
  try {
    for (let rep = 0; rep < CONFIG.reps; rep++) {
      const r = await seed.rep(orgsOf(CONFIG.seedOpsPerRep));
      reps.push(r);
      log(`  rep ${rep + 1}: allocate p50 ${latencySummary(r.allocate).p50.toFixed(1)} ms, release p50 ${latencySummary(r.release).p50.toFixed(1)} ms, ${r.notLiveAtAnswer}/${r.allocate.length} answered before their route was live`);
    }
  } finally {
    seedNginx.destroy();
  }
  return { reps, allocate: sequentialFigures(reps, (r) => r.allocate), release: sequentialFigures(reps, (r) => r.release) };
}

async function main(): Promise<void> {
  const s = readServices();
  const runId = `${new Date().toISOString().slice(0, 10).replace(/-/g, '')}_${Math.random().toString(36).slice(2, 7)}`;
  const schema = `bench_${runId}`;
  const domain = `bench-${runId.replace(/_/g, '-')}.test`;
  log(`${QUICK ? 'QUICK smoke run' : 'full run'} ${runId}: schema ${schema}, zone ${domain}, nginx 127.0.0.1:${HTTPS_PORT} (status :${STATUS_PORT}, static proxy :${STATIC_PROXY_PORT}), stand-in gateways :${STAND_IN_PORT}`);

  const cleanups: Cleanups = [];
  // One clean-up, however many callers (a signal and main's own finally): each waits for it to end.
  let cleaning: Promise<void> | undefined;
  const cleanup = (): Promise<void> =>
    (cleaning ??= (async () => {
      for (const c of cleanups.splice(0).reverse()) {
        try {
          await c();
        } catch (err) {
          log(`clean-up step failed: ${(err as Error).message}`);
        }
      }
    })());
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
    log(`machine: ${machine.cores} cores (${machine.cpuModel}), ${machine.memoryGiB} GiB, node ${machine.node}, nginx ${machine.nginx}, njs ${machine.njs}, lua-nginx-module ${machine.lua}, PostgreSQL ${machine.postgres}, PowerDNS ${machine.powerdns}`);

    await createBenchZone(s, domain);
    cleanups.push(() => deleteZone(s, domain));
    cleanups.push(() => dropSchema(s.pgUrl, schema));

    const standIn = new StandInGateways(STAND_IN_PORT);
    cleanups.push(() => standIn.close());
    standIn.start();

    const nginx = new Stage1Nginx(domain, HTTPS_PORT, STATUS_PORT);
    cleanups.push(() => nginx.destroy());
    const probe = new ReloadProbe(nginx);
    probe.install();
    writeStaticProxy(nginx, STATIC_PROXY_PORT, `${gatewayHost(0)}:${standIn.port}`);
    nginx.start();

    const seed = ONLY_ROUTING ? undefined : await seedPhase(s, domain, standIn.port, cleanups);

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
      ...(DNS_WRITES === 'tables' ? { pdnsDbUrl: s.pdnsDbUrl } : {}),
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
    const ctx: PhaseContext = {
      s,
      domain,
      worker,
      nginx,
      probe,
      standInPort: standIn.port,
      everyBurst,
      rssByPhase: {},
      run: async (kind, orgs, c, what) => {
        const b = await worker.burst(kind, orgs, c);
        throwOnErrors(b, what);
        everyBurst.push(b);
        return b;
      },
    };

    // Warm-up (JIT, pg connections, nginx keep-alive): not measured.
    const warm = orgsOf(Math.min(64, CONFIG.poolSize));
    await ctx.run('allocate', warm, 16, 'warm-up');
    await ctx.run('release', warm, 16, 'warm-up');

    if (!seed) {
      const r = await routingPhase(ctx);
      const med = (x: { median: number }): string => x.median.toFixed(3);
      log(
        `row 5 (medians of ${CONFIG.wrkThroughputPairs} pairs and ${CONFIG.latencyRounds} latency runs): requests/s stage 1 ${r.stage1.requestsPerS.median.toFixed(0)} vs static ${r.staticProxy.requestsPerS.median.toFixed(0)}, ` +
          `paired ratio ${med(r.pairs.requestsPerSRatio)} [${r.pairs.requestsPerSRatio.min.toFixed(3)}–${r.pairs.requestsPerSRatio.max.toFixed(3)}], worker CPU/request +${r.pairs.addedCpuUs.median.toFixed(1)} µs; c=1 p50 ${med(r.stage1.p50Ms)} vs ${med(r.staticProxy.p50Ms)} ms, p99 ${med(r.stage1.p99Ms)} vs ${med(r.staticProxy.p99Ms)} ms, ` +
          `paired added p99 ${med(r.pairs.addedP99Ms)} ms; errors ${r.stage1.errors}/${r.staticProxy.errors}`,
      );
      return;
    }
    ctx.rssByPhase['start (connected, pool registered)'] = rssMiB(worker.pid).peak;
    resetPeakRss(worker.pid);
    const conc = await concurrencyPhase(ctx, seed);
    ctx.rssByPhase['concurrency phase'] = rssMiB(worker.pid).peak;

    log(`routing: wrk through stage 1 vs the static proxy, ${CONFIG.wrkThroughputPairs} pairs + ${CONFIG.latencyRounds} alternating latency runs, ${CONFIG.wrkSeconds} s each`);
    const routing = await routingPhase(ctx);

    const scale = await scalePhase(ctx, seed.allocate.p50.median);

    // ---------------------------------------------------------- DNS write cost (allocator idle)
    const pdnsPid = powerDnsPid(Number(new URL(s.pdnsApiUrl).port));
    const dnsRuns: DnsWriteCost[][] = [];
    for (let rep = 0; rep < CONFIG.reps; rep++) dnsRuns.push(await measureDnsWrites(s, domain, pdnsPid));
    const dnsWrites = dnsWriteFigures(dnsRuns);
    for (const d of dnsWrites) log(`DNS write cost, 64 organizations: publish ${d.publishMs.median.toFixed(0)} ms, withdraw ${d.withdrawMs.median.toFixed(0)} ms — ${d.variant}`);

    // Rows 1-2: cold start and hot reload in the realised dev environment (bench/realised/; quick mode: "full mode only").
    const realised = await measureRealised({ quick: QUICK, log });
    const extra = { targets: realisedTargets(realised), sections: [{ title: 'Rows 1-2: how cold start and hot reload were measured (realised dev environment)', markdown: (realised.skipped ? [realised.skipped] : [`Environment realised in ${(realised.realiseMs / 1000).toFixed(0)} s, pool of ${realised.poolSize} gateways.`, ...realised.notes]).map((n) => `- ${n}`).join('\n') }] };
    const results = assembleResults({ runId, durationS: elapsedS(), machine, seed, conc, routing, scale, dnsWrites, everyBurst, rssByPhase: ctx.rssByPhase, extra });

    // ---------------------------------------------------------- output
    // A smoke run (CI) writes next to the real results, in a directory git ignores (bench/.gitignore).
    const outDir = QUICK ? path.join(RESULTS_DIR, 'quick') : RESULTS_DIR;
    mkdirSync(outDir, { recursive: true });
    const stamp = results.date.slice(0, 19).replace(/:/g, '-');
    const md = renderMarkdown(results);
    const svg = renderSvg(results);
    const json = JSON.stringify(results, null, 2);
    // A smoke run keeps only its latest files (it runs in every CI run); a full run also keeps a dated copy.
    const files: Record<string, string> = { ...(QUICK ? {} : { [`${stamp}.json`]: json, [`${stamp}.md`]: md, [`${stamp}.svg`]: svg }), 'latest.json': json, 'latest.md': md, 'latest.svg': svg };
    for (const [f, content] of Object.entries(files)) writeFileSync(path.join(outDir, f), `${content.trimEnd()}\n`);
    log(`wrote ${path.relative(ROOT, outDir)}/{${Object.keys(files).join(',')}}`);
    if (WRITE_README) {
      log(updateReadme(path.join(ROOT, 'docs/bench.md'), results) ? 'docs/bench.md results refreshed' : 'docs/bench.md has no bench results markers; left alone');
      log(updateReadme(path.join(ROOT, 'README.md'), results, 'headline') ? 'README.md headline refreshed' : 'README.md has no bench headline markers; left alone');
    }
    process.stdout.write(`\n${md}\n`);
    const judged = results.targets.filter((t) => t.pass !== null);
    log(`done in ${elapsedS().toFixed(1)} s: ${judged.filter((t) => t.pass).length}/${judged.length} targets met`);
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
