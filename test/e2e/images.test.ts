/**
 * Images and the daily build loop, on a real Docker engine:
 *   build the four images (cached by tag + context hash), run a build server and two gateways on
 *   a test environment network, pack / reload / crash them, attack the build server, reject a
 *   React bundle, smoke-test the dev and PowerDNS images, and clean up exactly what was created.
 *
 * Run: npx mocha --config .mocharc.e2e.json test/e2e/images.test.ts
 * Needs root on Debian 12 (scripts/docker-setup.sh installs/starts Docker and fabricates the base
 * images). With CI set, a missing engine is a failure; otherwise the suite skips loudly.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as dgram from 'dgram';
import * as os from 'os';
import * as path from 'path';
import {
  PORTS,
  buildServerContainerName,
  buildServerUrl,
  buildTarballName,
  containerLabels,
  devContainerName,
  gatewayHttpPort,
  gatewayName,
  gatewayVpnPort,
  ganymedeFqdn,
  imageName,
  networkName,
  powerDnsContainerName,
  volumeName,
} from '../../runtime/naming';
import {
  ORGS_CONF,
  ROUTES_JS,
  ROUTES_SUBDIR,
  configVersion,
  renderOrgsConf,
  renderRoute,
  renderRoutesJs,
  routeFileName,
} from '../../runtime/nginx-config';
import { reloadContainer } from '../../tools/lib/reload';
import type { GatewayReloadResult, ReloadSummary } from '../../tools/lib/reload';
import { DockerApi } from '../../tools/lib/docker-api';
import type { PackResult } from '../../tools/lib/pack';
import {
  REPO_ROOT,
  RunResult,
  buildImageCached,
  containerHealth,
  docker,
  dockerOk,
  engineInventory,
  removeByName,
  run,
  waitFor,
} from './helpers/docker';
import { checkoutId } from './helpers/checkout';
import { healthz, httpRequest, portFree, tcpOpen, upgradeEcho } from './helpers/http';
import { PROBE_SCRIPT, ProbeRequest, ProbeResponse } from './helpers/probe';
import { note, step } from './helpers/steps';
import { LoadResult, startLoad, webSocketsOpen } from '../../bench/realised/load';

// Per checkout (see helpers/checkout.ts): parallel checkouts on one machine never share a name.
const ENV = `img-${checkoutId()}`;
const DOMAIN = `${ENV}.test`;
const POOL = 2;
/** Host port slots: HTTP 17100 + 10·slot + i, VPN 49900 + 10·slot + i/udp; the checkout's own slot first. */
const PORT_SLOTS = 10;

const NET = networkName(ENV);
const VOL_BUILDS = volumeName(ENV, 'builds');
const VOL_PGDATA = volumeName(ENV, 'pgdata');
const BUILD_SERVER = buildServerContainerName(ENV);
const GATEWAYS = Array.from({ length: POOL }, (_, i) => gatewayName(ENV, i));
/** Set by choosePorts() in before(). */
let HTTP_PORTS: number[] = [];
let VPN_PORTS: number[] = [];
const DEV = devContainerName(ENV);
const PDNS = powerDnsContainerName(ENV);
const PROBE = `${BUILD_SERVER}-probe`;
const FIXTURE = `${BUILD_SERVER}-fixture`;
const TARBALL = buildTarballName(ENV);

type ImageKind = 'gateway' | 'build-server' | 'dev' | 'pdns';
const IMAGES: Record<ImageKind, { tag: string; context: string; bases: string[] }> = {
  gateway: { tag: imageName(ENV, 'gateway'), context: 'images/gateway', bases: ['node:20-bookworm-slim'] },
  'build-server': { tag: imageName(ENV, 'build-server'), context: 'images/build-server', bases: ['node:20-bookworm-slim'] },
  dev: { tag: imageName(ENV, 'dev'), context: 'images/dev', bases: ['node:20-bookworm-slim', 'docker:cli'] },
  pdns: { tag: imageName(ENV, 'pdns'), context: 'images/powerdns', bases: ['debian:bookworm-slim'] },
};
const BASE_TAGS = ['debian:bookworm-slim', 'node:20-bookworm-slim', 'docker:cli'];

/** Everything this suite may create, by name: the only things it ever removes. */
const OWNED = {
  containers: [PROBE, FIXTURE, PDNS, DEV, ...GATEWAYS, BUILD_SERVER],
  networks: [NET],
  volumes: [VOL_BUILDS, VOL_PGDATA],
};

// Secrets for the smoke test only (random per run, never printed).
const rnd = (): string => Math.random().toString(36).slice(2, 14);
const SECRETS = { postgres: rnd(), pdnsDb: rnd(), ganymedeDb: rnd(), pdnsApiKey: rnd() };

function udpFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = dgram.createSocket('udp4');
    sock.once('error', () => { sock.close(); resolve(false); });
    sock.bind(port, '0.0.0.0', () => sock.close(() => resolve(true)));
  });
}

/** The checkout's port slot, or the next one whose HTTP (tcp) and VPN (udp) ports are all free. */
async function choosePorts(): Promise<number> {
  const first = parseInt(checkoutId(), 16) % PORT_SLOTS;
  for (let k = 0; k < PORT_SLOTS; k++) {
    const slot = (first + k) % PORT_SLOTS;
    const http = GATEWAYS.map((_, i) => gatewayHttpPort(17100 + 10 * slot, i));
    const vpn = GATEWAYS.map((_, i) => gatewayVpnPort(49900 + 10 * slot, i));
    const free = await Promise.all([...http.map((p) => portFree(p)), ...vpn.map((p) => udpFree(p))]);
    if (free.every(Boolean)) {
      HTTP_PORTS = http;
      VPN_PORTS = vpn;
      return slot;
    }
  }
  throw new Error(`no free port slot: every slot of HTTP 17100-${17100 + 10 * PORT_SLOTS - 1} / VPN 49900-${49900 + 10 * PORT_SLOTS - 1}/udp has a port in use`);
}

function cli(args: string[]): Promise<RunResult> {
  return run(process.execPath, ['-r', 'ts-node/register/transpile-only', path.join(REPO_ROOT, 'tools', 'gateway-cli.ts'), ...args], {
    cwd: REPO_ROOT,
  });
}

function lastJson<T>(stdout: string): T {
  const line = stdout.trim().split('\n').filter(Boolean).pop();
  assert.ok(line, `no JSON output in ${JSON.stringify(stdout)}`);
  return JSON.parse(line) as T;
}

async function packBuild(workspace: string): Promise<PackResult> {
  const r = await cli(['pack', '--env', ENV, '--workspace', workspace, '--volume', VOL_BUILDS, '--json']);
  assert.equal(r.code, 0, `pack failed (${r.code}): ${r.stderr}${r.stdout}`);
  return lastJson<PackResult>(r.stdout);
}

/** Both gateways answer /healthz through their published port with `buildId`. */
async function waitForBuildEverywhere(buildId: string, timeoutMs: number): Promise<number> {
  const t0 = Date.now();
  await Promise.all(
    HTTP_PORTS.map((port, i) =>
      waitFor(`${GATEWAYS[i]} on :${port} to run build ${buildId}`, timeoutMs, async () => {
        const h = await healthz(port).catch(() => undefined);
        return h && h.buildId === buildId ? h : undefined;
      }, 50),
    ),
  );
  return Date.now() - t0;
}

async function appProcesses(container: string): Promise<string[]> {
  const ps = await docker(['exec', container, 'ps', '-eo', 'pid,args']);
  return ps.split('\n').filter((l) => /\bnode\b.*app-gateway\/main\.js/.test(l));
}

/** The container's log (stdout: the entrypoint, supervisor and gateway-reload lines). */
async function containerLog(container: string): Promise<string> {
  return (await run('docker', ['logs', container])).stdout;
}

/**
 * Runs a bash script in the container, bounded by `timeout`: the script waits for something inside
 * the container (no docker round trip per probe); on time-out the error names what did not happen.
 */
async function inContainer(container: string, what: string, script: string, timeoutS = 20): Promise<string> {
  const r = await run('docker', ['exec', container, 'timeout', String(timeoutS), 'bash', '-euc', script], { timeoutMs: (timeoutS + 15) * 1000 });
  if (r.code === 124) throw new Error(`${container}: timed out after ${timeoutS} s waiting for ${what}`);
  if (r.code !== 0) throw new Error(`${container}: ${what} failed (exit ${r.code}): ${r.stderr.trim() || r.stdout.trim()}`);
  return r.stdout.trim();
}

// gateway-reload's test hook (common.sh: RELOAD_PAUSE_AT, RELOAD_PAUSED, RELOAD_RELEASE).
const RUN_DIR = '/run/gateway';
const PAUSE_AT = `${RUN_DIR}/reload-pause-at`;
const PAUSED = `${RUN_DIR}/reload-paused`;
const RELEASE = `${RUN_DIR}/reload-release`;
/**
 * In-container shell: the crash endpoint of the current app (on the port stage-2 nginx routes to) or of
 * a reload's candidate (beside it), and "wait until the slot's pid file no longer names $1".
 */
const shCrash = (slot: 'app' | 'candidate' = 'app'): string => `curl -s -o /dev/null -X POST http://127.0.0.1:$(cat ${RUN_DIR}/${slot}.port)/crash || true`;
const SH_CRASH = shCrash('app');
const shReaped = (pid: number | string, slot: 'app' | 'candidate' = 'app'): string => `while [ "$(cat ${RUN_DIR}/${slot}.pid 2>/dev/null || true)" = "${pid}" ]; do sleep 0.02; done`;
/** Create the release file, then wait until the paused reload consumed it (it removes RELOAD_PAUSED first). */
const SH_RELEASE = `touch ${RELEASE}; while [ -e ${RELEASE} ]; do sleep 0.02; done`;

/** Makes gateway-reload in `container` wait at these points (until released). */
async function armReloadPause(container: string, points: string[]): Promise<void> {
  await inContainer(container, 'arming the reload pause', `rm -f ${PAUSED} ${RELEASE}; printf '%s\\n' ${points.join(' ')} > ${PAUSE_AT}`);
}

/** Removes the hook and releases a reload that may still wait (a failed test must not leave one hanging). */
async function disarmReloadPause(container: string): Promise<void> {
  await run('docker', ['exec', container, 'bash', '-c', `rm -f ${PAUSE_AT}; if [ -e ${PAUSED} ]; then touch ${RELEASE}; fi`]);
}

/** Waits until gateway-reload in `container` is paused at `point`; returns the detail it wrote (e.g. the new app's pid). */
async function pausedAt(container: string, point: string): Promise<string> {
  const line = await inContainer(container, `gateway-reload to pause at "${point}"`,
    `until [ -s ${PAUSED} ] && read -r p d < ${PAUSED} && [ "$p" = "${point}" ]; do sleep 0.02; done; cat ${PAUSED}`, 30);
  return line.split(' ').slice(1).join(' ').trim();
}

/**
 * Counts the app processes in the container every 20 ms (in the container, so no sample is a
 * docker round trip apart) until stopped; stop() returns the samples.
 */
async function startAppSampler(container: string): Promise<{ stop: () => Promise<number[]> }> {
  const file = '/tmp/e2e-app-samples';
  const stopFile = `${RUN_DIR}/e2e-sampler-stop`;
  await docker(['exec', container, 'rm', '-f', file, stopFile]);
  await docker(['exec', '-d', container, 'bash', '-c',
    `while [ ! -e ${stopFile} ]; do ps -eo args= | grep -c '^node .*app-gateway/main\\.js' >> ${file} || true; sleep 0.02; done; echo end >> ${file}`]);
  await inContainer(container, 'the app sampler to take its first sample', `until [ -s ${file} ]; do sleep 0.02; done`, 10);
  return {
    stop: async () => {
      const out = await inContainer(container, 'the app sampler to stop', `touch ${stopFile}; until tail -n 1 ${file} | grep -qx end; do sleep 0.02; done; cat ${file}`, 10);
      await docker(['exec', container, 'rm', '-f', file, stopFile]);
      return out.split('\n').filter((l) => /^\d+$/.test(l)).map(Number);
    },
  };
}

/**
 * The engine's containers, networks and volumes, leaving out those labelled for another environment:
 * a parallel suite (another checkout) creates and removes its own while this one runs.
 */
async function inventoryExceptOtherEnvs(): Promise<{ containers: string[]; networks: string[]; volumes: string[] }> {
  const list = async (args: string[], nameField = '.Name'): Promise<string[]> =>
    (await docker([...args, '--format', `{{${nameField}}}\t{{.Label "environment"}}`])).split('\n').filter(Boolean)
      .map((l) => l.split('\t'))
      .filter(([, env]) => !env || env === ENV)
      .map(([name]) => name.trim())
      .sort();
  return {
    containers: await list(['ps', '-a'], '.Names'),
    networks: await list(['network', 'ls']),
    volumes: await list(['volume', 'ls']),
  };
}

function gatewayResult(summary: ReloadSummary, container: string): GatewayReloadResult {
  const g = summary.results.find((x) => x.container === container);
  assert.ok(g, `no reload result for ${container}: ${JSON.stringify(summary)}`);
  return g;
}

function makeWorkspace(root: string, name: string, mainJs: string): string {
  const ws = path.join(root, name);
  const dist = path.join(ws, 'dist', 'packages', 'app-gateway');
  fs.mkdirSync(dist, { recursive: true });
  fs.writeFileSync(path.join(dist, 'main.js'), mainJs);
  fs.writeFileSync(path.join(dist, 'main.js.map'), JSON.stringify({ version: 3, sources: ['main.ts'], mappings: '' }));
  return ws;
}

async function gitInit(ws: string): Promise<string | undefined> {
  const g = (args: string[]): Promise<RunResult> => run('git', ['-C', ws, '-c', 'user.name=e2e', '-c', 'user.email=e2e@example.invalid', ...args]);
  if ((await g(['init', '-q'])).code !== 0) return undefined;
  await g(['add', '-A']);
  if ((await g(['commit', '-q', '-m', 'stand-in build'])).code !== 0) return undefined;
  return (await g(['rev-parse', 'HEAD'])).stdout.trim();
}

describe('images and the daily build loop (real Docker engine)', function () {
  this.timeout(900_000);

  let tmp = '';
  let wsGood = '';
  let gitCommit: string | undefined;
  let initial: Awaited<ReturnType<typeof inventoryExceptOtherEnvs>> | undefined;
  /** The network, builds volume, build server and gateways exist (created by ensureEnvironment). */
  let envUp = false;
  /** The build last packed into the builds volume since the gateways started (none: undefined). */
  let current: PackResult | undefined;
  /** Something suite-owned may exist on the engine (after() removes it). */
  let dirty = false;
  const timings: Record<string, string> = {};

  const labels = (role: 'build-server' | 'gateway' | 'dev' | 'pdns'): string[] =>
    Object.entries(containerLabels(ENV, role)).flatMap(([k, v]) => ['--label', `${k}=${v}`]);

  /** Network, builds volume, build server and two gateways, unless they are up already. */
  async function ensureEnvironment(): Promise<void> {
    if (envUp) return;
    await step('network, builds volume, build server, two gateways', async () => {
      dirty = true;
      await docker(['network', 'create', '--label', `environment=${ENV}`, NET]);
      await docker(['volume', 'create', '--label', `environment=${ENV}`, VOL_BUILDS]);
      await docker(['run', '-d', '--name', BUILD_SERVER, '--network', NET, ...labels('build-server'),
        '-v', `${VOL_BUILDS}:/srv/builds:ro`, '--health-interval', '1s', IMAGES['build-server'].tag]);
      const tun = fs.existsSync('/dev/net/tun');
      for (let i = 0; i < POOL; i++) {
        // gateway 0 gets a tun device (OpenVPN starts), gateway 1 does not (VPN skipped, HTTP unaffected)
        const vpnArgs = i === 0 && tun ? ['--cap-add', 'NET_ADMIN', '--device', '/dev/net/tun'] : [];
        await docker(['run', '-d', '--name', GATEWAYS[i], '--hostname', GATEWAYS[i], '--network', NET, ...labels('gateway'),
          '-e', `ENV_NAME=${ENV}`, '-e', `GATEWAY_HTTP_PORT=${HTTP_PORTS[i]}`, '-e', `GATEWAY_VPN_PORT=${VPN_PORTS[i]}`,
          '-e', `GATEWAY_ID=00000000-0000-4000-8000-00000000000${i}`, '-e', 'GATEWAY_TOKEN=e2e-token',
          '-e', `GANYMEDE_FQDN=${ganymedeFqdn(DOMAIN)}`, '-e', `DOMAIN=${DOMAIN}`, '-e', `BUILD_SERVER_URL=${buildServerUrl(ENV)}`,
          '-p', `${HTTP_PORTS[i]}:${HTTP_PORTS[i]}`, '-p', `${VPN_PORTS[i]}:${VPN_PORTS[i]}/udp`,
          '--health-interval', '1s', ...vpnArgs, IMAGES.gateway.tag]);
      }
    });
    envUp = true;
    current = undefined;
  }

  /** Removes every suite-owned container, network and volume. */
  async function teardown(): Promise<void> {
    await removeByName(OWNED);
    envUp = false;
    current = undefined;
    dirty = false;
  }

  /** Gateways that started before any build existed (test 1's precondition): reused if untouched, else recreated. */
  async function ensureGatewaysWithoutBuild(): Promise<void> {
    if (envUp && current === undefined) return;
    if (envUp) await step('recreate the environment without a build', teardown);
    await ensureEnvironment();
  }

  /** Both gateways serve the build last packed (packing one if there is none); returns it. */
  async function ensureServing(): Promise<PackResult> {
    await ensureEnvironment();
    if (!current) {
      const packed = await step('pack a build into the builds volume', () => packBuild(wsGood));
      current = packed;
      await step(`both gateways serve build ${packed.buildId}`, () => waitForBuildEverywhere(packed.buildId, 30_000));
      return packed;
    }
    const build = current;
    // A gateway may still be in a crash back-off, or an earlier reload failed midway: reload once.
    const served = await waitForBuildEverywhere(build.buildId, 10_000).then(() => true, () => false);
    if (!served) {
      const r = await step('reload to the current build', () => cli(['reload', '--env', ENV, '--json']));
      assert.equal(r.code, 0, r.stderr + r.stdout);
      await waitForBuildEverywhere(build.buildId, 15_000);
    }
    return build;
  }

  before(async function () {
    this.timeout(900_000);
    await step('engine and base images', async () => {
      const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
      const setup = path.join(REPO_ROOT, 'scripts', 'docker-setup.sh');
      let missing: string[] = [];
      const check = async (): Promise<void> => {
        missing = [];
        if (!(await dockerOk(['info']))) missing.push('a running Docker engine (docker info fails)');
        else for (const t of BASE_TAGS) if (!(await dockerOk(['image', 'inspect', t]))) missing.push(`base image ${t}`);
      };
      await check();
      if (missing.length > 0 && isRoot) {
        note(`missing: ${missing.join(', ')}: running scripts/docker-setup.sh`);
        const r = await run('bash', [setup], { timeoutMs: 900_000 });
        process.stdout.write(`${r.stdout.trimEnd().replace(/^/gm, '        ')}\n`);
        if (r.code !== 0) note(`docker-setup.sh failed (${r.code}): ${r.stderr.trim()}`);
        await check();
      }
      if (missing.length > 0) {
        const msg = `\n${'!'.repeat(78)}\n!! IMAGE E2E SUITE CANNOT RUN: missing ${missing.join(', ')}.\n!! Run as root on Debian 12: bash scripts/docker-setup.sh\n${'!'.repeat(78)}\n`;
        if (process.env.CI) throw new Error(`CI is set and the Docker engine is not usable: ${missing.join(', ')}`);
        process.stdout.write(msg);
        this.skip();
      }
    });

    initial = await inventoryExceptOtherEnvs();
    // Leftovers of an interrupted earlier run (same names) would make `docker run` fail.
    const leftovers = OWNED.containers.filter((c) => initial!.containers.includes(c))
      .concat(OWNED.networks.filter((n) => initial!.networks.includes(n)))
      .concat(OWNED.volumes.filter((v) => initial!.volumes.includes(v)));
    if (leftovers.length > 0) {
      note(`removing leftovers of an earlier run (suite-owned names only): ${leftovers.join(', ')}`);
      await removeByName(OWNED);
      initial = await inventoryExceptOtherEnvs();
    }
    const slot = await choosePorts();
    note(`environment ${ENV}, port slot ${slot}: gateways HTTP ${HTTP_PORTS.join(', ')}, VPN ${VPN_PORTS.join(', ')}/udp`);

    await step('build the four images (cached by tag + context hash)', async () => {
      const kinds = Object.keys(IMAGES) as ImageKind[];
      const outcomes = await Promise.all(
        kinds.map((k) =>
          buildImageCached(IMAGES[k].tag, path.join(REPO_ROOT, IMAGES[k].context), IMAGES[k].bases, path.join(os.tmpdir(), `demiurge-e2e-build-${ENV}-${k}.log`)),
        ),
      );
      for (const o of outcomes) note(`  ${o.tag}: ${o.cached ? 'cached' : 'built'} in ${o.ms} ms`);
      timings['image build'] = outcomes.map((o) => `${o.tag.replace(`demiurge-${ENV}-`, '')} ${o.cached ? 'cached' : 'built'} ${o.ms} ms`).join(', ');
    });

    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'demiurge-e2e-'));
    wsGood = makeWorkspace(tmp, 'ws-good', fs.readFileSync(path.join(REPO_ROOT, 'test', 'fixtures', 'stand-in-gateway', 'main.js'), 'utf8'));
    gitCommit = await gitInit(wsGood);
  });

  after(async function () {
    this.timeout(120_000);
    if (dirty && initial) {
      note('after(): removing suite-owned containers, network and volumes');
      await teardown();
    }
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
    if (Object.keys(timings).length > 0) {
      process.stdout.write('\n      measured:\n');
      for (const [k, v] of Object.entries(timings)) process.stdout.write(`        ${k}: ${v}\n`);
    }
  });

  it('1. gateways wait for the build server, fetch a packed build and serve it through stage-2 nginx', async () => {
    await ensureGatewaysWithoutBuild();
    // The gateways started before any build existed: they must be retrying, with a log line per attempt.
    await waitFor('a retry log line', 15_000, async () => {
      const logs = await docker(['logs', GATEWAYS[0]]);
      return /waiting for build server: attempt \d+: .*404/.test(logs) ? true : undefined;
    });
    const gw0Healthy = await containerHealth(GATEWAYS[0]);
    note(`  gateway health before any build: ${gw0Healthy} (nginx answers its own health location)`);

    const buildA = await step('pack build A into the builds volume', () => packBuild(wsGood));
    current = buildA;
    note(`  build A = ${buildA.buildId} (${buildA.bytes} bytes via ${buildA.via})`);
    assert.ok(buildA.files['app-gateway/main.js'] > 0 && buildA.files['app-gateway/main.js.map'] > 0 && buildA.files['app/main.sh'] > 0);
    if (gitCommit) assert.equal(buildA.gitCommit, gitCommit);

    const ms = await step('both gateways serve build A', () => waitForBuildEverywhere(buildA.buildId, 30_000));
    timings['first fetch after pack'] = `${ms} ms`;
    const h = await healthz(HTTP_PORTS[0]);
    assert.ok(h);
    const info = (h as unknown as { buildInfo: Record<string, unknown> }).buildInfo;
    assert.equal(info.environment, ENV);
    if (gitCommit) assert.equal(info.git_commit, gitCommit);

    // nginx's own health location, proxy headers and the WebSocket upgrade path.
    const own = await httpRequest(`http://127.0.0.1:${HTTP_PORTS[1]}/_gateway/nginx-health`);
    assert.equal(own.status, 200);
    const echo = await httpRequest(`http://127.0.0.1:${HTTP_PORTS[0]}/echo-headers`, { headers: { 'X-Forwarded-Proto': 'https' } });
    const headers = (JSON.parse(echo.body) as { headers: Record<string, string> }).headers;
    assert.equal(headers['x-forwarded-proto'], 'https');
    assert.ok(headers['x-forwarded-for']);
    const ws = await upgradeEcho(HTTP_PORTS[1], 'ping-through-stage-2');
    assert.match(ws.statusLine, /^HTTP\/1\.1 101/);
    assert.equal(ws.echoed, 'ping-through-stage-2');

    for (const g of GATEWAYS) assert.match(await containerHealth(g), /^healthy running$/);

    // OpenVPN: started where a tun device exists, skipped (without blocking HTTP) where it does not.
    const setupLog = async (g: string): Promise<string> => (await run('docker', ['exec', g, 'cat', '/tmp/gateway-setup.log'])).stdout;
    const vpn0 = await waitFor('gateway 0 VPN set-up to finish', 20_000, async () => {
      const l = await setupLog(GATEWAYS[0]);
      return /OpenVPN listening|VPN skipped/.test(l) ? l.trim() : undefined;
    });
    const vpn1 = await waitFor('gateway 1 VPN set-up to finish', 20_000, async () => {
      const l = await setupLog(GATEWAYS[1]);
      return /VPN skipped/.test(l) ? l.trim() : undefined;
    });
    note(`  ${GATEWAYS[0]}: ${vpn0.value.split('\n').pop()}`);
    note(`  ${GATEWAYS[1]}: ${vpn1.value.split('\n').pop()}`);
    if (fs.existsSync('/dev/net/tun')) assert.match(vpn0.value, /OpenVPN listening on udp/);

    // User-container routes in stage-2 nginx: add -> served by the uc server block, remove -> app again.
    const uc = '11111111-2222-4333-8444-555555555555';
    const ucHost = `uc-${uc}.org-99999999-2222-4333-8444-555555555555.${DOMAIN}`;
    const viaHost = (): Promise<number> => httpRequest(`http://127.0.0.1:${HTTP_PORTS[0]}/`, { headers: { Host: ucHost } }).then((r) => r.status);
    assert.equal(await viaHost(), 200);
    await docker(['exec', GATEWAYS[0], '/opt/gateway/app/main.sh', '-r', 'bin/update-nginx-locations.sh', 'add', uc, '127.0.0.1:9']);
    assert.equal(await viaHost(), 502, 'the uc route (to a closed port) should answer 502');
    const bad = await run('docker', ['exec', GATEWAYS[0], 'gateway-uc-route', 'add', 'not-a-uuid', '127.0.0.1:9']);
    assert.equal(bad.code, 2);
    await docker(['exec', GATEWAYS[0], 'gateway-uc-route', 'remove', uc]);
    assert.equal(await viaHost(), 200);
  });

  it('2. pack a second build and reload: both gateways serve it within 15 s', async () => {
    const previous = await ensureServing();
    const buildB = await step('pack build B (through a helper container this time)', async () => {
      const r = await cli(['pack', '--env', ENV, '--workspace', wsGood, '--volume', VOL_BUILDS, '--volume-mode', 'helper', '--json']);
      assert.equal(r.code, 0, r.stderr + r.stdout);
      return lastJson<PackResult>(r.stdout);
    });
    current = buildB;
    assert.equal(buildB.via, 'helper-container');
    assert.notEqual(buildB.buildId, previous.buildId);

    const t0 = Date.now();
    const r = await step(`demiurge-gateway reload --env ${ENV}`, () => cli(['reload', '--env', ENV, '--json']));
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const summary = lastJson<ReloadSummary>(r.stdout);
    assert.equal(summary.results.length, POOL);
    for (const g of summary.results) {
      assert.ok(g.ok, `${g.container}: ${g.code}: ${g.message}`);
      assert.equal(g.code, undefined);
      assert.equal(g.buildId, buildB.buildId, `${g.container} reports ${g.buildId}`);
      note(`  ${g.container}: build ${g.buildId} pid ${g.pid} reloaded in ${g.ms} ms`);
    }
    await waitForBuildEverywhere(buildB.buildId, 15_000);
    const total = Date.now() - t0;
    note(`  reload: CLI ${r.ms} ms (engine side ${summary.ms} ms); both gateways serve build B ${total} ms after the command started`);
    timings['reload (CLI incl. ts-node start / per gateway)'] = `${r.ms} ms / ${summary.results.map((g) => `${g.ms} ms`).join(', ')}`;
    assert.ok(total < 15_000, `took ${total} ms`);
    // The image's label made the CLI signal (no exec): the entrypoint framed the reload in the
    // container's log, and the script's lines are there once (not also copied by glog).
    for (const gw of GATEWAYS) {
      const log = (await containerLog(gw)).split('\n');
      const begin = log.map((l, i) => (/^RELOAD_BEGIN \d+$/.test(l) ? i : -1)).filter((i) => i >= 0).pop();
      assert.ok(begin !== undefined, `${gw}: no RELOAD_BEGIN in its log (reloaded by exec?)`);
      const frame = log.slice(begin);
      const end = frame.findIndex((l) => /^RELOAD_END \d+ 0$/.test(l));
      assert.ok(end > 0 && frame.slice(0, end).some((l) => l.startsWith('RELOAD_RESULT {"ok":true')), `${gw}: the last frame is not a reload ending 0:\n${frame.join('\n')}`);
      const reloaded = frame.filter((l) => l.includes('[gateway:reload] reloaded: build='));
      assert.equal(reloaded.length, 1, `${gw}: the reload's last log line appears ${reloaded.length} times in its frame`);
    }
  });

  it('2b. two reloads at once both end with the newest build; an image without the signal label is reloaded by exec', async () => {
    const build = await ensureServing();
    // Two CLIs at once: one signal may arrive during the other's reload (it then runs once more after
    // it) or both coalesce into one; either way each CLI reports a reload that began after it started.
    const [a, b] = await step('two `demiurge-gateway reload` at once', () => Promise.all([
      cli(['reload', '--env', ENV, '--json']), cli(['reload', '--env', ENV, '--json']),
    ]));
    for (const r of [a, b]) {
      assert.equal(r.code, 0, r.stderr + r.stdout);
      for (const g of lastJson<ReloadSummary>(r.stdout).results) {
        assert.ok(g.ok, `${g.container}: ${g.code}: ${g.message}`);
        assert.equal(g.buildId, build.buildId, `${g.container} reports ${g.buildId}`);
      }
    }
    // The exec path (images older than the label): the same script, the same result.
    const docker = new DockerApi();
    try {
      const g = await step(`reload ${GATEWAYS[0]} by exec`, () => reloadContainer(docker, { id: GATEWAYS[0], name: GATEWAYS[0] }, 60_000));
      assert.ok(g.ok, `${g.code}: ${g.message}`);
      assert.equal(g.buildId, build.buildId);
      assert.ok(!g.stdout.includes('RELOAD_BEGIN'), 'an exec reload is not framed by the entrypoint');
    } finally {
      docker.close();
    }
    await waitForBuildEverywhere(build.buildId, 15_000);
  });

  it('3. a crashed app is back within 5 s; a reload in the same window never leaves two apps', async () => {
    const build = await ensureServing();
    const port = HTTP_PORTS[0];
    const gw = GATEWAYS[0];

    // Crash -> supervised restart after 3 s.
    const before = await healthz(port);
    assert.ok(before);
    const t0 = Date.now();
    await httpRequest(`http://127.0.0.1:${port}/crash`, { method: 'POST' });
    const back = await waitFor('the app to come back', 10_000, async () => {
      const h = await healthz(port).catch(() => undefined);
      return h && h.pid !== before.pid ? h : undefined;
    }, 50);
    const recovery = Date.now() - t0;
    note(`  crash recovery: ${recovery} ms (pid ${before.pid} -> ${back.value.pid})`);
    timings['crash recovery'] = `${recovery} ms`;
    assert.ok(recovery < 5_000, `took ${recovery} ms`);
    assert.equal(back.value.buildId, build.buildId);

    // A crash at a known point of a reload (gateway-reload's pause points), with the app processes
    // counted in the container every 20 ms. Each case returns the reload's result for gateway 0.
    const crashDuringReload = async (label: string, points: string[], crash: () => Promise<void>): Promise<{ r: RunResult; g: GatewayReloadResult; log: string; samples: number[] }> => {
      const logMark = (await containerLog(gw)).length;
      await armReloadPause(gw, points);
      const sampler = await startAppSampler(gw);
      let reload: Promise<RunResult> | undefined;
      let samples: number[] | undefined;
      try {
        reload = cli(['reload', '--env', ENV, '--json']);
        await crash();
        const r = await reload;
        samples = await sampler.stop();
        const summary = lastJson<ReloadSummary>(r.stdout);
        const other = gatewayResult(summary, GATEWAYS[1]);
        assert.ok(other.ok, `${GATEWAYS[1]} (no crash) must reload: ${other.code}: ${other.message}`);
        const g = gatewayResult(summary, gw);
        note(`  ${label}: reload exit ${r.code}, ${gw} ${g.ok ? 'ok' : g.code} in ${g.ms} ms; app processes sampled ${samples.length}x, max ${Math.max(...samples)}`);
        assert.ok(samples.length > 0, 'the sampler took no sample');
        // The new build starts beside the old one (two apps at most), and one runs once the reload ended.
        assert.ok(Math.max(...samples) <= 2, `more than two apps seen: samples ${samples.join(',')}`);
        assert.equal(samples[samples.length - 1], 1, `after the reload: samples ${samples.slice(-10).join(',')}`);
        return { r, g, log: (await containerLog(gw)).slice(logMark), samples };
      } finally {
        // After a failure: release a reload that still waits, let the CLI finish, stop the sampler.
        await disarmReloadPause(gw);
        if (reload) await reload;
        if (!samples) await sampler.stop().catch(() => undefined);
      }
    };
    const oneAppServing = async (what: string, accept: (pid: number) => boolean): Promise<number> => {
      const h = await waitFor(what, 10_000, async () => {
        const x = await healthz(port).catch(() => undefined);
        return x && accept(x.pid) ? x : undefined;
      }, 50);
      assert.equal(h.value.buildId, build.buildId);
      const apps = await appProcesses(gw);
      assert.equal(apps.length, 1, apps.join('\n'));
      return h.value.pid;
    };

    // (a) The old app crashes after the fetch, before the new one starts: the reload goes on (the
    //     new build starts beside, stage-2 nginx switches to it); the supervisor's restart of the
    //     crashed app, if its back-off ends first, is stopped by the reload: one app at the end.
    {
      const old = await healthz(port);
      assert.ok(old);
      const { r, g, log } = await crashDuringReload('old app crashes after the fetch', ['fetched'], async () => {
        await pausedAt(gw, 'fetched');
        await inContainer(gw, `the old app (pid ${old.pid}) to crash and be reaped by the supervisor, then the reload to continue`,
          `${SH_CRASH}; ${shReaped(old.pid)}; ${SH_RELEASE}`);
      });
      assert.equal(r.code, 0, r.stderr + r.stdout);
      assert.ok(g.ok && g.code === undefined, `${g.code}: ${g.message}`);
      assert.equal(g.buildId, build.buildId);
      assert.ok(g.pid && g.pid !== old.pid, `new pid ${g.pid}`);
      assert.match(log, /app exited unexpectedly rc=1/);
      assert.match(log, /stage-2 nginx routes to :\d+/);
      const pid = await oneAppServing(`the reloaded app (pid ${g.pid}) to serve`, (p) => p === g.pid);
      note(`  old app crashes after the fetch: pid ${old.pid} -> ${pid} in ${g.ms} ms`);
    }

    // (b) The new app crashes after the supervisor started it, before the reload switched to it: the
    //     old app serves all along, the reload asks for the new app again and succeeds.
    {
      const old = await healthz(port);
      assert.ok(old);
      let crashed = 0;
      const { r, g, log } = await crashDuringReload('new app crashes before it listens', ['new-app-started'], async () => {
        crashed = Number(await pausedAt(gw, 'new-app-started'));
        assert.ok(crashed > 0 && crashed !== old.pid, `paused with pid ${crashed}`);
        // Crash exactly that app once it listens, wait until the supervisor reaped it, and let the
        // reload go on without pausing again.
        await inContainer(gw, `the new app (pid ${crashed}) to listen, crash and be reaped, then the reload to continue`,
          `until curl -sf http://127.0.0.1:$(cat ${RUN_DIR}/candidate.port)/healthz | grep -q '"pid":${crashed},'; do sleep 0.02; done; ${shCrash('candidate')}; ${shReaped(crashed, 'candidate')}; rm -f ${PAUSE_AT}; ${SH_RELEASE}`);
        const during = await healthz(port);
        assert.equal(during?.pid, old.pid, 'the old app serves while the new one is restarted');
      });
      assert.equal(r.code, 0, r.stderr + r.stdout);
      assert.ok(g.ok && g.code === undefined, `${g.code}: ${g.message}`);
      assert.equal(g.buildId, build.buildId);
      assert.ok(g.pid && g.pid !== crashed && g.pid !== old.pid, `reported pid ${g.pid} (old ${old.pid}, crashed ${crashed})`);
      assert.match(log, new RegExp(`candidate app pid=${crashed} exited rc=1`));
      assert.match(log, new RegExp(`app pid=${crashed} exited during the reload \\(1/1 tolerated\\); starting it again`));
      assert.ok(g.ms < 20_000, `reload took ${g.ms} ms`);
      await oneAppServing(`the restarted app (pid ${g.pid}) to serve`, (p) => p === g.pid);
      timings['reload with a crash of the new app'] = `${g.ms} ms`;
    }

    // (c) The new app crashes every time (twice): the reload fails with APP_CRASHED_DURING_RELOAD,
    //     the CLI reports the code for that gateway, and the old app never stopped serving.
    {
      const old = await healthz(port);
      assert.ok(old);
      const crashedPids: number[] = [];
      const { r, g } = await crashDuringReload('new app crashes twice', ['new-app-started'], async () => {
        for (let n = 1; n <= 2; n++) {
          const pid = Number(await pausedAt(gw, 'new-app-started'));
          assert.ok(pid > 0 && !crashedPids.includes(pid), `pause ${n} with pid ${pid}`);
          crashedPids.push(pid);
          await inContainer(gw, `app ${n}/2 (pid ${pid}) to listen, crash and be reaped, then the reload to continue`,
            `until curl -sf http://127.0.0.1:$(cat ${RUN_DIR}/candidate.port)/healthz | grep -q '"pid":${pid},'; do sleep 0.02; done; ${shCrash('candidate')}; ${shReaped(pid, 'candidate')}; ${SH_RELEASE}`);
        }
      });
      assert.equal(r.code, 1, `the CLI fails when a gateway fails: ${r.stdout}`);
      assert.equal(g.ok, false);
      assert.equal(g.code, 'APP_CRASHED_DURING_RELOAD', `${g.code}: ${g.message}`);
      assert.match(g.message, /exited 2 times before it listened.*the old build keeps serving/);
      const pid = await oneAppServing('the old app to serve on after the failed reload', (p) => p === old.pid);
      note(`  new app crashes twice: ${g.code} after ${g.ms} ms; the old app (pid ${pid}) served throughout`);
    }

    // An app ignoring SIGTERM is SIGKILLed after 10 s, and the reload still succeeds.
    const port1 = HTTP_PORTS[1];
    const stubborn = await healthz(port1);
    assert.ok(stubborn);
    await httpRequest(`http://127.0.0.1:${port1}/ignore-sigterm`, { method: 'POST' });
    const r = await step('reload with an app that ignores SIGTERM', () => cli(['reload', '--env', ENV, '--json']));
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const g1 = gatewayResult(lastJson<ReloadSummary>(r.stdout), GATEWAYS[1]);
    assert.ok(g1.ok && g1.pid !== stubborn.pid);
    assert.ok(g1.ms >= 9_500 && g1.ms < 20_000, `stubborn reload took ${g1.ms} ms`);
    assert.match(await docker(['logs', GATEWAYS[1]]), /ignored SIGTERM for 10 s; sending SIGKILL/);
    note(`  SIGTERM ignored -> SIGKILL: ${GATEWAYS[1]} reloaded in ${g1.ms} ms`);
    assert.equal((await appProcesses(GATEWAYS[1])).length, 1);
  });

  it('3b. under a load generator requesting both gateways without pause (and holding a WebSocket each), a reload fails no request', async () => {
    const previous = await ensureServing();
    const next = await step('pack a new build', () => packBuild(wsGood));
    current = next;
    assert.notEqual(next.buildId, previous.buildId);
    // What stage 1 does: a new connection to stage 2 per request (no keep-alive).
    const firstNew: Record<string, number> = {};
    const load = startLoad({
      targets: GATEWAYS.map((g, i) => ({ name: g, url: `http://127.0.0.1:${HTTP_PORTS[i]}/healthz`, webSocketPath: '/ws' })),
      concurrency: 4,
      onResponse: (t, body, at) => {
        if (firstNew[t.name] === undefined && (JSON.parse(body) as { buildId?: string }).buildId === next.buildId) firstNew[t.name] = at;
      },
    });
    let result: LoadResult | undefined;
    try {
      await webSocketsOpen(load, 10_000);
      const before = load.snapshot();
      assert.ok(before.requests > 0, 'the load generator sent nothing');
      const r = await step('demiurge-gateway reload under load', () => cli(['reload', '--env', ENV, '--json']));
      assert.equal(r.code, 0, r.stderr + r.stdout);
      const summary = lastJson<ReloadSummary>(r.stdout);
      for (const g of summary.results) assert.ok(g.ok && g.buildId === next.buildId, `${g.container}: ${g.code}: ${g.message}`);
      // Every gateway has served the new build, and the WebSockets closed by the old apps are back.
      await waitFor('every gateway to answer the load with the new build', 10_000, async () => (GATEWAYS.every((g) => firstNew[g] !== undefined) ? true : undefined), 20);
      await waitFor('the WebSockets to be reopened on the new build', 10_000, async () => {
        const s = load.snapshot();
        return Object.values(s.byTarget).every((t) => t.webSocket && t.webSocket.opened >= 2) ? true : undefined;
      }, 20);
      result = await load.stop();
      note(`  reload under load: ${result.requests} requests in ${result.durationMs} ms, ${result.failed} failed; engine side ${summary.ms} ms; WebSockets: ${result.webSocketCleanCloses} closed with 1012 and reopened, ${result.webSocketFailures} failures`);
      timings['reload under load (requests / failed)'] = `${result.requests} / ${result.failed}`;
    } finally {
      if (!result) await load.stop();
    }
    assert.equal(result.failed, 0, `failed requests: ${JSON.stringify(Object.fromEntries(Object.entries(result.byTarget).map(([k, v]) => [k, v.failures])))}`);
    assert.equal(result.webSocketFailures, 0, JSON.stringify(Object.fromEntries(Object.entries(result.byTarget).map(([k, v]) => [k, v.webSocket]))));
    assert.ok(result.webSocketCleanCloses >= POOL, `each old app closes its WebSocket with 1012: ${result.webSocketCleanCloses}`);
    for (const g of GATEWAYS) {
      const codes = result.byTarget[g].webSocket?.closeCodes ?? [];
      assert.ok(codes.length > 0 && codes.every((c) => c === 1012), `${g}: close codes ${codes.join(',')}`);
      assert.equal((await appProcesses(g)).length, 1, `${g}: one app after the reload`);
    }
  });

  it('4b. gateway-fetch-build refuses an archive with absolute, \'..\' or symlinked member names, without its files, or not a tar.gz, and changes nothing', async () => {
    // In a throwaway container of the gateway image (no network): a loopback server answers
    // /<case>/gateway-t.tar.gz with archives GNU tar makes here (-P keeps '/' and '..' as given).
    const script = [
      'set -u; w=/tmp/ft; mkdir -p $w/src/app-gateway $w/srv/good $w/srv/abs $w/srv/dots $w/srv/sym $w/srv/nomain $w/srv/noinfo $w/srv/junk',
      'cd $w/src; echo build_id=good-1 > BUILD_INFO.txt; echo "console.log(1)" > app-gateway/main.js; echo evil > /tmp/evil',
      'tar -czf $w/srv/good/gateway-t.tar.gz BUILD_INFO.txt app-gateway',
      'tar -czPf $w/srv/abs/gateway-t.tar.gz BUILD_INFO.txt app-gateway /tmp/evil',
      'tar -czPf $w/srv/dots/gateway-t.tar.gz BUILD_INFO.txt app-gateway app-gateway/../../../../tmp/evil',
      'mkdir -p $w/l && cd $w/l && ln -s /etc x && tar -cf $w/sym.tar x && cd $w/src && mkdir -p x && echo pwned > x/passwd && tar -rf $w/sym.tar BUILD_INFO.txt app-gateway x/passwd && gzip -c $w/sym.tar > $w/srv/sym/gateway-t.tar.gz',
      'tar -czf $w/srv/nomain/gateway-t.tar.gz BUILD_INFO.txt; tar -czf $w/srv/noinfo/gateway-t.tar.gz app-gateway; echo junk > $w/srv/junk/gateway-t.tar.gz',
      // The server says when it listens, through a FIFO the script reads (bounded): no polling.
      'mkfifo $w/up',
      `node -e 'require("http").createServer((q, s) => require("fs").createReadStream(process.argv[1] + q.url).on("error", () => { s.statusCode = 404; s.end(); }).pipe(s)).listen(9999, "127.0.0.1", () => console.log("listening"))' $w/srv > $w/up &`,
      'read -r -t 20 up < $w/up && [ "$up" = listening ] || { echo "the archive server did not listen within 20 s"; exit 1; }',
      'fetch() { ENV_NAME=t BUILD_SERVER_URL=http://127.0.0.1:9999/$1 gateway-fetch-build 2>&1; echo "rc=$?"; }',
      'echo "== good"; fetch good; before=$(readlink /opt/gateway)',
      'for c in abs dots sym nomain noinfo junk; do echo "== $c"; fetch $c; echo "root=$([ "$(readlink /opt/gateway)" = "$before" ] && echo same || echo changed)"; done',
      'echo "== leftovers"; ls -A /opt/gateway-releases | grep -c "^\\." || true; echo "passwd=$(grep -c pwned /etc/passwd || true)"',
    ].join('\n');
    const out = await docker(['run', '--rm', '--network', 'none', '--entrypoint', 'bash', IMAGES.gateway.tag, '-c', script], { timeoutMs: 60_000 });
    const cases = new Map(out.split('== ').slice(1).map((c) => [c.split('\n')[0], c.split('\n').slice(1).join('\n')]));
    note(`  fetch refusals:\n${out.split('\n').filter((l) => /^(==|rc=|root=|GET|unpacking)/.test(l)).map((l) => `    ${l}`).join('\n')}`);
    assert.match(cases.get('good') ?? '', /FETCHED build_id=good-1 [^]*rc=0/);
    const refused: Record<string, RegExp> = {
      abs: /absolute or '\.\.' member names; refused\nrc=4/,
      dots: /absolute or '\.\.' member names; refused\nrc=4/,
      sym: /unpacking failed: tar: x\/passwd: Cannot open: Not a directory\nrc=5/,
      nomain: /lacks app-gateway\/main\.js; refused\nrc=4/,
      noinfo: /lacks BUILD_INFO\.txt; refused\nrc=4/,
      junk: /not a valid \.tar\.gz \(5 bytes\): gzip: stdin: not in gzip format\nrc=4/,
    };
    for (const [c, re] of Object.entries(refused)) {
      assert.match(cases.get(c) ?? '', re, `case ${c}:\n${cases.get(c)}`);
      assert.match(cases.get(c) ?? '', /root=same/, `case ${c} moved /opt/gateway`);
    }
    assert.match(cases.get('leftovers') ?? '', /^0\npasswd=0/, `leftover download or release directories, or /etc/passwd written:\n${cases.get('leftovers')}`);
  });

  it('4. the build server serves only regular *.tar.gz files in its directory and is not published', async () => {
    const build = await ensureServing();
    // Hostile fixtures next to the real tarball.
    await docker(['run', '--rm', '--name', FIXTURE, '-v', `${VOL_BUILDS}:/b`, 'debian:bookworm-slim', 'sh', '-euc', [
      'cd /b',
      'echo secret-dotfile > .secret.tar.gz',
      'echo notes > notes.txt',
      'mkdir -p sub dir.tar.gz && echo inner > sub/inner.tar.gz',
      'ln -sfn /etc/passwd evil.tar.gz',
      'ln -sfn ../../../../etc/passwd up.tar.gz',
      `ln -sfn ${TARBALL} inner-link.tar.gz`,
      'ln -sfn /etc linkdir',
      "echo back > 'back\\slash.tar.gz'",
    ].join('; ')]);

    const T = `/${TARBALL}`;
    const nf = [404];
    const requests: ProbeRequest[] = [
      { label: 'control GET', method: 'GET', target: T, expect: [200] },
      { label: 'control HEAD', method: 'HEAD', target: T, expect: [200] },
      { label: 'listing /', method: 'GET', target: '/', expect: nf },
      { label: 'listing /sub/', method: 'GET', target: '/sub/', expect: nf },
      { label: 'traversal', method: 'GET', target: '/../../../../etc/passwd', expect: nf },
      { label: 'traversal to a .tar.gz', method: 'GET', target: `/../builds/${TARBALL}`, expect: nf },
      { label: '%2e%2e/', method: 'GET', target: '/%2e%2e/%2e%2e/etc/passwd', expect: nf },
      { label: '%2E%2E%2F', method: 'GET', target: '/%2E%2E%2Fetc%2Fpasswd', expect: nf },
      { label: '..%2f', method: 'GET', target: '/..%2f..%2fetc%2fpasswd', expect: nf },
      { label: 'double encoding', method: 'GET', target: '/%252e%252e%252fetc%252fpasswd', expect: nf },
      { label: 'encoded backslash', method: 'GET', target: '/..%5c..%5cetc%5cpasswd', expect: nf },
      { label: 'raw backslashes', method: 'GET', target: '/..\\..\\etc\\passwd', expect: [400, 404] },
      { label: 'backslash in name', method: 'GET', target: '/back\\slash.tar.gz', expect: [400, 404] },
      { label: 'encoded legit name', method: 'GET', target: `/${TARBALL.replace(/\./g, '%2e')}`, expect: nf },
      { label: 'NUL byte', method: 'GET', target: `${T}%00.txt`, expect: nf },
      { label: 'trailing slash', method: 'GET', target: `${T}/`, expect: nf },
      { label: 'double slash', method: 'GET', target: '//etc/passwd', expect: nf },
      { label: 'query string', method: 'GET', target: `${T}?../../etc/passwd`, expect: nf },
      { label: 'absolute-form', method: 'GET', target: `http://evil.example${T}`, expect: nf },
      { label: 'dotfile .tar.gz', method: 'GET', target: '/.secret.tar.gz', expect: nf },
      { label: 'non-tar.gz file', method: 'GET', target: '/notes.txt', expect: nf },
      { label: 'symlink out (absolute)', method: 'GET', target: '/evil.tar.gz', expect: nf },
      { label: 'symlink out (relative)', method: 'GET', target: '/up.tar.gz', expect: nf },
      { label: 'symlink inside the dir', method: 'GET', target: '/inner-link.tar.gz', expect: nf },
      { label: 'symlinked directory', method: 'GET', target: '/linkdir/passwd', expect: nf },
      { label: 'subdirectory file', method: 'GET', target: '/sub/inner.tar.gz', expect: nf },
      { label: 'directory named .tar.gz', method: 'GET', target: '/dir.tar.gz', expect: nf },
      { label: 'POST', method: 'POST', target: T, expect: [405] },
      { label: 'PUT', method: 'PUT', target: T, expect: [405] },
      { label: 'DELETE', method: 'DELETE', target: T, expect: [405] },
      { label: 'OPTIONS *', method: 'OPTIONS', target: '*', expect: [405] },
      { label: 'TRACE', method: 'TRACE', target: '/', expect: [405] },
    ];
    const out = await docker(['run', '--rm', '--name', PROBE, '--network', NET,
      '-e', `PROBE_HOST=${BUILD_SERVER}`, '-e', `PROBE_PORT=${PORTS.buildServer}`, '-e', `PROBE_REQUESTS=${JSON.stringify(requests)}`,
      'node:20-bookworm-slim', 'node', '-e', PROBE_SCRIPT]);
    const responses = JSON.parse(out) as ProbeResponse[];
    const failures: string[] = [];
    for (const [i, req] of requests.entries()) {
      const res = responses[i];
      const leaked = /root:x:0:0|secret-dotfile|notes|inner|back/.test(res.head);
      if (!req.expect.includes(res.status) || leaked) failures.push(`${req.label}: ${req.method} ${req.target} -> ${res.status} ${res.error ?? ''} ${JSON.stringify(res.head.slice(0, 60))}`);
    }
    const hostile = requests.filter((r) => !r.label.startsWith('control'));
    note(`  ${hostile.length} hostile requests: ${hostile.map((_r, i) => `${responses[i + 2].status}`).join(' ')}`);
    assert.deepEqual(failures, [], failures.join('\n'));
    assert.equal(responses[0].bytes, build.bytes, 'control GET returns the whole tarball');
    assert.equal(responses[1].bytes, 0, 'HEAD has no body');

    // Not published: no host port binding at all, and nothing of ours on the host's 8090.
    const bindings = JSON.parse(await docker(['inspect', '-f', '{{json .NetworkSettings.Ports}}', BUILD_SERVER])) as Record<string, unknown[] | null> | null;
    const published = Object.entries(bindings ?? {}).filter(([, v]) => Array.isArray(v) && v.length > 0);
    assert.deepEqual(published, [], `build server has published ports: ${JSON.stringify(bindings)}`);
    const hostPortBindings = await docker(['inspect', '-f', '{{json .HostConfig.PortBindings}}', BUILD_SERVER]);
    assert.ok(hostPortBindings === '{}' || hostPortBindings === 'null', hostPortBindings);
    note(`  host 127.0.0.1:${PORTS.buildServer} open: ${await tcpOpen(PORTS.buildServer)} (build server has no port binding)`);
  });

  it('5. pack rejects a bundle that requires react, naming the line, and writes nothing', async () => {
    const build = await ensureServing();
    const ws = makeWorkspace(tmp, 'ws-react', ['"use strict";', 'const http = require("http");', 'var e4 = require("react");', 'module.exports = {};', ''].join('\n'));
    const out = path.join(tmp, 'out-react');
    const r1 = await cli(['pack', '--env', ENV, '--workspace', ws, '--out', out]);
    note(`  pack exit ${r1.code}; stderr:\n${r1.stderr.trim().replace(/^/gm, '        ')}`);
    assert.equal(r1.code, 3);
    assert.match(r1.stderr, /Line 3: var e4 = require\("react"\);/);
    assert.match(r1.stderr, /dist\/packages\/app-gateway\/main\.js/);
    assert.ok(!fs.existsSync(out), 'nothing may be written for a rejected bundle');

    const r2 = await cli(['pack', '--env', ENV, '--workspace', ws, '--volume', VOL_BUILDS]);
    assert.equal(r2.code, 3);
    const h = await healthz(HTTP_PORTS[0]);
    assert.equal(h?.buildId, build.buildId);
    // The volume still holds the last good build: fetch it again through a reload-free fetch in a gateway.
    const fetched = await docker(['exec', GATEWAYS[0], 'gateway-fetch-build']);
    assert.match(fetched, new RegExp(`build_id=${build.buildId}`));
  });

  it('6. dev image: PostgreSQL + stage-1 nginx come up healthy; PowerDNS answers its API with the key', async () => {
    const build = await ensureServing();
    // A fresh dev container and pgdata volume (the schema and restart checks below need a first start).
    await removeByName({ containers: [PDNS, DEV], volumes: [VOL_PGDATA] });
    dirty = true;
    await docker(['volume', 'create', '--label', `environment=${ENV}`, VOL_PGDATA]);
    const devArgs = ['run', '-d', '--name', DEV, '--network', NET, ...labels('dev'),
      '-e', `ENV_NAME=${ENV}`, '-e', `DOMAIN=${DOMAIN}`, '-e', 'PUBLIC_IP=127.0.0.1',
      '-e', 'POSTGRES_PASSWORD', '-e', 'PDNS_DB_PASSWORD', '-e', 'GANYMEDE_DB_PASSWORD',
      '-v', `${VOL_PGDATA}:/var/lib/postgresql`, '-v', '/var/run/docker.sock:/var/run/docker.sock',
      '--health-interval', '1s', IMAGES.dev.tag];
    const secretEnv = { POSTGRES_PASSWORD: SECRETS.postgres, PDNS_DB_PASSWORD: SECRETS.pdnsDb, GANYMEDE_DB_PASSWORD: SECRETS.ganymedeDb };
    await docker(devArgs, { env: secretEnv });
    const healthyDev = await step('dev container healthy', () =>
      waitFor('dev healthy', 90_000, async () => ((await containerHealth(DEV)).startsWith('healthy') ? true : undefined), 250));
    timings['dev container healthy'] = `${healthyDev.ms} ms`;

    const sh = (cmd: string, env: Record<string, string> = {}): Promise<RunResult> =>
      run('docker', ['exec', ...Object.keys(env).flatMap((k) => ['-e', k]), DEV, 'sh', '-c', cmd], { env: { ...process.env, ...env } });
    const nginxT = (await sh('nginx -T 2>/dev/null')).stdout;
    for (const needle of ['server_names_hash_bucket_size 128;', 'worker_shutdown_timeout 30s;', 'resolver 127.0.0.11 valid=10s;', 'include /etc/nginx/demiurge/*.conf;', 'proxy_pass http://127.0.0.1:6000;']) {
      assert.ok(nginxT.includes(needle), `nginx -T lacks ${needle}`);
    }
    assert.equal((await sh('curl -s -o /dev/null -w "%{http_code} %{redirect_url}" http://127.0.0.1/x')).stdout, `301 https://127.0.0.1/x`);
    const gany = await sh(`curl -sk -o /dev/null -w "%{http_code}" --resolve ${ganymedeFqdn(DOMAIN)}:443:127.0.0.1 https://${ganymedeFqdn(DOMAIN)}/`);
    assert.equal(gany.stdout, '502', 'ganymede is proxied to 127.0.0.1:6000 (nothing listens there in this test)');
    const apex = await sh(`curl -sk -o /dev/null -w "%{http_code} %{content_type}" --resolve ${DOMAIN}:443:127.0.0.1 https://${DOMAIN}/`);
    // No frontend build here: the image's own page naming what is missing (200 once a build is there).
    assert.ok(['200 text/html', '503 text/html; charset=utf-8'].includes(apex.stdout), `apex over TLS: ${apex.stdout}`);
    const unknown = await sh('curl -sk -o /dev/null --resolve unknown.example:443:127.0.0.1 https://unknown.example/');
    assert.notEqual(unknown.code, 0, 'unknown names get no TLS handshake');
    assert.match((await sh('docker version --format "{{.Server.Version}}"')).stdout, /^\d+\.\d+/, 'docker CLI in the dev container talks to the host engine');
    for (const m of ['ndk_http_module', 'ngx_http_lua_module', 'ngx_http_js_module']) {
      assert.ok(nginxT.includes(`load_module /usr/lib/nginx/modules/${m}.so;`), `${m} is loaded (allocator contract)`);
    }
    assert.ok(nginxT.indexOf('ndk_http_module.so') < nginxT.indexOf('ngx_http_lua_module.so'), 'NDK before lua');

    // The allocator's stage-1 files (rendered by runtime/nginx-config) work in this image, and the
    // whole request path stage 1 (TLS) -> gateway stage 2 over the environment network -> app holds.
    await step('stage 1 -> gateway -> app through the allocator\'s route table', async () => {
      const confDir = '/etc/nginx/demiurge';
      const render = { confDir, domain: DOMAIN, listen: '443 ssl', certPath: '/etc/demiurge/tls/fullchain.pem', keyPath: '/etc/demiurge/tls/privkey.pem', statusListen: '127.0.0.1:8099' };
      const js = renderRoutesJs(render);
      const version = configVersion(renderOrgsConf(render) + js);
      const conf = renderOrgsConf(render, version);
      const orgId = '0f0f0f0f-1111-4222-8333-444444444444';
      const files: Array<[string, string]> = [
        [`${confDir}/${ROUTES_JS}`, js],
        [`${confDir}/${ORGS_CONF}`, conf],
        [`${confDir}/${ROUTES_SUBDIR}/${routeFileName(orgId)}`, renderRoute(ENV, orgId, GATEWAYS[0], GATEWAYS[0], HTTP_PORTS[0])],
      ];
      for (const [file, text] of files) {
        const w = await run('docker', ['exec', '-i', DEV, 'sh', '-c', `mkdir -p "$(dirname '${file}')" && cat > '${file}'`], { input: text });
        assert.equal(w.code, 0, w.stderr);
      }
      const t = await sh('nginx -t 2>&1 && nginx -s reload');
      assert.equal(t.code, 0, t.stdout + t.stderr);
      await waitFor('the allocator status server to report the route', 10_000, async () => {
        // As the allocator does after writing a route file: load it into the table, read the answer.
        const st = await sh(`curl -s -X POST 'http://127.0.0.1:8099/__demiurge/routes/load?ids=${orgId}'`);
        const parsed = JSON.parse(st.stdout) as { version: string; routes: Record<string, string> };
        return parsed.version === version && parsed.routes[orgId] === `${GATEWAYS[0]}:${HTTP_PORTS[0]}` ? true : undefined;
      }, 100);
      const fqdn = `org-${orgId}.${DOMAIN}`;
      // The status server answering proves the new workers run; the first HTTPS answer may still
      // come from a worker generation that is shutting down, so wait for the route's answer.
      const { value: h } = await waitFor(`https://${fqdn}/healthz to answer from the app through stage 1`, 10_000, async () => {
        const through = await sh(`curl -sk --max-time 3 --resolve ${fqdn}:443:127.0.0.1 https://${fqdn}/healthz`);
        return JSON.parse(through.stdout) as { buildId: string };
      }, 100);
      assert.equal(h.buildId, build.buildId, `stage 1 -> ${GATEWAYS[0]} -> app: ${JSON.stringify(h)}`);
      note(`  https://${fqdn}/healthz (in the dev container) -> ${GATEWAYS[0]}:${HTTP_PORTS[0]} -> app build ${h.buildId}`);
      await sh(`rm -rf ${confDir}/* && nginx -s reload`);
    });

    const tcp = await sh('PGPASSWORD="$GANYMEDE_DB_PASSWORD" psql -h 127.0.0.1 -U ganymede -d ganymede -Atc "select current_user"', { GANYMEDE_DB_PASSWORD: SECRETS.ganymedeDb });
    assert.equal(tcp.stdout.trim(), 'ganymede', tcp.stderr);

    await docker(['run', '-d', '--name', PDNS, '--network', NET, ...labels('pdns'),
      '-e', 'PDNS_API_KEY', '-e', `PDNS_DB_HOST=${DEV}`, '-e', 'PDNS_DB_PASSWORD', '-e', `PDNS_SOA_CONTENT=ns1.${DOMAIN}. hostmaster.${DOMAIN}. 0 10800 3600 604800 3600`,
      '--health-interval', '1s', IMAGES.pdns.tag], { env: { PDNS_API_KEY: SECRETS.pdnsApiKey, PDNS_DB_PASSWORD: SECRETS.pdnsDb } });
    const healthyPdns = await step('pdns container healthy', () =>
      waitFor('pdns healthy', 90_000, async () => ((await containerHealth(PDNS)).startsWith('healthy') ? true : undefined), 250));
    timings['pdns container healthy'] = `${healthyPdns.ms} ms`;

    const api = `http://${PDNS}:${PORTS.powerDnsApi}/api/v1/servers/localhost`;
    const withKey = await sh(`curl -s -H "X-API-Key: $KEY" ${api}`, { KEY: SECRETS.pdnsApiKey });
    const server = JSON.parse(withKey.stdout) as { daemon_type: string; version: string };
    assert.equal(server.daemon_type, 'authoritative');
    note(`  PowerDNS ${server.version} API answers with the key`);
    assert.equal((await sh(`curl -s -o /dev/null -w "%{http_code}" -H "X-API-Key: wrong" ${api}`)).stdout, '401');
    // A zone created through the API gets our default SOA, not a.misconfigured.dns.server.invalid.
    const zone = `${DOMAIN}.`;
    const created = await sh(`curl -s -o /dev/null -w "%{http_code}" -X POST -H "X-API-Key: $KEY" -H 'Content-Type: application/json' -d '{"name":"${zone}","kind":"Native","nameservers":[]}' ${api}/zones`, { KEY: SECRETS.pdnsApiKey });
    assert.equal(created.stdout, '201');
    const zoneJson = (await sh(`curl -s -H "X-API-Key: $KEY" ${api}/zones/${zone}`, { KEY: SECRETS.pdnsApiKey })).stdout;
    assert.match(zoneJson, new RegExp(`ns1\\.${DOMAIN.replace('.', '\\.')}\\.`));
    assert.doesNotMatch(zoneJson, /misconfigured/);

    // Restarts are idempotent: the schema is not reloaded, roles survive a dev restart.
    await docker(['restart', PDNS]);
    await waitFor('pdns healthy after restart', 60_000, async () => ((await containerHealth(PDNS)).startsWith('healthy') ? true : undefined), 250);
    const pdnsLogs = await run('docker', ['logs', PDNS]);
    assert.match(pdnsLogs.stdout + pdnsLogs.stderr, /schema already present/);
    await docker(['restart', DEV]);
    await waitFor('dev healthy after restart', 60_000, async () => ((await containerHealth(DEV)).startsWith('healthy') ? true : undefined), 250);
    const again = await sh('PGPASSWORD="$PDNS_DB_PASSWORD" psql -h 127.0.0.1 -U pdns -d pdns -Atc "select count(*) from domains"', { PDNS_DB_PASSWORD: SECRETS.pdnsDb });
    assert.equal(again.stdout.trim(), '1', again.stderr);

    // Secrets never reach the logs.
    for (const c of [DEV, PDNS]) {
      const l = await run('docker', ['logs', c]);
      for (const s of Object.values(SECRETS)) assert.ok(!(l.stdout + l.stderr).includes(s), `${c} logged a secret`);
    }
  });

  it('7. containers stop gracefully; cleans up only what it created and leaves the engine as it found it', async () => {
    assert.ok(initial);
    await ensureServing(); // gateways with a supervised app, so their graceful stop covers the app

    // docker stop (SIGTERM): gateways stop app + nginx, dev stops nginx + PostgreSQL (fast shutdown).
    const running = (await engineInventory()).containers.filter((c) => [...GATEWAYS, DEV, PDNS, BUILD_SERVER].includes(c));
    const stops = await Promise.all(running.map(async (c) => {
      const t0 = Date.now();
      await docker(['stop', '-t', '15', c]);
      const ms = Date.now() - t0;
      const exit = await docker(['inspect', '-f', '{{.State.ExitCode}}', c]);
      return { c, ms, exit };
    }));
    note(`  graceful stops: ${stops.map((s) => `${s.c} ${s.ms} ms exit ${s.exit}`).join(', ')}`);
    for (const s of stops) {
      assert.equal(s.exit, '0', `${s.c} exited ${s.exit}`);
      assert.ok(s.ms < 12_000, `${s.c} needed ${s.ms} ms to stop`);
    }
    if (running.includes(GATEWAYS[0])) assert.match(await docker(['logs', GATEWAYS[0]]), /supervisor stopping/);
    if (running.includes(DEV)) {
      const l = await run('docker', ['logs', DEV]);
      assert.match(l.stdout + l.stderr, /database system is shut down/);
    }
    await teardown();
    const now = await inventoryExceptOtherEnvs();
    assert.deepEqual(now.containers, initial.containers);
    assert.deepEqual(now.networks, initial.networks);
    assert.deepEqual(now.volumes, initial.volumes);
  });
});
