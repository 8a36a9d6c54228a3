/**
 * Row 5 probe (docs/bench.md, "Row 5"): is a route table in nginx's own memory
 * (lua-nginx-module's lua_shared_dict, Debian 12's libnginx-mod-http-lua) cheap
 * enough per request for stage 1 to reach 95 % of the static proxy's
 * requests/s? One throwaway nginx (own prefix, own ports, loopback, 2 workers)
 * with four servers that reach the same stand-in gateway nginx:
 *   static  — the static proxy of bench/routing.ts (no map, no variable upstream)
 *   njs     — today's stage 1, rendered by runtime/nginx-config.ts (njs js_set + route file read)
 *   lua     — regex server_name + map $host → org id + `set_by_lua_block` shared-dict get
 *   luaArg  — the same with `set_by_lua $gw '<lua>' $demiurge_org_id` (argument instead of ngx.var)
 *   luaHost — no map: `set_by_lua` cuts the org id out of $host (the regex server_name has checked its form)
 *   mapFloor— regex server_name + map $host → org id + a static map org id → upstream: any map-based
 *             routing's floor (what is left when the table lookup itself costs nothing)
 * wrk one thread, kept-alive TLS: -c32 -d5s for requests/s, -c1 --latency for p99, and the
 * workers' CPU per request from /proc, interleaved A B C D × ROUNDS.
 *
 *   flock /tmp/bench.lock npx ts-node --transpile-only bench/lua-probe.ts [rounds] [seconds]
 */
import { execFileSync } from 'child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { NJS_MODULE_PATH, ORGS_CONF, ROUTES_JS, ROUTES_SUBDIR, proxyDirectives, renderOrgsConf, renderRoute, renderRoutesJs, routeFileName } from '../runtime/nginx-config';
import { runWrk, workersCpuUs, type WrkRun } from './routing';

const ROUNDS = Number(process.argv[2] ?? 3);
const SECONDS = Number(process.argv[3] ?? 5);
const CONNECTIONS = 32;
const PORTS = { njs: 59743, static: 59744, lua: 59745, luaArg: 59746, luaHost: 59747, mapFloor: 59748, status: 59799, standIn: 59780 };
const ORG = '0b9c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3';
const DOMAIN = 'lua-probe.test';
const UPSTREAM = `127.0.0.1:${PORTS.standIn}`;
type Kind = 'static' | 'njs' | 'lua' | 'luaArg' | 'luaHost' | 'mapFloor';
const KINDS: Kind[] = ['static', 'njs', 'lua', 'luaArg', 'luaHost', 'mapFloor'];

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function main(): Promise<void> {
  const prefix = mkdtempSync(path.join(os.tmpdir(), 'demiurge-lua-probe-'));
  chmodSync(prefix, 0o755);
  const gwPrefix = path.join(prefix, 'gw');
  const confDir = path.join(prefix, 'demiurge');
  for (const d of [gwPrefix, path.join(gwPrefix, 'logs'), path.join(prefix, 'logs'), confDir, path.join(confDir, ROUTES_SUBDIR)]) mkdirSync(d, { recursive: true });
  const cert = path.join(prefix, 'cert.pem');
  const key = path.join(prefix, 'key.pem');
  execFileSync('mkcert', ['-cert-file', cert, '-key-file', key, DOMAIN, `*.${DOMAIN}`], { env: { ...process.env, CAROOT: path.join(prefix, 'ca') }, stdio: 'ignore' });

  writeFileSync(
    path.join(gwPrefix, 'nginx.conf'),
    `worker_processes 1;
pid ${gwPrefix}/nginx.pid;
error_log ${gwPrefix}/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path ${gwPrefix}/tmp-body;
    proxy_temp_path ${gwPrefix}/tmp-proxy;
    server {
        listen ${UPSTREAM} backlog=4096;
        default_type application/json;
        location / { return 200 '{"gatewayAddress":"$server_addr","host":"$host"}'; }
    }
}
`,
  );

  const render = { confDir, domain: DOMAIN, listen: `127.0.0.1:${PORTS.njs} ssl`, certPath: cert, keyPath: key, statusListen: `127.0.0.1:${PORTS.status}` };
  writeFileSync(path.join(confDir, ORGS_CONF), renderOrgsConf(render));
  writeFileSync(path.join(confDir, ROUTES_JS), renderRoutesJs(render));
  const [host, port] = UPSTREAM.split(':');
  writeFileSync(path.join(confDir, ROUTES_SUBDIR, routeFileName(ORG)), renderRoute('probe', ORG, 'gw-0', host, Number(port)));

  const serverName = `"~^(?:[a-z0-9-]+\\.)*org-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\\.${DOMAIN.replace(/\./g, '\\.')}$"`;
  const luaServer = (p: number, set: string): string => `server {
    listen 127.0.0.1:${p} ssl;
    server_name ${serverName};
    ssl_certificate ${cert};
    ssl_certificate_key ${key};
    location / {
        ${set}
        if ($probe_gw = "") { return 404; }
        proxy_pass http://$probe_gw;
${proxyDirectives('$demiurge_connection_upgrade')}
    }
}
`;
  const conf = path.join(prefix, 'nginx.conf');
  writeFileSync(
    conf,
    `load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
load_module ${NJS_MODULE_PATH};
worker_processes 2;
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

    lua_shared_dict probe_routes 16m;
    init_by_lua_block {
        ngx.shared.probe_routes:set("${ORG}", "${UPSTREAM}")
    }

    map $http_upgrade $probe_static_connection_upgrade {
        default upgrade;
        "" close;
    }
    server {
        listen 127.0.0.1:${PORTS.static} ssl;
        ssl_certificate ${cert};
        ssl_certificate_key ${key};
        location / {
            proxy_pass http://${UPSTREAM};
${proxyDirectives('$probe_static_connection_upgrade')}
        }
    }
${luaServer(PORTS.lua, `set_by_lua_block $probe_gw { return ngx.shared.probe_routes:get(ngx.var.demiurge_org_id) or "" }`)}
${luaServer(PORTS.luaArg, `set_by_lua $probe_gw 'return ngx.shared.probe_routes:get(ngx.arg[1]) or ""' $demiurge_org_id;`)}
${luaServer(PORTS.luaHost, `set_by_lua $probe_gw 'local h = ngx.arg[1]; return ngx.shared.probe_routes:get(h:sub(${-(DOMAIN.length + 37)}, ${-(DOMAIN.length + 2)})) or ""' $host;`)}
    map $demiurge_org_id $probe_floor_gw {
        default "";
        ${ORG} ${UPSTREAM};
    }
${luaServer(PORTS.mapFloor, 'set $probe_gw $probe_floor_gw;')}
}
`,
  );

  const stage1 = { prefix };
  const stop = (p: string): void => {
    try {
      execFileSync('nginx', ['-p', p, '-c', path.join(p, 'nginx.conf'), '-s', 'quit'], { stdio: 'ignore' });
    } catch {
      /* not running */
    }
  };
  execFileSync('nginx', ['-p', gwPrefix, '-c', path.join(gwPrefix, 'nginx.conf')], { stdio: 'pipe' });
  try {
    execFileSync('nginx', ['-p', prefix, '-c', conf], { stdio: 'pipe' });
  } catch (e) {
    stop(gwPrefix);
    throw e;
  }
  const hostName = `org-${ORG}.${DOMAIN}`;
  const url = (k: Kind): string => `https://127.0.0.1:${PORTS[k]}/`;
  const thr = Object.fromEntries(KINDS.map((k) => [k, [] as WrkRun[]])) as Record<Kind, WrkRun[]>;
  const lat = Object.fromEntries(KINDS.map((k) => [k, [] as WrkRun[]])) as Record<Kind, WrkRun[]>;
  const cpu = Object.fromEntries(KINDS.map((k) => [k, [] as number[]])) as Record<Kind, number[]>;
  return (async () => {
    try {
      for (const k of KINDS) {
        const w = await runWrk(url(k), hostName, 1, CONNECTIONS);
        if (w.errors) throw new Error(`${k}: ${w.errors} errors in the warm-up`);
      }
      for (let r = 0; r < ROUNDS; r++) {
        for (const k of KINDS) {
          const c0 = workersCpuUs(stage1);
          const w = await runWrk(url(k), hostName, SECONDS, CONNECTIONS);
          cpu[k].push((workersCpuUs(stage1) - c0) / w.requests);
          thr[k].push(w);
        }
        for (const k of KINDS) lat[k].push(await runWrk(url(k), hostName, SECONDS, 1));
        console.log(
          `round ${r + 1}: ` +
            KINDS.map((k) => `${k} ${thr[k][r].requestsPerS.toFixed(0)}/s ${cpu[k][r].toFixed(1)}µs p50/p99 ${lat[k][r].p50Ms.toFixed(3)}/${lat[k][r].p99Ms.toFixed(3)} err ${thr[k][r].errors + lat[k][r].errors}`).join(' | '),
        );
      }
      console.log('\npaired (same round) vs static, median [min–max]:');
      for (const k of KINDS.filter((x) => x !== 'static')) {
        const ratio = thr[k].map((w, i) => w.requestsPerS / thr.static[i].requestsPerS);
        const dCpu = cpu[k].map((c, i) => c - cpu.static[i]);
        const dP50 = lat[k].map((w, i) => w.p50Ms - lat.static[i].p50Ms);
        const dP99 = lat[k].map((w, i) => w.p99Ms - lat.static[i].p99Ms);
        const f = (xs: number[], d: number): string => `${median(xs).toFixed(d)} [${Math.min(...xs).toFixed(d)}–${Math.max(...xs).toFixed(d)}]`;
        console.log(`  ${k}: requests/s ratio ${f(ratio, 3)}; CPU/request +${f(dCpu, 1)} µs; p50 +${f(dP50, 3)} ms; p99 +${f(dP99, 3)} ms`);
      }
      console.log(`  static: ${median(thr.static.map((w) => w.requestsPerS)).toFixed(0)}/s, ${median(cpu.static).toFixed(1)} µs/request`);
    } finally {
      stop(prefix);
      stop(gwPrefix);
      rmSync(prefix, { recursive: true, force: true });
    }
  })();
}

main().catch((e: Error) => {
  console.error(e.message);
  process.exit(1);
});
