/**
 * The soak (issue #9): several allocator worker processes run random
 * allocate / release / push / pull / heartbeat (and now and then reconcile /
 * reapStale) operations on many organizations against real PostgreSQL,
 * PowerDNS and nginx, while a fault injector restarts and stops those
 * services, breaks nginx's configuration and SIGKILLs workers in the middle of
 * operations. A checker samples the invariants throughout; at the end, with
 * faults stopped and reconcile() run, it checks every organization.
 *
 *   npx ts-node --transpile-only soak/run.ts [--ci] [--ops N] [options]   (scripts/soak.sh starts the services first)
 *
 * Uses its own PostgreSQL cluster and PowerDNS (SERVICES_PROFILE=soak of
 * scripts/test-services.sh): it restarts them, so it must never touch the
 * ones other suites share.
 */
import { ChildProcess, execFileSync, fork } from 'child_process';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Pool } from 'pg';
import { GatewayAllocator } from '../runtime/allocator';
import { RETRYABLE_CODES } from '../runtime/errors';
import { OrgDataStore } from '../runtime/org-data-store';
import { renderRoute } from '../runtime/nginx-config';
import { createZone, deleteZone, gatewayHost, patchZone, randomOrg, startStandInGateways } from '../test/helpers/fixtures';
import { readEnvFile, testServicesOf } from '../test/helpers/services-env';
import { Stage1Nginx } from '../test/helpers/stage1-nginx';
import { buildClosure } from './build';
import { Checker, GatewayInfo, Violation } from './checker';
import { BROKEN_FILE, FAULT_KINDS, FaultInjector, FaultRecord, FaultScheduler } from './faults';
import { Ledger } from './ledger';
import { OP_KINDS, OpKind, OrchestratorMessage, WorkerInit, WorkerMessage } from './protocol';
import { snapshotHash } from './snapshot';

const ROOT = path.resolve(__dirname, '..');
const STATE = path.join(ROOT, '.test-services', 'soak');
const SERVICES_SCRIPT = path.join(ROOT, 'scripts', 'test-services.sh');
const HTTPS_PORT = 30443;
const STATUS_PORT = 30099;
const DOMAIN = 'soak.test';
const ENV_NAME = 'soak';
const PUBLIC_IP = '127.0.0.1';

interface Options {
  mode: 'ci' | 'full';
  ops: number;
  workers: number;
  lanes: number;
  pool: number;
  orgs: number;
  faultsPerKind: number;
  leaseMs: number;
  waitTimeoutMs: number;
  seed: number;
  downMs: [number, number];
  thinkMs: number;
  sampleEveryMs: number;
  hangMs: number;
  maxConcurrentFaults: number;
}

const USAGE = `usage: soak/run.ts [--ci] [--ops N] [--workers N] [--lanes N] [--pool N] [--orgs N]
                   [--faults-per-kind N] [--lease-ms N] [--wait-ms N] [--think-ms N] [--seed N]`;

function parseArgs(argv: string[]): Options {
  const ci = argv.includes('--ci');
  const o: Options = ci
    ? { mode: 'ci', ops: 1000, workers: 3, lanes: 5, pool: 24, orgs: 60, faultsPerKind: 6, leaseMs: 6000, waitTimeoutMs: 4000, seed: Date.now() % 1e9, downMs: [700, 1500], thinkMs: 900, sampleEveryMs: 700, hangMs: 90_000, maxConcurrentFaults: 2 }
    : { mode: 'full', ops: 20000, workers: 3, lanes: 6, pool: 40, orgs: 120, faultsPerKind: 52, leaseMs: 10_000, waitTimeoutMs: 5000, seed: Date.now() % 1e9, downMs: [1000, 3000], thinkMs: 550, sampleEveryMs: 1000, hangMs: 90_000, maxConcurrentFaults: 2 };
  const num = (flag: string): number | undefined => {
    const i = argv.indexOf(flag);
    if (i < 0) return undefined;
    const v = Number(argv[i + 1]);
    if (!Number.isFinite(v) || v < 0) throw new Error(`${flag} needs a number\n${USAGE}`);
    return v;
  };
  const known = new Set(['--ci', '--ops', '--workers', '--lanes', '--pool', '--orgs', '--faults-per-kind', '--lease-ms', '--wait-ms', '--seed', '--think-ms']);
  argv.forEach((a, i) => {
    if (a.startsWith('--') && !known.has(a)) throw new Error(`unknown option ${a}\n${USAGE}`);
    if (!a.startsWith('--') && !(i > 0 && known.has(argv[i - 1]) && argv[i - 1] !== '--ci')) throw new Error(`unexpected argument ${a}\n${USAGE}`);
  });
  o.ops = num('--ops') ?? o.ops;
  o.workers = num('--workers') ?? o.workers;
  o.lanes = num('--lanes') ?? o.lanes;
  o.pool = num('--pool') ?? o.pool;
  o.orgs = num('--orgs') ?? o.orgs;
  o.faultsPerKind = num('--faults-per-kind') ?? o.faultsPerKind;
  o.leaseMs = num('--lease-ms') ?? o.leaseMs;
  o.waitTimeoutMs = num('--wait-ms') ?? o.waitTimeoutMs;
  o.seed = num('--seed') ?? o.seed;
  o.thinkMs = num('--think-ms') ?? o.thinkMs;
  return o;
}

function stamp(d = new Date()): string {
  return d.toISOString().replace(/[:]/g, '-').replace(/\..*$/, '');
}

function log(msg: string): void {
  process.stdout.write(`[soak ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function readServicesEnv(): Record<string, string> {
  const file = path.join(STATE, 'env');
  if (!existsSync(file)) {
    log('soak services not up yet: starting them (SERVICES_PROFILE=soak scripts/test-services.sh up)');
    execFileSync('bash', [SERVICES_SCRIPT, 'up'], { env: { ...process.env, SERVICES_PROFILE: 'soak' }, stdio: 'inherit' });
  }
  const env = readEnvFile(file);
  if (env.SERVICES_PROFILE !== 'soak') throw new Error(`${file} is not the soak profile's: refusing to restart shared services`);
  return env;
}

function percentile(values: number[], p: number): number {
  if (values.length === 0) return 0;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

interface InFlight {
  op: OpKind;
  org: string | null;
  at: number;
}

interface WorkerHandle {
  slot: number;
  generation: number;
  child: ChildProcess;
  pid: number;
  inflight: Map<string, InFlight>;
  killedByUs: boolean;
  stopping: boolean;
  alive: boolean;
  exited: Promise<void>;
  ready: Promise<void>;
  metrics?: Record<string, number>;
}

interface ErrorEvent {
  at: number;
  op: OpKind;
  code: string | null;
  retryable: boolean | null;
  message: string;
}

/** Stops an nginx a previous (crashed) soak run left behind: ours by its recorded prefix; waits until its ports are free. */
async function stopLeftoverNginx(): Promise<void> {
  const marker = path.join(STATE, 'stage1.json');
  if (!existsSync(marker)) return;
  let prefix = '';
  try {
    prefix = (JSON.parse(readFileSync(marker, 'utf8')) as { prefix: string }).prefix;
    const pid = Number(readFileSync(path.join(prefix, 'nginx.pid'), 'utf8'));
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    if (cmdline.includes('nginx') && cmdline.includes(prefix)) {
      process.kill(pid, 'SIGTERM');
      for (let i = 0; i < 100 && existsSync(`/proc/${pid}`); i++) await sleep(50);
      log(`stopped nginx ${pid} left by a previous run (${prefix})`);
    }
  } catch {
    /* nothing left */
  }
  if (prefix.startsWith(path.join(os.tmpdir(), 'demiurge-stage1-'))) rmSync(prefix, { recursive: true, force: true });
}

async function main(): Promise<number> {
  const opt = parseArgs(process.argv.slice(2));
  const t0 = Date.now();
  const runId = stamp();
  const runDir = path.join(STATE, 'runs', runId);
  mkdirSync(runDir, { recursive: true });
  // Logs of the last 5 runs are kept for post-mortems (a full run writes a few MB).
  const runs = readdirSync(path.join(STATE, 'runs')).sort();
  for (const old of runs.slice(0, Math.max(0, runs.length - 5))) rmSync(path.join(STATE, 'runs', old), { recursive: true, force: true });
  const env = readServicesEnv();
  const services = testServicesOf(env);
  log(`mode ${opt.mode}: ${opt.ops} ops, ${opt.workers} workers x ${opt.lanes} lanes, pool ${opt.pool}, ${opt.orgs} organizations, ${opt.faultsPerKind} faults of each of ${FAULT_KINDS.length} kinds; seed ${opt.seed}; logs in ${path.relative(ROOT, runDir)}`);

  const workerJs = buildClosure(ROOT, 'soak/worker.ts', path.join(STATE, 'build'));

  // ---------------------------------------------------------------- set-up
  const admin = new Pool({ connectionString: services.pgUrl, max: 6 });
  admin.on('error', () => undefined);
  for (const r of (await admin.query<{ nspname: string }>(`SELECT nspname FROM pg_namespace WHERE nspname LIKE 'soak\\_%'`)).rows) {
    await admin.query(`DROP SCHEMA "${r.nspname}" CASCADE`);
  }
  const schema = `soak_${runId.replace(/[^0-9]/g, '').slice(2, 14)}`;
  await deleteZone(services, DOMAIN);
  await createZone(services, DOMAIN);

  await stopLeftoverNginx();
  const nginx = new Stage1Nginx(DOMAIN, HTTPS_PORT, STATUS_PORT);
  writeFileSync(path.join(STATE, 'stage1.json'), JSON.stringify({ prefix: nginx.prefix }));
  nginx.start();
  const standIn = await startStandInGateways();
  const inventory = Array.from({ length: opt.pool }, (_, i) => ({ name: `gw-pool-${ENV_NAME}-${i}`, host: gatewayHost(i), httpPort: standIn.port, vpnPort: 49100 + i }));
  const orgs = Array.from({ length: opt.orgs }, () => randomOrg());
  const orchestratorLog = openSync(path.join(runDir, 'orchestrator-allocator.log'), 'a');
  const makeAllocator = (): GatewayAllocator =>
    new GatewayAllocator({
      envName: ENV_NAME,
      domain: DOMAIN,
      publicIp: PUBLIC_IP,
      pg: admin,
      powerdns: { apiUrl: services.pdnsApiUrl, apiKey: services.pdnsApiKey, zone: DOMAIN, database: { connectionString: services.pdnsDbUrl } },
      nginx: nginx.nginxOptions(),
      schema,
      leaseMs: opt.leaseMs,
      waitTimeoutMs: opt.waitTimeoutMs,
      logger: (e) => writeFileSync(orchestratorLog, `${JSON.stringify({ time: new Date().toISOString(), ...e })}\n`),
    });
  const setup = makeAllocator();
  await setup.migrate();
  await setup.registerGateways(inventory);
  await setup.markReady(inventory.map((g) => g.name));
  await setup.reconcile(); // writes the base configuration while nothing is broken
  await setup.close();

  const checkerOptions = {
    pg: admin,
    schema,
    envName: ENV_NAME,
    domain: DOMAIN,
    zone: DOMAIN,
    publicIp: PUBLIC_IP,
    inventory: inventory.map((g): GatewayInfo => ({ name: g.name, host: g.host, httpPort: g.httpPort })),
    nginx,
    pdns: { apiUrl: services.pdnsApiUrl, apiKey: services.pdnsApiKey, dnsPort: services.pdnsDnsPort },
    orgs,
  };
  const checker = new Checker(checkerOptions);
  const ledger = new Ledger(path.join(runDir, 'journal.jsonl'));
  const runViolations: Violation[] = [];
  const violation = (kind: string, detail: string): void => {
    const v = { at: new Date().toISOString(), kind, detail };
    runViolations.push(v);
    ledger.record({ t: 'violation', ...v });
    log(`VIOLATION ${kind}: ${detail.slice(0, 300)}`);
  };

  // ---------------------------------------------------------------- self-test, part 1
  // The checker must be able to fail: plant an orphan route file and an orphan DNS record (as a
  // buggy allocator would leave them) and make sure a sample reports both. Part 2 (corrupted
  // snapshot) runs at the end. A separate Checker keeps these out of the real findings.
  const selfTest = { planted: ['sample-route-orphan', 'sample-dns-orphan', 'data'], detected: [] as string[] };
  {
    const probe = new Checker(checkerOptions);
    const fake = randomOrg();
    const g = inventory[0];
    const file = path.join(nginx.confDir, 'routes', `org-${fake}.conf`);
    const name = `org-${fake}.${DOMAIN}.`;
    writeFileSync(file, renderRoute(ENV_NAME, fake, g.name, g.host, g.httpPort));
    await patchZone(services, DOMAIN, [
      { name, type: 'A', ttl: 60, changetype: 'REPLACE', records: [{ content: PUBLIC_IP, disabled: false }], comments: [{ content: `owner=demiurge-allocator env=${ENV_NAME} org=${fake}`, account: 'demiurge-allocator' }] },
    ]);
    await probe.sample();
    selfTest.detected.push(...new Set(probe.violations.map((v) => v.kind)));
    rmSync(file);
    await patchZone(services, DOMAIN, [{ name, type: 'A', changetype: 'DELETE' }]);
  }

  // ---------------------------------------------------------------- workers
  let opsDone = 0;
  let interrupted = 0;
  let slowed = false;
  const SLOW_FACTOR = 4;
  const latency = new Map<OpKind, number[]>(OP_KINDS.map((k) => [k, []]));
  const okByOp = new Map<OpKind, number>(OP_KINDS.map((k) => [k, 0]));
  const skippedByOp = new Map<string, number>();
  const errors: ErrorEvent[] = [];
  const reconcileRuns = { count: 0, recovered: 0, repaired: 0, orphansRemoved: 0, errors: 0 };
  const reaped = { runs: 0, released: 0 };
  const workers: WorkerHandle[] = [];
  let generations = 0;
  let shuttingDown = false;
  // Ctrl-C / SIGTERM: take our processes down with us (workers, nginx); the services stay up.
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      shuttingDown = true;
      for (const w of workers) if (w.alive) process.kill(w.pid, 'SIGKILL');
      nginx.destroy();
      process.exit(130);
    });
  }

  const weights: Record<OpKind, number> = { allocate: 26, release: 18, push: 22, pull: 14, heartbeat: 16, reconcile: 1.5, reap: 0.6 };

  const onMessage = (h: WorkerHandle, m: WorkerMessage): void => {
    switch (m.t) {
      case 'ready':
        break;
      case 'op-start':
        h.inflight.set(m.id, { op: m.op, org: m.org, at: m.at });
        break;
      case 'push-intent':
        ledger.intent(m.org, m.hash, m.id);
        break;
      case 'op-end': {
        h.inflight.delete(m.id);
        opsDone += 1;
        latency.get(m.op)?.push(m.ms);
        if (m.ok) {
          const r = m.result;
          if (r.kind === 'push-skipped' || r.kind === 'heartbeat-skipped') skippedByOp.set(`${m.op}: ${r.reason}`, (skippedByOp.get(`${m.op}: ${r.reason}`) ?? 0) + 1);
          else okByOp.set(m.op, (okByOp.get(m.op) ?? 0) + 1);
          if (r.kind === 'push') {
            ledger.ack(m.org as string, r.version, r.hash, m.id);
            if (r.storeSha256 === null) violation('push-ack-without-hash', `push ${m.id} acknowledged without the store's sha256`);
          }
          if (r.kind === 'pull') ledger.pulled({ org: m.org as string, version: r.version, hash: r.hash, startedAt: r.startedAt });
          if (r.kind === 'reconcile') {
            reconcileRuns.count += 1;
            reconcileRuns.recovered += r.recovered;
            reconcileRuns.repaired += r.repaired;
            reconcileRuns.orphansRemoved += r.orphansRemoved;
            reconcileRuns.errors += r.errors.length;
            for (const e of r.errors) errors.push({ at: m.at, op: 'reconcile', code: e.code, retryable: null, message: `(inside the reconcile report) ${e.message}` });
          }
          if (r.kind === 'reap') {
            reaped.runs += 1;
            reaped.released += r.released;
            for (const e of r.errors) errors.push({ at: m.at, op: 'reap', code: e.code, retryable: null, message: `(inside the reapStale report) ${e.message}` });
          }
        } else {
          errors.push({ at: m.at, op: m.op, code: m.error.code, retryable: m.error.retryable, message: m.error.message });
          ledger.record({ t: 'op-error', id: m.id, op: m.op, org: m.org, code: m.error.code, message: m.error.message.slice(0, 300) });
          if (m.error.code === null) violation('untyped-error', `${m.op} ${m.org ?? ''}: ${m.error.message}`);
        }
        break;
      }
      case 'hang':
        violation('hang', `worker ${h.slot}.${h.generation}: ${m.op} ${m.org ?? ''} running for ${m.ms} ms`);
        break;
      case 'crash':
        violation('worker-crash', `worker ${h.slot}.${h.generation}: ${m.message.slice(0, 800)}`);
        break;
      case 'done':
        h.metrics = m.metrics;
        break;
    }
  };

  const spawnWorker = (slot: number): WorkerHandle => {
    generations += 1;
    const generation = workers.filter((w) => w.slot === slot).length;
    const logFd = openSync(path.join(runDir, `worker-${slot}.log`), 'a');
    const child = fork(workerJs, [], { stdio: ['ignore', 'ignore', logFd, 'ipc'], serialization: 'json' });
    closeSync(logFd);
    let resolveReady: () => void = () => undefined;
    const h: WorkerHandle = {
      slot,
      generation,
      child,
      pid: child.pid ?? -1,
      inflight: new Map(),
      killedByUs: false,
      stopping: false,
      alive: true,
      ready: new Promise<void>((r) => (resolveReady = r)),
      exited: Promise.resolve(),
    };
    // 'exit' and 'disconnect' both: every message already in the pipe has been read by then.
    const exit = new Promise<void>((r) => child.once('exit', () => r()));
    const disc = new Promise<void>((r) => child.once('disconnect', () => r()));
    h.exited = Promise.all([exit, disc]).then(() => undefined);
    child.on('message', (m: WorkerMessage) => {
      if (m.t === 'ready') resolveReady();
      onMessage(h, m);
    });
    child.on('exit', (code, signal) => {
      h.alive = false;
      resolveReady();
      if (h.killedByUs) return;
      if (h.stopping) {
        if (code !== 0) violation('worker-exit', `worker ${slot}.${generation} exited with code ${code} on stop`);
        return;
      }
      violation('worker-exit', `worker ${slot}.${generation} exited by itself (code ${code}, signal ${signal}) with ${h.inflight.size} operations in flight`);
      // Like the API server's supervisor: start a new process so the soak goes on (the violation stays).
      interrupted += h.inflight.size;
      void h.exited.then(() => {
        if (!shuttingDown) spawnWorker(slot);
      });
    });
    const init: WorkerInit = {
      slot,
      generation,
      envName: ENV_NAME,
      domain: DOMAIN,
      publicIp: PUBLIC_IP,
      pgUrl: services.pgUrl,
      pgMax: 12,
      schema,
      // As the environment runs: records written to PowerDNS's tables (its database restarts with pg-restart).
      powerdns: { apiUrl: services.pdnsApiUrl, apiKey: services.pdnsApiKey, zone: DOMAIN, timeoutMs: 5000, database: { connectionString: services.pdnsDbUrl } },
      nginx: (() => {
        const n = nginx.nginxOptions();
        return { confDir: n.confDir, tls: n.tls, listen: n.listen as string, statusListen: n.statusListen as string, testCommand: n.testCommand as string[], reloadCommand: n.reloadCommand as string[] };
      })(),
      leaseMs: opt.leaseMs,
      waitTimeoutMs: opt.waitTimeoutMs,
      orgs,
      lanes: opt.lanes,
      weights,
      seed: opt.seed,
      thinkMs: opt.thinkMs,
      backoffMs: [100, 500],
      hangMs: opt.hangMs,
      reapSilenceMs: Math.max(15_000, opt.leaseMs * 2),
      maxSnapshotBytes: 256 * 1024,
    };
    const send = (m: OrchestratorMessage): void => {
      if (child.connected) child.send(m);
    };
    send({ t: 'init', init });
    send({ t: 'slow', factor: slowed ? SLOW_FACTOR : 1 });
    workers.push(h);
    return h;
  };

  const live = (): WorkerHandle[] => workers.filter((w) => w.alive && !w.killedByUs);
  const broadcast = (m: OrchestratorMessage): void => {
    for (const w of live()) if (w.child.connected) w.child.send(m);
  };

  const killWorker = async (): Promise<{ effective: boolean; detail: string }> => {
    // Prefer a worker in the middle of an allocate or release (the operations that leave transitional
    // state), else of any operation; only if none comes along, one that sits idle.
    const busy = (pred: (o: InFlight) => boolean): WorkerHandle | undefined => live().find((w) => [...w.inflight.values()].some(pred));
    let target: WorkerHandle | undefined;
    for (const [ms, pred] of [[6000, (o: InFlight) => o.op === 'allocate' || o.op === 'release'], [4000, () => true]] as const) {
      const deadline = Date.now() + ms;
      while (!target && Date.now() < deadline) {
        target = busy(pred);
        if (!target) await sleep(2);
      }
    }
    target ??= live()[0];
    if (!target) return { effective: false, detail: 'no live worker to kill' };
    const during = [...target.inflight.values()].map((o) => o.op);
    target.killedByUs = true;
    process.kill(target.pid, 'SIGKILL');
    await target.exited;
    interrupted += target.inflight.size;
    const t = Date.now();
    const next = spawnWorker(target.slot);
    await next.ready;
    const counts: Record<string, number> = {};
    during.forEach((op) => (counts[op] = (counts[op] ?? 0) + 1));
    return { effective: during.length > 0, detail: `worker ${target.slot}.${target.generation} (pid ${target.pid}) killed during ${JSON.stringify(counts)}; replacement ready in ${Date.now() - t} ms` };
  };

  for (let s = 0; s < opt.workers; s++) spawnWorker(s);
  await Promise.all(workers.map((w) => w.ready));
  log(`${opt.workers} workers ready (${Date.now() - t0} ms since start)`);

  // ---------------------------------------------------------------- faults, checker, progress
  const injector = new FaultInjector({
    servicesScript: SERVICES_SCRIPT,
    pgCluster: { version: '15', name: 'demiurge_soak' },
    pdnsApiUrl: services.pdnsApiUrl,
    pdnsApiKey: services.pdnsApiKey,
    pdnsPidFile: path.join(STATE, 'pdns', 'pdns.pid'),
    pg: admin,
    nginx: { confDir: nginx.confDir, testCommand: nginx.nginxOptions().testCommand as string[], pidFile: path.join(nginx.prefix, 'nginx.pid') },
    downMs: opt.downMs,
    killWorker,
  });
  const faultLog: FaultRecord[] = [];
  const scheduler = new FaultScheduler(FAULT_KINDS, opt.faultsPerKind, opt.ops, () => opsDone, injector, (r) => {
    faultLog.push(r);
    ledger.record({ t: 'fault', ...r });
    if (!r.effective) log(`fault ${r.kind} #${r.n} was NOT effective: ${r.detail}`);
  }, opt.maxConcurrentFaults);
  const runStart = Date.now();
  scheduler.start();

  let running = true;
  let lastByState: Record<string, number> = {};
  const sampler = (async () => {
    while (running) {
      await checker.sample();
      try {
        const rows = (await admin.query<{ state: string; n: string; names: string[] }>(`SELECT state, count(*)::text AS n, array_agg(name) AS names FROM "${schema}".gateways GROUP BY state`)).rows;
        lastByState = Object.fromEntries(rows.map((r) => [r.state, Number(r.n)]));
        // A quarantined gateway ('registered') comes back by calling /gateway/ready; the stand-ins do it at once.
        const quarantined = rows.find((r) => r.state === 'registered')?.names ?? [];
        if (quarantined.length > 0) {
          const a = makeAllocator();
          await a.markReady(quarantined).catch(() => undefined);
          await a.close();
        }
      } catch {
        /* PostgreSQL down: the next sample reads it */
      }
      await sleep(opt.sampleEveryMs);
    }
  })();
  const newViolations = (() => {
    let seen = 0;
    return (): void => {
      while (seen < checker.violations.length) {
        const v = checker.violations[seen++];
        ledger.record({ t: 'violation', ...v });
        log(`VIOLATION ${v.kind}: ${v.detail.slice(0, 300)}`);
      }
    };
  })();

  let lastOps = 0;
  let lastT = Date.now();
  const progress = setInterval(() => {
    newViolations();
    const now = Date.now();
    const rate = ((opsDone - lastOps) * 1000) / (now - lastT);
    lastOps = opsDone;
    lastT = now;
    const codes: Record<string, number> = {};
    for (const e of errors) codes[e.code ?? 'UNTYPED'] = (codes[e.code ?? 'UNTYPED'] ?? 0) + 1;
    const f = scheduler.countByKind();
    log(
      `ops ${opsDone}/${opt.ops} (${rate.toFixed(0)}/s)${slowed ? ' (slowed: a fault is overdue)' : ''} | faults ${FAULT_KINDS.map((k) => `${k} ${f[k]}`).join(', ')}${scheduler.activeFaults().length ? ` [now: ${scheduler.activeFaults().join(', ')}]` : ''} | errors ${JSON.stringify(codes)} | pool ${JSON.stringify(lastByState)} | violations ${runViolations.length + checker.violations.length}`,
    );
  }, 5000);

  while (opsDone < opt.ops || scheduler.remaining() > 0) {
    const shouldSlow = scheduler.lagging();
    if (shouldSlow !== slowed) {
      slowed = shouldSlow;
      broadcast({ t: 'slow', factor: slowed ? SLOW_FACTOR : 1 });
    }
    await sleep(50);
  }
  await scheduler.stop();
  const faultPhaseMs = Date.now() - runStart;
  log(`ops and faults done (${opsDone} ops, ${faultLog.length} faults in ${(faultPhaseMs / 1000).toFixed(0)} s): stopping workers`);

  // ---------------------------------------------------------------- wind down
  shuttingDown = true;
  for (const w of live()) w.stopping = true;
  broadcast({ t: 'stop' });
  const stopDeadline = sleep(opt.hangMs + 30_000).then(() => 'timeout' as const);
  const stopped = await Promise.race([Promise.all(live().map((w) => w.exited)).then(() => 'ok' as const), stopDeadline]);
  if (stopped === 'timeout') {
    for (const w of live()) {
      violation('worker-stop-hang', `worker ${w.slot}.${w.generation} did not finish its operations (${[...w.inflight.values()].map((o) => o.op).join(', ')})`);
      w.killedByUs = true;
      process.kill(w.pid, 'SIGKILL');
    }
  }
  running = false;
  clearInterval(progress);
  await sampler;
  newViolations();

  // Services must all be healthy before the final check: a fault never outlives its injector, but verify.
  if (existsSync(path.join(nginx.confDir, BROKEN_FILE))) violation('fault-left-behind', `${BROKEN_FILE} still present`);
  execFileSync('bash', [SERVICES_SCRIPT, 'up'], { env: { ...process.env, SERVICES_PROFILE: 'soak' }, stdio: 'ignore' });

  log('final reconcile({ force: true }) (no worker runs any more)');
  const finalAllocator = makeAllocator();
  const reconciles: Array<Record<string, number>> = [];
  for (let i = 0; i < 5; i++) {
    try {
      const r = await finalAllocator.reconcile({ force: true });
      const summary = { recovered: r.recovered.length, dnsRepaired: r.dnsRepaired.length, routesRepaired: r.routesRepaired.length, dnsOrphansRemoved: r.dnsOrphansRemoved.length, routeOrphansRemoved: r.routeOrphansRemoved.length, tempFilesRemoved: r.tempFilesRemoved.length, inFlight: r.inFlight.length, errors: r.errors.length };
      reconciles.push(summary);
      if (r.errors.length === 0) break;
      log(`reconcile reported errors, again: ${JSON.stringify(r.errors).slice(0, 300)}`);
    } catch (err) {
      reconciles.push({ threw: 1 });
      log(`reconcile threw, again: ${(err as Error).message}`);
    }
    await sleep(1000);
  }
  // Quarantined gateways (if the reaper quarantines) come back as their stand-ins call ready.
  const quarantined = (await admin.query<{ name: string }>(`SELECT name FROM "${schema}".gateways WHERE state = 'registered'`)).rows.map((r) => r.name);
  if (quarantined.length > 0) await finalAllocator.markReady(quarantined);
  await finalAllocator.close();

  log('final check: pool, every organization by dig and HTTPS, owned records and route files, data');
  const finalState = await checker.final();
  newViolations();

  const store = new OrgDataStore({ pg: admin, schema });
  const dataOutcome = { orgs: 0, matchedLastAck: 0, laterUnacked: 0, empty: 0 };
  for (const org of ledger.orgsWithData()) {
    dataOutcome.orgs += 1;
    let p: { version: number | null; data: unknown };
    try {
      p = await store.pull(org);
    } catch (err) {
      violation('final-pull-failed', `${org}: ${(err as Error).message}`);
      continue;
    }
    const j = ledger.judge({ org, version: p.version, hash: p.data === null ? null : snapshotHash(p.data), startedAt: Date.now() }, Number.POSITIVE_INFINITY);
    if (j.problem) violation('data', j.problem);
    else if (j.outcome === 'acked') dataOutcome.matchedLastAck += 1;
    else if (j.outcome === 'later-unacked') dataOutcome.laterUnacked += 1;
    else dataOutcome.empty += 1;
  }
  for (const d of ledger.duplicateAcks()) violation('data-duplicate-version', d);

  // Self-test, part 2: one stored byte changed behind the store's back must be reported.
  const victim = ledger.orgsWithData()[0];
  if (victim) {
    const tbl = `"${schema}".org_snapshots`;
    const latest = `version = (SELECT max(version) FROM ${tbl} WHERE organization_id = $1)`;
    const saved = (await admin.query<{ payload: Buffer }>(`SELECT payload FROM ${tbl} WHERE organization_id = $1 AND ${latest}`, [victim])).rows[0]?.payload;
    if (saved) {
      await admin.query(`UPDATE ${tbl} SET payload = convert_to(replace(convert_from(payload, 'UTF8'), '"nonce":"', '"nonce":"0'), 'UTF8') WHERE organization_id = $1 AND ${latest}`, [victim]);
      const p = await store.pull(victim);
      const j = ledger.judge({ org: victim, version: p.version, hash: p.data === null ? null : snapshotHash(p.data), startedAt: Date.now() }, Number.POSITIVE_INFINITY);
      if (j.problem) selfTest.detected.push('data');
      await admin.query(`UPDATE ${tbl} SET payload = $2 WHERE organization_id = $1 AND ${latest}`, [victim, saved]);
    }
  }
  const missed = selfTest.planted.filter((k) => !selfTest.detected.includes(k));
  if (missed.length > 0) violation('self-test', `the checker missed planted violations: ${missed.join(', ')} (detected ${selfTest.detected.join(', ') || 'nothing'})`);
  const runPulls = ledger.judgeRunPulls();
  for (const p of runPulls.problems) violation('data-during-run', p);

  // ---------------------------------------------------------------- report
  const faultsByKind: Record<string, { count: number; effective: number; avgMs: number; maxMs: number }> = {};
  for (const k of FAULT_KINDS) {
    const list = faultLog.filter((f) => f.kind === k);
    faultsByKind[k] = {
      count: list.length,
      effective: list.filter((f) => f.effective).length,
      avgMs: Math.round(list.reduce((a, f) => a + f.ms, 0) / Math.max(1, list.length)),
      maxMs: list.reduce((a, f) => Math.max(a, f.ms), 0),
    };
    // Only faults that took effect count: a stop that did not stop proves nothing.
    const effective = faultsByKind[k].effective;
    if (effective < opt.faultsPerKind) violation('too-few-faults', `${k}: ${effective} effective (${list.length} injected) < ${opt.faultsPerKind}`);
  }
  // Attributes each error to the faults active at its time, plus a grace: 3 s for a service to
  // settle, and for a killed worker its lease (its gateways stay transitional that long).
  const windows = faultLog.map((f) => ({ kind: f.kind, from: Date.parse(f.startedAt), to: Date.parse(f.endedAt) + 3000 + (f.kind === 'worker-kill' ? opt.leaseMs : 0) }));
  // How much of the operations phase those windows cover (100 ms resolution).
  let covered = 0;
  for (let t = runStart; t < runStart + faultPhaseMs; t += 100) if (windows.some((w) => t >= w.from && t <= w.to)) covered += 1;
  const faultCoverage = Math.round((covered * 100 * 100) / Math.max(1, faultPhaseMs));
  const errorsByCode: Record<string, { count: number; retryable: boolean | null; byOp: Record<string, number>; whileFaultOrGrace: number; otherwise: number; example: string }> = {};
  for (const e of errors) {
    const key = e.code ?? 'UNTYPED';
    const entry = (errorsByCode[key] ??= { count: 0, retryable: e.code === null ? null : (RETRYABLE_CODES as ReadonlySet<string>).has(e.code), byOp: {}, whileFaultOrGrace: 0, otherwise: 0, example: e.message.slice(0, 200) });
    entry.count += 1;
    entry.byOp[e.op] = (entry.byOp[e.op] ?? 0) + 1;
    if (windows.some((w) => e.at >= w.from && e.at <= w.to)) entry.whileFaultOrGrace += 1;
    else entry.otherwise += 1;
  }
  const opsReport: Record<string, { ok: number; failed: number; p50ms: number; p99ms: number; maxMs: number }> = {};
  for (const k of OP_KINDS) {
    const lat = latency.get(k) ?? [];
    if (lat.length === 0) continue;
    opsReport[k] = { ok: okByOp.get(k) ?? 0, failed: errors.filter((e) => e.op === k && !e.message.startsWith('(inside')).length, p50ms: percentile(lat, 50), p99ms: percentile(lat, 99), maxMs: percentile(lat, 100) };
  }
  const allViolations = [...runViolations, ...checker.violations];
  const violationsByKind: Record<string, number> = {};
  for (const v of allViolations) violationsByKind[v.kind] = (violationsByKind[v.kind] ?? 0) + 1;
  const durationS = Math.round((Date.now() - t0) / 1000);
  const report = {
    run: runId,
    mode: opt.mode,
    options: opt,
    machine: { cores: os.cpus().length, node: process.version },
    durationSeconds: durationS,
    opsPhaseSeconds: Math.round(faultPhaseMs / 1000),
    ops: { completed: opsDone, interruptedByKill: interrupted, byKind: opsReport, skipped: Object.fromEntries(skippedByOp) },
    faults: { total: faultLog.length, byKind: faultsByKind, percentOfRunInAFaultWindow: faultCoverage },
    errorsByCode,
    reconcileDuringRun: reconcileRuns,
    reapStaleDuringRun: reaped,
    finalReconcile: reconciles,
    finalPool: finalState.byState,
    checker: { samples: checker.samples, skippedParts: checker.skipped, probes: checker.probes },
    data: { intentsSent: ledger.intentsSent, pushesAcknowledged: ledger.pushesAcked, pullsCheckedDuringRun: runPulls.checked, final: dataOutcome },
    workerMetrics: workers.filter((w) => w.metrics).map((w) => ({ worker: `${w.slot}.${w.generation}`, ...w.metrics })),
    workerProcesses: generations,
    selfTest,
    invariants: invariantTable(allViolations),
    violations: { count: allViolations.length, byKind: violationsByKind, list: allViolations.slice(0, 200) },
  };
  ledger.record({ t: 'report', violations: allViolations.length });
  ledger.close();
  closeSync(orchestratorLog);
  const resultsDir = path.join(ROOT, 'soak', 'results');
  mkdirSync(resultsDir, { recursive: true });
  const resultFile = path.join(resultsDir, `${runId}${opt.mode === 'ci' ? '-ci' : ''}.json`);
  writeFileSync(resultFile, `${JSON.stringify(report, null, 2)}\n`);

  printReport(report, path.relative(ROOT, resultFile));

  nginx.destroy();
  await standIn.close();
  await admin.end();
  return allViolations.length === 0 ? 0 : 1;
}

/** The issue's invariants, and which violation kinds break each. */
const INVARIANTS: Array<{ name: string; kinds: RegExp }> = [
  { name: 'no gateway held by two organizations, no organization holding two gateways', kinds: /^(org-two-gateways|bad-row|.*-route-wrong-gateway)$/ },
  { name: 'nothing lost: ready + allocated + transitional = pool size (none transitional at the end)', kinds: /^(gateway-lost|final-transitional)$/ },
  { name: 'DNS: both names of every allocated organization, NXDOMAIN for the others, no orphaned owned record', kinds: /^(.*-dns-orphan|.*-dns-missing|.*-dig-mismatch|final-dig-failed)$/ },
  { name: 'nginx: HTTPS reaches the allocated gateway, 404 for the others, no orphaned route file', kinds: /^(.*-route-orphan|.*-route-missing|.*-dead-route|.*-https-failed|.*-route-not-removed|final-stray-file)$/ },
  { name: 'every acknowledged push pullable byte for byte (or a later unacknowledged one)', kinds: /^(data|data-during-run|data-duplicate-version|final-pull-failed|push-ack-without-hash)$/ },
  { name: 'failures typed, no hang, no process dying by itself', kinds: /^(untyped-error|hang|worker-crash|worker-exit|worker-stop-hang)$/ },
  { name: 'faults injected as required; the checker detects planted violations', kinds: /^(too-few-faults|fault-left-behind|self-test)$/ },
];

function invariantTable(violations: Violation[]): Array<{ invariant: string; violations: number }> {
  const rows = INVARIANTS.map((i) => ({ invariant: i.name, violations: violations.filter((v) => i.kinds.test(v.kind)).length }));
  const unclassified = violations.filter((v) => !INVARIANTS.some((i) => i.kinds.test(v.kind))).length;
  if (unclassified > 0) rows.push({ invariant: 'other', violations: unclassified });
  return rows;
}

interface PrintableReport {
  invariants: Array<{ invariant: string; violations: number }>;
  mode: string;
  durationSeconds: number;
  opsPhaseSeconds: number;
  ops: { completed: number; interruptedByKill: number; byKind: Record<string, { ok: number; failed: number; p50ms: number; p99ms: number; maxMs: number }> };
  faults: { total: number; byKind: Record<string, { count: number; effective: number; avgMs: number; maxMs: number }>; percentOfRunInAFaultWindow: number };
  selfTest: { planted: string[]; detected: string[] };
  errorsByCode: Record<string, { count: number; retryable: boolean | null; byOp: Record<string, number>; whileFaultOrGrace: number; otherwise: number }>;
  finalPool: Record<string, number>;
  checker: { samples: number; skippedParts: Record<string, number>; probes: { https: number; dig: number } };
  data: { intentsSent: number; pushesAcknowledged: number; pullsCheckedDuringRun: number; final: { orgs: number; matchedLastAck: number; laterUnacked: number; empty: number } };
  violations: { count: number; byKind: Record<string, number>; list: Violation[] };
}

function printReport(r: PrintableReport, file: string): void {
  const lines: string[] = [];
  lines.push('', `================ soak invariant report (${r.mode}) ================`);
  lines.push(`duration ${r.durationSeconds} s (operations and faults: ${r.opsPhaseSeconds} s)`);
  lines.push(`operations: ${r.ops.completed} completed, ${r.ops.interruptedByKill} interrupted by SIGKILL`);
  for (const [k, v] of Object.entries(r.ops.byKind)) lines.push(`  ${k.padEnd(10)} ok ${String(v.ok).padStart(6)}  failed ${String(v.failed).padStart(5)}  p50 ${v.p50ms} ms  p99 ${v.p99ms} ms  max ${v.maxMs} ms`);
  lines.push(`faults: ${r.faults.total} (a fault window, incl. 3 s settling and a killed worker's lease, covered ${r.faults.percentOfRunInAFaultWindow} % of the run)`);
  for (const [k, v] of Object.entries(r.faults.byKind)) lines.push(`  ${k.padEnd(13)} ${String(v.count).padStart(4)} (effective ${v.effective}), avg ${v.avgMs} ms, max ${v.maxMs} ms`);
  lines.push('errors by code (every one a typed AllocatorError unless UNTYPED):');
  for (const [k, v] of Object.entries(r.errorsByCode).sort((a, b) => b[1].count - a[1].count)) {
    lines.push(`  ${k.padEnd(24)} ${String(v.count).padStart(5)}  retryable ${String(v.retryable).padEnd(5)}  in a fault window ${v.whileFaultOrGrace}, outside ${v.otherwise}  ${JSON.stringify(v.byOp)}`);
  }
  lines.push(`final pool: ${JSON.stringify(r.finalPool)}`);
  lines.push(`checker: ${r.checker.samples} samples during the run (parts skipped while a service was down: ${JSON.stringify(r.checker.skippedParts)}), ${r.checker.probes.https} HTTPS and ${r.checker.probes.dig} dig probes`);
  lines.push(
    `data: ${r.data.pushesAcknowledged} pushes acknowledged of ${r.data.intentsSent} sent; ${r.data.pullsCheckedDuringRun} pulls checked during the run; final: ${r.data.final.orgs} orgs, ${r.data.final.matchedLastAck} = last acknowledged, ${r.data.final.laterUnacked} = a later unacknowledged push`,
  );
  lines.push(`checker self-test (planted ${r.selfTest.planted.join(', ')}): detected ${r.selfTest.detected.join(', ') || 'nothing'}`);
  lines.push('invariants:');
  for (const i of r.invariants) lines.push(`  ${i.violations === 0 ? 'OK  ' : 'FAIL'} ${i.invariant}${i.violations ? ` (${i.violations} violations)` : ''}`);
  lines.push(`VIOLATIONS: ${r.violations.count} ${r.violations.count ? JSON.stringify(r.violations.byKind) : ''}`);
  for (const v of r.violations.list.slice(0, 20)) lines.push(`  ${v.at} ${v.kind}: ${v.detail.slice(0, 300)}`);
  lines.push(`report: ${file}`, '');
  process.stdout.write(lines.join('\n') + '\n');
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`soak failed: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(2);
  },
);
