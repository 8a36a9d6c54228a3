/**
 * Row 5 probe (docs/bench.md, "Row 5"): what each piece of stage 1's per-request
 * routing costs. One throwaway nginx (own prefix, own ports, loopback) with
 * servers that reach the same stand-in gateway nginx (bench/stand-in-gateways.ts):
 *   static     — the static proxy of bench/routing.ts (no lookup, no variable upstream)
 *   stage1     — stage 1 as rendered by runtime/nginx-config.ts today (its route table loaded
 *                from one route file by its own init_worker)
 *   mapLookup  — session 5's lookup: the map $host → org id (a regex) and an inline
 *                `set_by_lua_block` shared-dict get (LuaJIT never compiles it)
 *   mapFloor   — the map and a static map org id → upstream: no table lookup at all
 *   varProxy   — the static proxy with `proxy_pass http://$variable` (no lookup)
 *   setConst   — varProxy with the variable set by a `set_by_lua_block` returning a constant: the
 *                Lua entry stage 1 pays, without the lookup
 *   balancer   — stage 1's lookup in `balancer_by_lua` of a fixed upstream block (no variable, no
 *                `set_by_lua`; a miss would need a page of its own: not how stage 1 is built)
 *   balancerConst — the same with a constant peer: that design's floor
 *
 * Two measures:
 *   (default)        wrk one thread, kept-alive TLS, -c32 for requests/s and the workers' CPU per
 *                    request from /proc, each round's servers in alternating order. On a shared or
 *                    virtual machine both move with its load: read them as medians of many rounds.
 *   --instructions   the user-space instructions per request of each server (valgrind's callgrind,
 *                    one nginx process, 2,000 sequential requests on one kept-alive TLS connection):
 *                    deterministic to ±0.5 %, independent of the machine's load. Kernel time (most
 *                    of a proxied request here) is the same for every server: the same syscalls.
 *
 *   flock /tmp/bench.lock npx ts-node --transpile-only bench/routing-probe.ts [rounds] [seconds]
 *   npx ts-node --transpile-only bench/routing-probe.ts --instructions [requests]
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { NJS_MODULE_PATH, ORGS_CONF, ROUTES_JS, ROUTES_SUBDIR, proxyDirectives, renderOrgsConf, renderRoute, renderRoutesJs, routeFileName } from '../runtime/nginx-config';
import { ROUTES_DICT } from '../runtime/nginx-route-table';
import { runWrk, workersCpuUs } from './routing';
import { StandInGateways } from './stand-in-gateways';

const INSTRUCTIONS = process.argv.includes('--instructions');
const positional = process.argv.slice(2).filter((a) => !a.startsWith('--'));
const ROUNDS = Number(positional[0] ?? 6);
const SECONDS = Number(positional[1] ?? 3);
const REQUESTS = Number(positional[0] ?? 2000);
const CONNECTIONS = 32;
const PORTS = { stage1: 29743, static: 29744, mapLookup: 29745, mapFloor: 29748, varProxy: 29749, balancer: 29750, balancerConst: 29752, setConst: 29753, status: 29799, standIn: 29780 };
const ORG = '0b9c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3';
const DOMAIN = 'routing-probe.test';
const UPSTREAM = `127.0.0.1:${PORTS.standIn}`;
type Kind = 'static' | 'stage1' | 'mapLookup' | 'mapFloor' | 'varProxy' | 'balancer' | 'balancerConst' | 'setConst';
const KINDS: Kind[] = ['static', 'stage1', 'mapLookup', 'mapFloor', 'varProxy', 'balancer', 'balancerConst', 'setConst'];
const HOST = `org-${ORG}.${DOMAIN}`;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

interface Probe {
  prefix: string;
  conf: string;
}

/** The stand-in gateway's and the probe nginx's configuration files. */
function writeConfigs(singleProcess: boolean): Probe {
  const prefix = mkdtempSync(path.join(os.tmpdir(), 'demiurge-routing-probe-'));
  chmodSync(prefix, 0o755); // nginx workers (nobody) read the route file
  const confDir = path.join(prefix, 'demiurge');
  for (const d of [path.join(prefix, 'logs'), confDir, path.join(confDir, ROUTES_SUBDIR)]) mkdirSync(d, { recursive: true, mode: 0o755 });
  const cert = path.join(prefix, 'cert.pem');
  const key = path.join(prefix, 'key.pem');
  execFileSync('mkcert', ['-cert-file', cert, '-key-file', key, DOMAIN, `*.${DOMAIN}`], { env: { ...process.env, CAROOT: path.join(prefix, 'ca') }, stdio: 'ignore' });
  chmodSync(key, 0o644);

  const render = { confDir, domain: DOMAIN, listen: `127.0.0.1:${PORTS.stage1} ssl`, certPath: cert, keyPath: key, statusListen: `127.0.0.1:${PORTS.status}` };
  writeFileSync(path.join(confDir, ORGS_CONF), renderOrgsConf(render));
  writeFileSync(path.join(confDir, ROUTES_JS), renderRoutesJs(render));
  const [host, port] = UPSTREAM.split(':');
  writeFileSync(path.join(confDir, ROUTES_SUBDIR, routeFileName(ORG)), renderRoute('probe', ORG, 'gw-0', host, Number(port)));

  const server = (p: number, location: string, serverName = ''): string => `server {
    listen 127.0.0.1:${p} ssl;
${serverName ? `    server_name ${serverName};\n` : ''}    ssl_certificate ${cert};
    ssl_certificate_key ${key};
    location / {
        ${location}
${proxyDirectives('$demiurge_connection_upgrade')}
    }
}
`;
  const stage1Name = `"~^(?:[a-z0-9-]+\\.)*org-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\\.${DOMAIN.replace(/\./g, '\\.')}$"`;
  const viaVariable = (set: string): string => `${set}\n        if ($probe_gw = "") { return 404; }\n        proxy_pass http://$probe_gw;`;
  const conf = path.join(prefix, 'nginx.conf');
  writeFileSync(
    conf,
    `load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
load_module ${NJS_MODULE_PATH};
${singleProcess ? 'master_process off;\ndaemon off;\nworker_processes 1;' : 'worker_processes 2;'}
pid ${prefix}/nginx.pid;
pcre_jit on;
error_log ${prefix}/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    server_names_hash_bucket_size 128;
    client_body_temp_path ${prefix}/tmp-body;
    proxy_temp_path ${prefix}/tmp-proxy;
    include ${confDir}/*.conf;
    map $demiurge_org_id $probe_floor_gw {
        default "";
        ${ORG} ${UPSTREAM};
    }
${server(PORTS.static, `proxy_pass http://${UPSTREAM};`)}
${server(PORTS.mapLookup, viaVariable(`set_by_lua_block $probe_gw { return ngx.shared.${ROUTES_DICT}:get(ngx.var.demiurge_org_id) or "" }`), stage1Name)}
${server(PORTS.mapFloor, viaVariable('set $probe_gw $probe_floor_gw;'), stage1Name)}
${server(PORTS.varProxy, viaVariable(`set $probe_gw ${UPSTREAM};`))}
    # balancer_by_lua (one Lua entry, a fixed upstream block): the peer from demiurge.route(), or a
    # constant. Each function is made once per worker, as a closure (LuaJIT compiles it; an inline
    # chunk's code runs interpreted, see runtime/nginx-route-table.ts).
    upstream probe_balancer {
        server 0.0.0.1;
        balancer_by_lua_block { local f = demiurge.probe_balance; if not f then local set, route = require("ngx.balancer").set_current_peer, demiurge.route; f = function() set(route()) end; demiurge.probe_balance = f end; f() }
    }
    upstream probe_balancer_const {
        server 0.0.0.1;
        balancer_by_lua_block { local f = demiurge.probe_balance_const; if not f then local set = require("ngx.balancer").set_current_peer; f = function() set("${UPSTREAM}") end; demiurge.probe_balance_const = f end; f() }
    }
${server(PORTS.balancer, 'proxy_pass http://probe_balancer;', stage1Name)}
${server(PORTS.balancerConst, 'proxy_pass http://probe_balancer_const;')}
${server(PORTS.setConst, viaVariable(`set_by_lua_block $probe_gw { return "${UPSTREAM}" }`))}
}
`,
  );
  return { prefix, conf };
}

function stop(p: string): void {
  try {
    execFileSync('nginx', ['-p', p, '-c', path.join(p, 'nginx.conf'), '-s', 'quit'], { stdio: 'ignore' });
  } catch {
    /* not running */
  }
}

function curlStatus(port: number): Promise<string> {
  return new Promise((resolve) =>
    execFile('curl', ['-sk', '-o', '/dev/null', '-w', '%{http_code}', '-H', `Host: ${HOST}`, `https://127.0.0.1:${port}/`], (_e, out) => resolve(String(out))),
  );
}

async function waitServing(what: string, port: number, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if ((await curlStatus(port)) === '200') return;
    if (Date.now() > until) throw new Error(`${what} did not answer 200 on :${port} within ${timeoutMs} ms`);
    await new Promise((r) => setImmediate(r));
  }
}

/** `n` sequential requests on one kept-alive TLS connection (curl -K). */
function curlSequential(port: number, n: number, dir: string): void {
  const list = path.join(dir, `urls-${port}`);
  writeFileSync(list, `url = "https://127.0.0.1:${port}/"\noutput = "/dev/null"\n`.repeat(n));
  execFileSync('curl', ['-sk', '-H', `Host: ${HOST}`, '-K', list]);
}

/** The newest callgrind dump's total instructions. */
function lastDumpInstructions(dir: string): number {
  // cg.<pid>.<n>: the n-th dump (cg.<pid> itself is written at exit).
  const dumps = readdirSync(dir).filter((f) => /^cg\.\d+\.\d+$/.test(f));
  const newest = dumps.map((f) => ({ f, n: Number(f.split('.')[2]) })).sort((a, b) => b.n - a.n)[0];
  if (!newest) throw new Error(`no callgrind dump in ${dir}`);
  const text = readFileSync(path.join(dir, newest.f), 'utf8');
  const m = /^(?:summary|totals): (\d+)/m.exec(text);
  if (!m) throw new Error(`no instruction total in ${newest.f}`);
  return Number(m[1]);
}

async function instructions(p: Probe): Promise<void> {
  const cgDir = path.join(p.prefix, 'callgrind');
  mkdirSync(cgDir);
  const vg: ChildProcess = spawn('valgrind', ['--tool=callgrind', '--smc-check=all-non-file', `--callgrind-out-file=${cgDir}/cg.%p`, 'nginx', '-p', p.prefix, '-c', p.conf], { stdio: 'ignore' });
  try {
    await waitServing('nginx under valgrind', PORTS.static, 120_000);
    await waitServing('stage 1 under valgrind', PORTS.stage1, 30_000);
    const per = Object.fromEntries(KINDS.map((k) => [k, [] as number[]])) as Record<Kind, number[]>;
    for (let round = 0; round < 2; round++) {
      for (const k of KINDS) {
        curlSequential(PORTS[k], 200, p.prefix); // warm: LuaJIT traces, pools
        execFileSync('callgrind_control', ['-z', String(vg.pid)], { stdio: 'ignore' });
        curlSequential(PORTS[k], REQUESTS, p.prefix);
        execFileSync('callgrind_control', [`--dump=${k}`, String(vg.pid)], { stdio: 'ignore' });
        per[k].push(lastDumpInstructions(cgDir) / REQUESTS);
      }
    }
    console.log(`user-space instructions per request (callgrind, ${REQUESTS} sequential requests on one connection, 2 rounds):`);
    const base = median(per.static);
    for (const k of KINDS) console.log(`  ${k.padEnd(10)} ${per[k].map((x) => x.toFixed(0)).join(' / ')}  (${k === 'static' ? 'the baseline' : `${median(per[k]) - base >= 0 ? '+' : ''}${(median(per[k]) - base).toFixed(0)} over static`})`);
  } finally {
    vg.kill('SIGTERM');
  }
}

async function throughput(p: Probe): Promise<void> {
  execFileSync('nginx', ['-p', p.prefix, '-c', p.conf], { stdio: 'pipe' });
  await waitServing('stage 1', PORTS.stage1, 10_000);
  const rps = Object.fromEntries(KINDS.map((k) => [k, [] as number[]])) as Record<Kind, number[]>;
  const cpu = Object.fromEntries(KINDS.map((k) => [k, [] as number[]])) as Record<Kind, number[]>;
  for (const k of KINDS) {
    const w = await runWrk(`https://127.0.0.1:${PORTS[k]}/`, HOST, 1, CONNECTIONS);
    if (w.errors) throw new Error(`${k}: ${w.errors} errors in the warm-up`);
  }
  for (let r = 0; r < ROUNDS; r++) {
    for (const k of r % 2 ? [...KINDS].reverse() : KINDS) {
      const c0 = workersCpuUs(p);
      const w = await runWrk(`https://127.0.0.1:${PORTS[k]}/`, HOST, SECONDS, CONNECTIONS);
      cpu[k].push((workersCpuUs(p) - c0) / w.requests);
      rps[k].push(w.requestsPerS);
    }
    console.log(`round ${r + 1}: ${KINDS.map((k) => `${k} ${rps[k][r].toFixed(0)}/s ${cpu[k][r].toFixed(1)} µs`).join(' | ')}`);
  }
  console.log('\nagainst the static proxy of the same round, median [min–max]:');
  const f = (xs: number[], d: number): string => `${median(xs).toFixed(d)} [${Math.min(...xs).toFixed(d)}–${Math.max(...xs).toFixed(d)}]`;
  for (const k of KINDS.filter((x) => x !== 'static')) {
    console.log(`  ${k}: requests/s ratio ${f(rps[k].map((x, i) => x / rps.static[i]), 3)}; worker CPU/request +${f(cpu[k].map((c, i) => c - cpu.static[i]), 1)} µs`);
  }
  console.log(`  static: ${median(rps.static).toFixed(0)}/s, ${median(cpu.static).toFixed(1)} µs/request`);
}

async function main(): Promise<void> {
  const p = writeConfigs(INSTRUCTIONS);
  const standIn = new StandInGateways(PORTS.standIn); // the row's own stand-in gateway nginx
  standIn.start();
  try {
    await (INSTRUCTIONS ? instructions(p) : throughput(p));
  } finally {
    if (!INSTRUCTIONS) stop(p.prefix);
    standIn.close();
    rmSync(p.prefix, { recursive: true, force: true });
  }
}

main().catch((e: Error) => {
  console.error(e.message);
  process.exit(1);
});
