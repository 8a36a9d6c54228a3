/**
 * `demiurge-gateway pack` and `reload` on two Docker hosts: this machine's engine (unix://) and a
 * second engine the suite builds inside this machine (test/e2e/helpers/second-host.ts: a network
 * namespace with its own dockerd on unix:// + tcp:// and an sshd, reached as ssh://root@<addr>).
 * The real index.ts runs once under mocks with a prod-shaped config (letsencrypt against a Pebble
 * bound on the docker0 address, `acmeCaCertificates` = Pebble's listener CA,
 * `gatewayExtraCaCertificates` = Pebble's root, gatewayHosts main + ssh://root@<addr>), and its whole
 * graph is realised: the main host's half on this engine (dev container with stage 1, the built-in
 * API server and PostgreSQL; PowerDNS; build server; TLS renewer, which obtains stage 1's
 * certificate from Pebble by DNS-01 through that PowerDNS; gateway 0), the second host's half on
 * the second engine (network, build mirror, gateways 1 and 2). Checked: pack writes one
 * build to the builds volume of every host; reload reaches every gateway through unix://, tcp://
 * and ssh:// and reports per host and gateway; a cut-off host is HOST_UNREACHABLE on its own while
 * the main host's gateway still reloads (exit 1); restored, everything reloads again; the remote
 * mirror is unpublished and its gateways publish HTTP on the host address only; the host
 * quarantine marks the cut-off host's gateways unreachable and back ready; an organization on a
 * remote gateway is served through a stage-1 nginx with a Pebble (DNS-01) certificate; an
 * organization started through https://ganymede.<domain>/operator (the built-in API server) lands on
 * a remote gateway and is served through the dev container's stage 1 with a certificate verifying
 * against Pebble's root only.
 *
 * Run: npx mocha --config .mocharc.e2e.json test/e2e/multihost.test.ts --grep 'multi-host'
 * Needs root (network namespace, second dockerd, sshd: openssh-server, see scripts/docker-setup.sh).
 */
import { strict as assert } from 'assert';
import { randomUUID } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  buildServerContainerName,
  buildServerUrl,
  gatewayName,
  ganymedeFqdn,
  ganymedeStage1Url,
  imageName,
  orgFqdn,
  volumeName,
} from '../../runtime/naming';
import { bundleRuntimeEntry } from '../../components/runtime-bundle';
import { GATEWAY_EXTRA_CA_FILE } from '../../components/gateway-pool';
import { Pool } from 'pg';
import { HostHealthMonitor } from '../../runtime/host-health';
import { migrate } from '../../runtime/migrate';
import { DockerApi } from '../../tools/lib/docker-api';
import { readStackYaml } from '../../tools/lib/stack-yaml';
import { execFile } from 'child_process';
import { writeFileSync } from 'fs';
import { GatewayAllocator } from '../../runtime';
import { AcmeIssuer } from '../../runtime/tls/acme-issuer';
import { testAllocatorOptions } from '../helpers/allocator-settings';
import { dropSchema, randomOrg, suiteId } from '../helpers/fixtures';
import { Pebble, ensureDebianPackage } from '../helpers/pebble';
import { freePorts } from '../helpers/ports';
import { removeZoneAndSchemas, zoneWithStage1 } from '../helpers/suite-setup';
import { requireServices } from '../helpers/services';
import { providerUrn, runProgram, type CapturedResource } from '../unit/helpers/pulumi-mocks';
import { httpsTo, operator } from './helpers/environment';
import { describeDeployment, parseOutputs, type Deployment } from './realise/deployment';
import { Engine, type ContainerInspect } from './realise/engine';
import { DOCKER_PROVIDER, IMAGE } from './realise/fields';
import { Realiser } from './realise/realise';
import type { PackResult } from '../../tools/lib/pack';
import type { ReloadSummary } from '../../tools/lib/reload';
import { checkoutId } from './helpers/checkout';
import { REPO_ROOT, RunResult, bridgeAddress, buildImageCached, docker, run, waitFor } from './helpers/docker';
import { requireDocker } from './helpers/require-docker';
import { SecondHost, startSecondHost } from './helpers/second-host';
import { note, step } from './helpers/steps';

const ID = checkoutId();
const ENV = `mh-${ID}`;
const DOMAIN = `${ENV}.test`;
const MAIN_URL = 'unix:///var/run/docker.sock';
const VOL_BUILDS = volumeName(ENV, 'builds');
const BUILD_SERVER = buildServerContainerName(ENV);
/** Gateway 0 on the main host, 1 and 2 on the second (indices are global across hosts, as in gatewayHosts). */
const MAIN_GATEWAYS = [gatewayName(ENV, 0)];
const HOST2_GATEWAYS = [gatewayName(ENV, 1), gatewayName(ENV, 2)];
const IMAGES = {
  gateway: { tag: imageName(ENV, 'gateway'), context: 'images/gateway' },
  'build-server': { tag: imageName(ENV, 'build-server'), context: 'images/build-server' },
};
/** The second host as gatewayHosts names it (the program's provider `docker-host2`). */
const HOST2 = 'host2';
/** Gateway n publishes HTTP on GW_HTTP_BASE + n and OpenVPN on GW_VPN_BASE + n on its host (away from other suites' ports). */
const GW_HTTP_BASE = 63400;
const GW_VPN_BASE = 63450;
const httpPortOf = (index: number): number => GW_HTTP_BASE + index;
const ACME_EMAIL = 'ops@example.com';

/** On the main engine, everything of the environment carries its label: what before()/after() remove (the second engine goes away whole). */
async function removeMainEnvironment(): Promise<void> {
  const ids = async (kind: 'ps -a' | 'network ls' | 'volume ls'): Promise<string[]> =>
    (await docker([...kind.split(' '), '-q', '--filter', `label=environment=${ENV}`])).split('\n').map((x) => x.trim()).filter(Boolean);
  const containers = await ids('ps -a');
  if (containers.length > 0) await run('docker', ['rm', '-f', '-v', ...containers]);
  for (const n of await ids('network ls')) await run('docker', ['network', 'rm', n]);
  const volumes = await ids('volume ls');
  if (volumes.length > 0) await run('docker', ['volume', 'rm', '-f', ...volumes]);
}

function cli(args: string[], env: NodeJS.ProcessEnv = process.env): Promise<RunResult> {
  return run(process.execPath, ['-r', 'ts-node/register/transpile-only', path.join(REPO_ROOT, 'tools', 'gateway-cli.ts'), ...args], { cwd: REPO_ROOT, env, timeoutMs: 120_000 });
}

function lastJson<T>(r: RunResult): T {
  const line = r.stdout.trim().split('\n').filter(Boolean).pop();
  assert.ok(line, `no JSON output (exit ${r.code}): ${r.stderr}${r.stdout}`);
  return JSON.parse(line) as T;
}

describe('multi-host: pack and reload on two Docker hosts (unix://, tcp://, ssh://)', function () {
  this.timeout(300_000);

  let host2: SecondHost | undefined;
  /** The suite's ACME CA: bound on the docker0 address (containers reach it; it stays on this machine). */
  let pebble: Pebble | undefined;
  /** The main host's half as the realised program's outputs describe it; caFile = Pebble's root (nothing else is trusted). */
  let dep: Deployment | undefined;
  /** Organizations started through the operator API (stopped in after() if a test failed midway). */
  const startedOrgs = new Set<string>();
  /** The Docker resources of the program's graph realised on the second host. */
  let host2Resources: CapturedResource[] = [];
  let tmp = '';
  let ws = '';
  let stackFile = '';
  /** The build every gateway serves (set once they all run it). */
  let serving: string | undefined;

  const need = <T>(v: T | undefined, what = 'the realised environment'): T => {
    assert.ok(v !== undefined, `${what} is missing (the before hook failed)`);
    return v as T;
  };

  /** docker CLI against the main engine (no -H) or the second one. */
  const dk = (on: 'main' | 'host2', args: string[]): Promise<string> => docker([...(on === 'host2' ? host2!.dockerArgs : []), ...args]);

  /**
   * The program's whole graph, realised on both hosts: the real index.ts runs once under a
   * prod-shaped config (letsencrypt against the suite's Pebble, gatewayHosts naming the second
   * host as `ssh://root@<addr>`); every Docker resource of the `docker-host2` provider (network,
   * build mirror's volume and build server, gateways 1 and 2) is created on the second engine from
   * the images loaded there (it cannot build: no mirror there), everything else (images, network,
   * volumes, dev container, PowerDNS, build server, TLS renewer, gateway 0, commands, random values)
   * on this one, each with its real outputs handed back to the program.
   */
  async function realiseFromProgram(stage1: { http: number; https: number; dns: number; pdnsApi: number }): Promise<{ outputs: Record<string, unknown>; host2Resources: CapturedResource[] }> {
    const h = host2 as SecondHost;
    const p = pebble as Pebble;
    const config = { ...readStackYaml(path.join(REPO_ROOT, 'Pulumi.prod.yaml')).config };
    const set: Record<string, string> = {
      envName: ENV,
      domain: DOMAIN,
      // The main host as the second one sees it: where remote gateways reach stage 1 (and every DNS record points).
      publicIp: h.hostAddr,
      gatewayPoolSize: '3',
      gatewayHttpPortBase: String(GW_HTTP_BASE),
      gatewayVpnPortBase: String(GW_VPN_BASE),
      gatewayPortRangeSize: '10',
      gatewayHosts: JSON.stringify([{ name: 'main', host: 'main', poolSize: 1 }, { name: HOST2, host: h.sshUrl, poolSize: 2 }]),
      stage1HttpPort: String(stage1.http),
      stage1HttpsPort: String(stage1.https),
      dnsPort: String(stage1.dns),
      dnsBindIp: '127.0.0.1',
      powerDnsApiHostPort: String(stage1.pdnsApi),
      acmeEmail: ACME_EMAIL,
      acmeDirectory: p.directoryUrl,
      acmeCaCertificates: fs.readFileSync(p.listenerCaFile, 'utf8'),
      gatewayExtraCaCertificates: fs.readFileSync(p.rootFile, 'utf8'),
      // The API server's own host quarantine, fast enough for a test (3 silent rounds of 2 s).
      hostHealthIntervalSeconds: '2',
      retainDataVolumes: 'false',
    };
    for (const [k, v] of Object.entries(set)) config[`demiurge:${k}`] = v;
    const mainEngine = new Engine();
    const host2Engine = new Engine(undefined, { host: h.nsAddr, port: 2375 });
    // The gateway and build-server images were built (cached) for loading into the second host: the same ones here.
    const prebuilt = (engine: Engine, required: boolean) => async (r: CapturedResource): Promise<string | undefined> => {
      const tag = String(r.inputs.imageName);
      if (!required && ![IMAGES.gateway.tag, IMAGES['build-server'].tag].some((t) => tag === t || tag.startsWith(`${t}:`))) return undefined;
      const id = await engine.imageId(tag);
      if (id === undefined && required) throw new Error(`${r.urn}: ${tag} is not loaded on the second host`);
      return id;
    };
    const main = new Realiser({ cwd: REPO_ROOT, engine: mainEngine, logDir: tmp, log: note, prebuiltImage: prebuilt(mainEngine, false) });
    const remote = new Realiser({ cwd: REPO_ROOT, engine: host2Engine, logDir: tmp, log: note, prebuiltImage: prebuilt(host2Engine, true) });
    let host2Provider = '';
    const remoteKeys = new Set<string>();
    const mine: CapturedResource[] = [];
    const onHost2 = (r: CapturedResource): boolean => {
      if (r.type === DOCKER_PROVIDER && r.name === `docker-${HOST2}`) host2Provider = r.urn;
      return r.type.startsWith('docker:') && host2Provider !== '' && (r.urn === host2Provider || providerUrn(r.provider) === host2Provider);
    };
    const run = await runProgram({
      stack: 'prod',
      config,
      mocks: {
        newResource: (args) => (remoteKeys.has(`${args.type}::${args.name}`) ? remote : main).mocks.newResource(args),
        call: (args) => main.mocks.call(args),
      },
      beforeRegister: async (r) => {
        if (onHost2(r)) {
          remoteKeys.add(`${r.type}::${r.name}`);
          main.markElsewhere(r);
          if (r.type !== DOCKER_PROVIDER) mine.push(r);
          await remote.beforeRegister(r);
        } else {
          remote.markElsewhere(r);
          await main.beforeRegister(r);
        }
      },
    });
    assert.ok(host2Provider !== '', 'the program declares a docker-host2 provider');
    assert.ok(main.realised.some((x) => x.resource.type === IMAGE), 'the main host\'s half was realised here');
    return { outputs: run.outputs, host2Resources: mine };
  }

  /** Every gateway on both hosts runs `buildId` (the supervisor's record of the app that listens). */
  async function waitForBuildEverywhere(buildId: string, timeoutMs: number): Promise<void> {
    const engines: [string, DockerApi, string[]][] = [
      [MAIN_URL, new DockerApi(MAIN_URL), MAIN_GATEWAYS],
      [host2!.unixUrl, new DockerApi(host2!.unixUrl), HOST2_GATEWAYS],
    ];
    try {
      await Promise.all(engines.flatMap(([url, api, gws]) => gws.map((gw) =>
        waitFor(`${gw} on ${url} to run build ${buildId}`, timeoutMs, async () => {
          const r = await api.exec(gw, ['cat', '/run/gateway/app.build'], 5000);
          return r.exitCode === 0 && r.stdout.trim() === buildId ? true : undefined;
        }, 200))));
    } finally {
      for (const [, api] of engines) api.close();
    }
  }

  async function packEverywhere(): Promise<PackResult> {
    const r = await cli(['pack', '--env', ENV, '--workspace', ws, '--volume', VOL_BUILDS, '--stack', stackFile, '--json'], host2!.sshEnv);
    assert.equal(r.code, 0, `pack failed (${r.code}): ${r.stderr}${r.stdout}`);
    return lastJson<PackResult>(r);
  }

  /** Every gateway serves a build (packing one on first use). */
  async function ensureServing(): Promise<string> {
    if (serving) return serving;
    const packed = await step('pack a build into both hosts\' builds volumes', packEverywhere);
    // The program's gateways (second host) started before any build existed, so they run the uploaded default
    // app until a reload; the main host's hand-made gateway 0 (no default app) retries the fetch by itself.
    await step('gateway 0 (main host) runs an app (its first fetch is done)', async () => {
      const api = new DockerApi(MAIN_URL);
      try {
        await waitFor(`${MAIN_GATEWAYS[0]} to run an app`, 60_000, async () => {
          const r = await api.exec(MAIN_GATEWAYS[0], ['cat', '/run/gateway/app.build'], 5000);
          return r.exitCode === 0 && r.stdout.trim() !== '' ? true : undefined;
        }, 200);
      } finally {
        api.close();
      }
    });
    const reloaded = await step('reload every host through the stack file', () => cli(['reload', '--env', ENV, '--stack', stackFile, '--json'], host2!.sshEnv));
    assert.equal(reloaded.code, 0, `reload failed (${reloaded.code}): ${reloaded.stderr}${reloaded.stdout}`);
    await step(`all three gateways run build ${packed.buildId}`, () => waitForBuildEverywhere(packed.buildId, 60_000));
    serving = packed.buildId;
    return serving;
  }

  before(async function () {
    this.timeout(600_000);
    await requireDocker(this, 'multi-host e2e', note);
    if (!fs.existsSync('/usr/sbin/sshd') || !fs.existsSync('/usr/bin/ssh')) {
      // The engine is up but the second host's sshd / ssh client is not installed yet.
      const r = await step('install openssh (scripts/docker-setup.sh)', () => run('bash', [path.join(REPO_ROOT, 'scripts', 'docker-setup.sh')], { timeoutMs: 900_000 }));
      assert.equal(r.code, 0, `docker-setup.sh failed: ${r.stderr}`);
    }
    await step('build the gateway and build-server images (cached by tag + context hash)', async () => {
      const outcomes = await Promise.all(Object.entries(IMAGES).map(([k, i]) =>
        buildImageCached(i.tag, path.join(REPO_ROOT, i.context), ['node:20-bookworm-slim'], path.join(os.tmpdir(), `demiurge-e2e-build-${ENV}-${k}.log`))));
      for (const o of outcomes) note(`  ${o.tag}: ${o.cached ? 'cached' : 'built'} in ${o.ms} ms`);
    });
    await removeMainEnvironment(); // leftovers of an interrupted run (this environment's label only)
    host2 = await step('second Docker host (netns, dockerd, sshd) with the images loaded', () =>
      startSecondHost(ID, [IMAGES.gateway.tag, IMAGES['build-server'].tag], note));
    note(`second host: ${host2.unixUrl}, ${host2.tcpUrl}, ${host2.sshUrl}`);

    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'demiurge-e2e-mh-'));
    ws = path.join(tmp, 'ws');
    fs.mkdirSync(path.join(ws, 'dist', 'packages', 'app-gateway'), { recursive: true });
    fs.copyFileSync(path.join(REPO_ROOT, 'test', 'fixtures', 'stand-in-gateway', 'main.js'), path.join(ws, 'dist', 'packages', 'app-gateway', 'main.js'));
    // A stack file shaped like Pulumi.prod.yaml: gateways on the main host and on an ssh:// host.
    stackFile = path.join(tmp, `Pulumi.${ENV}.yaml`);
    const hosts = [{ name: 'main', host: 'main', poolSize: 1 }, { name: 'host2', host: host2.sshUrl, poolSize: 2 }];
    fs.writeFileSync(stackFile, `config:\n  demiurge:envName: ${ENV}\n  demiurge:dockerHost: ${MAIN_URL}\n  demiurge:gatewayHosts: '${JSON.stringify(hosts)}'\n`);

    // Stage 1, DNS and the PowerDNS API of the main host's half; Pebble validates DNS-01 against that PowerDNS.
    const [http, https, dns, pdnsApi, acmePort, managementPort] = await freePorts(6);
    const bridge = await bridgeAddress();
    pebble = new Pebble({ acmePort, managementPort, listenHost: bridge, dnsServer: `127.0.0.1:${dns}` });
    await step(`Pebble on ${bridge} (docker0: containers reach it), validating DNS-01 against the environment's PowerDNS (127.0.0.1:${dns})`, () => (pebble as Pebble).start());
    const realised = await step('the program\'s prod-shaped graph realised: main host here (dev, PowerDNS, build server, TLS renewer via Pebble, gateway 0), second host there (ssh://root@<addr>)', () =>
      realiseFromProgram({ http, https, dns, pdnsApi }));
    host2Resources = realised.host2Resources;
    note(`  realised on the second host: ${host2Resources.map((r) => r.name).join(', ')}`);
    const outputs = parseOutputs(realised.outputs);
    // Only Pebble's root is trusted: stage 1's certificate must come from the renewer's ACME order.
    dep = { ...(await describeDeployment(outputs, new Engine(), tmp)), caFile: (pebble as Pebble).rootFile };
  });

  after(async function () {
    this.timeout(120_000);
    await step('teardown: the main host\'s environment (by its label), Pebble, the whole second host', async () => {
      if (dep) for (const org of startedOrgs) await operator(dep, dep.outputs.operatorToken, 'POST', `/organizations/${org}/stop`).catch(() => undefined);
      await removeMainEnvironment();
      if (host2) await host2.teardown();
      if (pebble) await pebble.destroy();
      if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
    });
    for (const kind of [['ps', '-a'], ['network', 'ls'], ['volume', 'ls']]) {
      const left = (await docker([...kind, '-q', '--filter', `label=environment=${ENV}`])).trim();
      assert.equal(left, '', `${kind.join(' ')}: objects of ${ENV} left on the main engine`);
    }
    const r = await run('ip', ['netns', 'list']);
    assert.ok(!r.stdout.includes(`dmh-${ID}`), 'the second host\'s network namespace is gone');
  });

  afterEach(async () => {
    // A failed cut-off test must not leave the second host unreachable for the next test.
    if (host2) {
      const link = await run('ip', ['-br', 'link', 'show', host2.hostVeth]);
      if (/\bDOWN\b/.test(link.stdout)) await host2.restore();
    }
  });

  it('pack writes one build to the builds volume of every host of the stack (unix:// and ssh://), per host', async () => {
    await ensureServing();
    const packed = await step('pack a new build through the stack file', packEverywhere);
    assert.equal(packed.ok, true);
    assert.deepEqual(packed.hosts?.map((h) => [h.host, h.url, h.ok, h.via]), [
      ['main', MAIN_URL, true, 'volume-mountpoint'],
      ['host2', host2!.sshUrl, true, 'helper-container'],
    ]);
    // The second engine's volume holds exactly this build (its build server serves it).
    const info = await dk('host2', ['run', '--rm', '-v', `${VOL_BUILDS}:/b:ro`, '--entrypoint', 'sh', IMAGES['build-server'].tag, '-c', `tar -xzOf /b/gateway-${ENV}.tar.gz BUILD_INFO.txt; ls -A /b`]);
    assert.match(info, new RegExp(`build_id=${packed.buildId}`));
    assert.deepEqual(info.split('\n').filter((l) => l.startsWith('.') || l.endsWith('.tar.gz')), [`gateway-${ENV}.tar.gz`], 'no temp file left in the volume');
    const r = await step('reload everywhere through the stack file', () => cli(['reload', '--env', ENV, '--stack', stackFile, '--json'], host2!.sshEnv));
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const s = lastJson<ReloadSummary>(r);
    assert.deepEqual(s.results.map((g) => [g.host, g.container, g.ok, g.buildId]), [
      ['main', MAIN_GATEWAYS[0], true, packed.buildId],
      ['host2', HOST2_GATEWAYS[0], true, packed.buildId],
      ['host2', HOST2_GATEWAYS[1], true, packed.buildId],
    ]);
    serving = packed.buildId;
  });

  it('reload reaches the main host by unix:// and the second by tcp://, reporting per host and gateway', async () => {
    const build = await ensureServing();
    const r = await step('reload --host unix:// --host tcp://', () => cli(['reload', '--env', ENV, '--host', MAIN_URL, '--host', host2!.tcpUrl]));
    note(`  output:\n${r.stdout.trimEnd().replace(/^/gm, '        ')}`);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.match(r.stdout, new RegExp(`✅ host ${MAIN_URL}: 1 gateway\\(s\\)\\n   ✅ ${MAIN_GATEWAYS[0]}: build ${build} `));
    assert.match(r.stdout, new RegExp(`✅ host ${host2!.tcpUrl.replace(/\./g, '\\.')}: 2 gateway\\(s\\)\\n   ✅ ${HOST2_GATEWAYS[0]}: build ${build} .*\\n   ✅ ${HOST2_GATEWAYS[1]}: build ${build} `));
    assert.match(r.stdout, /reloaded: 3\/3 on 2\/2 hosts in \d+ ms/);
  });

  it('reload reaches the second host by ssh:// (as gatewayHosts names it), per host and gateway in --json', async () => {
    const build = await ensureServing();
    const r = await step('reload --stack (main unix://, host2 ssh://)', () => cli(['reload', '--env', ENV, '--stack', stackFile, '--json'], host2!.sshEnv));
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const s = lastJson<ReloadSummary>(r);
    assert.deepEqual(s.hosts.map((h) => [h.host, h.url, h.ok, h.gateways]), [['main', MAIN_URL, true, 1], ['host2', host2!.sshUrl, true, 2]]);
    assert.deepEqual(s.results.map((g) => [g.host, g.container, g.ok, g.buildId]), [
      ['main', MAIN_GATEWAYS[0], true, build], ['host2', HOST2_GATEWAYS[0], true, build], ['host2', HOST2_GATEWAYS[1], true, build],
    ]);
    // Without the key the ssh host is unreachable (BatchMode: no prompt), and says so.
    const nokey = await cli(['reload', '--env', ENV, '--host', host2!.sshUrl, '--json'], { ...process.env, DEMIURGE_SSH_OPTS: `-F /dev/null -o UserKnownHostsFile=${tmp}/none -o StrictHostKeyChecking=yes` });
    assert.equal(nokey.code, 1, nokey.stderr + nokey.stdout);
    const h = lastJson<ReloadSummary>(nokey).hosts[0];
    assert.deepEqual([h.ok, h.code], [false, 'HOST_UNREACHABLE']);
    assert.match(h.message ?? '', /Host key verification failed|Permission denied/);
  });

  it('a cut-off host is HOST_UNREACHABLE on its own: the main host still reloads, exit 1; restored, all reload', async () => {
    const build = await ensureServing();
    await step(`cut the second host off (${host2!.hostVeth} down)`, () => host2!.cutOff());
    try {
      const r = await step('reload --stack --host tcp:// while cut off', () => cli(['reload', '--env', ENV, '--stack', stackFile, '--host', host2!.tcpUrl, '--json'], host2!.sshEnv));
      assert.equal(r.code, 1, `exit 1 expected: ${r.stderr}${r.stdout}`);
      const s = lastJson<ReloadSummary>(r);
      assert.equal(s.ok, false);
      assert.deepEqual(s.hosts.map((h) => [h.host, h.ok, h.code ?? null]), [
        [host2!.tcpUrl, false, 'HOST_UNREACHABLE'], ['main', true, null], ['host2', false, 'HOST_UNREACHABLE'],
      ]);
      assert.match(s.hosts[0].message ?? '', new RegExp(`${host2!.tcpUrl.replace(/\./g, '\\.')} unreachable`));
      assert.match(s.hosts[2].message ?? '', new RegExp(`${host2!.sshUrl.replace(/\./g, '\\.')} unreachable`));
      assert.deepEqual(s.results.map((g) => [g.host, g.container, g.ok, g.buildId]), [['main', MAIN_GATEWAYS[0], true, build]]);
      const text = await cli(['reload', '--env', ENV, '--stack', stackFile], host2!.sshEnv);
      note(`  text output while cut off:\n${text.stdout.trimEnd().replace(/^/gm, '        ')}`);
      assert.equal(text.code, 1);
      assert.match(text.stdout, new RegExp(`❌ host host2 \\(${host2!.sshUrl.replace(/\./g, '\\.')}\\): HOST_UNREACHABLE: `));
      assert.match(text.stdout, /reload FAILED on some hosts or gateways: 1\/1 on 1\/2 hosts/);
    } finally {
      await step('restore the second host', () => host2!.restore());
    }
    const r = await step('reload after the restore', () => cli(['reload', '--env', ENV, '--stack', stackFile, '--json'], host2!.sshEnv));
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const s = lastJson<ReloadSummary>(r);
    assert.deepEqual(s.hosts.map((h) => [h.host, h.ok]), [['main', true], ['host2', true]]);
    assert.deepEqual(s.results.map((g) => [g.container, g.ok, g.buildId]), [
      [MAIN_GATEWAYS[0], true, build], [HOST2_GATEWAYS[0], true, build], [HOST2_GATEWAYS[1], true, build],
    ]);
  });

  it('the program\'s remote part: an unpublished build mirror its gateways fetch from, HTTP published on the host address, ganymede.<domain> pinned to stage 1', async () => {
    const build = await ensureServing();
    const h = host2 as SecondHost;
    assert.deepEqual(host2Resources.map((r) => `${r.type.split('/').pop()}:${String(r.inputs.name ?? r.inputs.imageName)}`).sort(), [
      `container:Container:${BUILD_SERVER}`,
      `container:Container:${HOST2_GATEWAYS[0]}`,
      `container:Container:${HOST2_GATEWAYS[1]}`,
      `image:Image:${IMAGES['build-server'].tag}:latest`,
      `image:Image:${IMAGES.gateway.tag}:latest`,
      `network:Network:${dep?.outputs.networkName}`,
      `volume:Volume:${VOL_BUILDS}`,
    ]);
    const api = new DockerApi(h.unixUrl);
    try {
      const inspect = async (name: string): Promise<ContainerInspect> => JSON.parse((await dk('host2', ['inspect', name])).trim())[0] as ContainerInspect;
      const bs = await inspect(BUILD_SERVER);
      assert.deepEqual(bs.HostConfig.PortBindings ?? {}, {}, 'the build mirror publishes nothing');
      for (const [i, gw] of HOST2_GATEWAYS.entries()) {
        const c = await inspect(gw);
        const env = new Map((c.Config.Env ?? []).map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]));
        assert.equal(env.get('BUILD_SERVER_URL'), buildServerUrl(ENV));
        // Through stage 1 (its published port), trusting the private ACME CA's root as well.
        assert.equal(env.get('GANYMEDE_URL'), ganymedeStage1Url(DOMAIN, need(dep).httpsPort));
        assert.equal(env.get('NODE_EXTRA_CA_CERTS'), GATEWAY_EXTRA_CA_FILE);
        assert.deepEqual((c.HostConfig as unknown as { ExtraHosts: string[] }).ExtraHosts, [`${ganymedeFqdn(DOMAIN)}:${h.hostAddr}`]);
        assert.deepEqual(c.HostConfig.PortBindings?.[`${httpPortOf(1 + i)}/tcp`], [{ HostIp: h.nsAddr, HostPort: String(httpPortOf(1 + i)) }]);
        // Fetched from the mirror on its own host (the only build server it can reach).
        const r = await api.exec(gw, ['cat', '/run/gateway/app.build'], 5000);
        assert.equal(r.stdout.trim(), build);
      }
    } finally {
      api.close();
    }
    // Stage 1's route: the host address and published port answer from the main host; the mirror does not.
    const stage2 = await run('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '5', `http://${h.nsAddr}:${httpPortOf(1)}/_gateway/nginx-health`]);
    assert.equal(stage2.stdout.trim(), '200', stage2.stderr);
    const mirrorFromMain = await run('curl', ['-sS', '-o', '/dev/null', '--max-time', '5', `http://${h.nsAddr}:8090/gateway-${ENV}.tar.gz`]);
    assert.notEqual(mirrorFromMain.code, 0, 'the build mirror is unreachable from outside its host');
  });

  it('host quarantine against the real second host: cut off → its ready gateways unreachable, the main host\'s untouched; restored → ready', async function () {
    await ensureServing();
    const h = host2 as SecondHost;
    const services = requireServices(this);
    const schema = `mh_${ID}`.replace(/[^a-z0-9_]/g, '_');
    await dropSchema(services.pgUrl, schema);
    const pool = new Pool({ connectionString: services.pgUrl, max: 2 });
    try {
      await migrate(pool, schema);
      // The pool as the API server would hold it: gateway 0 by container name (main host), 1 and 2 at the second host's address.
      const rows = [[MAIN_GATEWAYS[0], MAIN_GATEWAYS[0], httpPortOf(0)], [HOST2_GATEWAYS[0], h.nsAddr, httpPortOf(1)], [HOST2_GATEWAYS[1], h.nsAddr, httpPortOf(2)]];
      for (const [i, [name, host, port]] of rows.entries()) {
        await pool.query(`INSERT INTO "${schema}".gateways (name, host, http_port, vpn_port, state) VALUES ($1, $2, $3, $4, 'ready')`, [name, host, port, GW_VPN_BASE + i]);
      }
      const states = async (): Promise<string[]> => (await pool.query<{ name: string; state: string }>(`SELECT name, state FROM "${schema}".gateways ORDER BY name`)).rows.map((r) => `${r.name}:${r.state}`);
      const monitor = new HostHealthMonitor({ pool, schema, envName: ENV, settings: { failuresBeforeUnreachable: 2, timeoutMs: 2000 }, logger: (e) => note(`  ${JSON.stringify(e)}`) });
      assert.deepEqual((await monitor.runOnce()).failures, { [h.nsAddr]: 0 }, 'the host answers');
      await step(`cut the second host off (${h.hostVeth} down)`, () => h.cutOff());
      try {
        assert.deepEqual((await monitor.runOnce()).markedUnreachable, []);
        assert.deepEqual((await monitor.runOnce()).markedUnreachable, HOST2_GATEWAYS);
        assert.deepEqual(await states(), [`${MAIN_GATEWAYS[0]}:ready`, `${HOST2_GATEWAYS[0]}:unreachable`, `${HOST2_GATEWAYS[1]}:unreachable`]);
      } finally {
        await step('restore the second host', () => h.restore());
      }
      const back = await step('a round once the host answers again', () => monitor.runOnce());
      assert.deepEqual(back.markedReachable, HOST2_GATEWAYS);
      assert.deepEqual(await states(), [`${MAIN_GATEWAYS[0]}:ready`, `${HOST2_GATEWAYS[0]}:ready`, `${HOST2_GATEWAYS[1]}:ready`]);
    } finally {
      await pool.end();
      await dropSchema(services.pgUrl, schema);
    }
  });

  it('stage 1 serves an organization on a remote gateway with a certificate verifying against Pebble\'s root (DNS-01 through PowerDNS); its host cut off and restored', async function () {
    const build = await ensureServing();
    const h = host2 as SecondHost;
    const services = requireServices(this);
    const domain = `mhs-${suiteId()}.test`;
    const schema = `mhs_${suiteId()}`;
    const work = fs.mkdtempSync(path.join(os.tmpdir(), 'demiurge-e2e-mh-acme-'));
    const [acmePort, managementPort] = await freePorts(2);
    const pebble = new Pebble({ acmePort, managementPort, dnsServer: `127.0.0.1:${services.pdnsDnsPort}` });
    const nginx = await zoneWithStage1(services, domain);
    let allocator: GatewayAllocator | undefined;
    try {
      ensureDebianPackage('lego', 'lego');
      await step('Pebble (ACME test server) validating DNS-01 against the test PowerDNS', () => pebble.start());
      const acme = new AcmeIssuer({
        directoryUrl: pebble.directoryUrl,
        email: 'ops@example.com',
        stateDir: path.join(work, 'acme-state'),
        dns: { apiUrl: services.pdnsApiUrl, apiKey: services.pdnsApiKey, zone: domain },
        resolvers: [`127.0.0.1:${services.pdnsDnsPort}`],
        caCertificatesFile: pebble.listenerCaFile,
      });
      const base = await step(`stage-1 certificate for ${domain} + *.${domain} (DNS-01, Pebble)`, () => acme.issue([domain, `*.${domain}`]));
      writeFileSync(nginx.certFile, base.certPem);
      writeFileSync(nginx.keyFile, base.keyPem, { mode: 0o600 });
      allocator = new GatewayAllocator(testAllocatorOptions(services, nginx, { env: ENV, domain, schema }));
      await allocator.migrate();
      // Only the second host's gateways, as the inventory names them: its address and published HTTP ports.
      const inventory = HOST2_GATEWAYS.map((name, i) => ({ name, host: h.nsAddr, httpPort: httpPortOf(1 + i), vpnPort: GW_VPN_BASE + 1 + i }));
      await allocator.registerGateways(inventory);
      await allocator.markReady(inventory.map((g) => g.name));
      const org = randomOrg();
      const a = await step('allocate an organization (route to a gateway on the second host)', () => (allocator as GatewayAllocator).allocate(org));
      assert.equal(a.host, h.nsAddr);
      const fqdn = `org-${org}.${domain}`;
      const curl = (): Promise<{ code: number; body: string; err: string }> =>
        new Promise((resolve) => {
          execFile('curl', ['-fsS', '--max-time', '5', '--cacert', pebble.rootFile, '--resolve', `${fqdn}:${nginx.httpsPort}:127.0.0.1`, `https://${fqdn}:${nginx.httpsPort}/healthz`], (err, stdout, stderr) =>
            resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, body: stdout, err: stderr }));
        });
      // The allocator reloaded nginx with the route; the new base pair is read by that reload.
      let last = { code: -1, body: '', err: '' };
      await waitFor(`https://${fqdn}/healthz through stage 1 to verify against Pebble's root and answer from the remote gateway`, 20_000, async () => {
        last = await curl();
        return last.code === 0 ? true : undefined;
      }, 250).catch((err: Error) => {
        throw new Error(`${err.message}: curl ${last.code} ${last.err}${last.body}`);
      });
      const health = JSON.parse(last.body) as { buildInfo?: { fields?: Record<string, string> } ; [k: string]: unknown };
      assert.match(last.body, new RegExp(build), 'the remote gateway\'s app (the packed build) answered');
      note(`  ${fqdn} → stage 1 (Pebble certificate) → ${a.host}:${a.httpPort} → build ${build}: ${JSON.stringify(health).slice(0, 120)}`);

      // The host goes away: its free gateway leaves the pool, the organization it holds stays (the reaper's call).
      const monitor = new HostHealthMonitor({ pool: allocator.pgPool, schema, envName: ENV, settings: { failuresBeforeUnreachable: 2, timeoutMs: 2000 }, logger: (e) => note(`  ${JSON.stringify(e)}`) });
      const free = HOST2_GATEWAYS.find((n) => n !== a.name) as string;
      await step(`cut the second host off (${h.hostVeth} down)`, () => h.cutOff());
      try {
        await monitor.runOnce();
        assert.deepEqual((await monitor.runOnce()).markedUnreachable, [free]);
        await assert.rejects((allocator as GatewayAllocator).allocate(randomOrg()), /POOL_EXHAUSTED|no ready gateway/);
        assert.equal((await allocator.getAllocation(org))?.name, a.name, 'the held organization is left to the reaper');
        assert.notEqual((await curl()).code, 0, 'the organization is not served while its host is away');
      } finally {
        await step('restore the second host', () => h.restore());
      }
      assert.deepEqual((await monitor.runOnce()).markedReachable, [free]);
      await waitFor(`https://${fqdn}/healthz to answer again once the host is back`, 20_000, async () => ((await curl()).code === 0 ? true : undefined), 250);
    } finally {
      await allocator?.close();
      nginx.destroy();
      await pebble.destroy();
      await removeZoneAndSchemas(services, domain, schema);
      fs.rmSync(work, { recursive: true, force: true });
    }
  });

  it('the main host\'s half: an organization started through https://ganymede.<domain>/operator (the built-in API server) lands on a remote gateway and is served by the dev container\'s stage 1 with a certificate verifying against Pebble\'s root; the API server quarantines the cut-off host and brings it back', async () => {
    const d = need(dep);
    const token = d.outputs.operatorToken;
    const everyGateway = [...MAIN_GATEWAYS, ...HOST2_GATEWAYS];
    // The gateways run the real gateway app (it speaks the gateway protocol; the stand-in the other tests pack does not).
    serving = undefined; // the other tests re-pack the stand-in
    const appWs = path.join(tmp, 'ws-gateway-app');
    fs.mkdirSync(path.join(appWs, 'dist', 'packages', 'app-gateway'), { recursive: true });
    fs.writeFileSync(path.join(appWs, 'dist', 'packages', 'app-gateway', 'main.js'), bundleRuntimeEntry('gateway-app.js').content);
    const packed = await step('pack the gateway app (runtime/gateway-app) into both hosts\' builds volumes and reload every gateway', async () => {
      const r = await cli(['pack', '--env', ENV, '--workspace', appWs, '--volume', VOL_BUILDS, '--stack', stackFile, '--json'], host2!.sshEnv);
      assert.equal(r.code, 0, `pack failed (${r.code}): ${r.stderr}${r.stdout}`);
      const p = lastJson<PackResult>(r);
      const reloaded = await cli(['reload', '--env', ENV, '--stack', stackFile, '--json'], host2!.sshEnv);
      assert.equal(reloaded.code, 0, `reload failed (${reloaded.code}): ${reloaded.stderr}${reloaded.stdout}`);
      await waitForBuildEverywhere(p.buildId, 60_000);
      return p;
    });
    const states = async (): Promise<Map<string, string>> => {
      const r = await operator(d, token, 'GET', '/status');
      assert.equal(r.status, 200, `GET /operator/status: ${r.status} ${JSON.stringify(r.json)}`);
      return new Map((r.json.gateways as Array<{ name: string; state: string }>).map((g) => [g.name, g.state]));
    };
    let seen = new Map<string, string>();
    await step('every gateway reports ready to the API server by itself (the remote ones through stage 1, trusting Pebble\'s root)', () =>
      waitFor(`every gateway ready at https://ganymede.${DOMAIN}/operator/status`, 120_000, async () => {
        seen = await states();
        return everyGateway.every((n) => seen.get(n) === 'ready') ? true : undefined;
      }, 500).catch(async (err: Error) => {
        // What a remote gateway's app logged (its calls to GANYMEDE_URL through stage 1).
        const log = await dk('host2', ['exec', HOST2_GATEWAYS[0], 'tail', '-n', '15', '/tmp/gateway.log']).catch((e: Error) => e.message);
        throw new Error(`${err.message} (last: ${JSON.stringify([...seen])}); ${HOST2_GATEWAYS[0]}'s app log:\n${log}`);
      }));
    // The main host has one gateway: at most two starts put an organization on the second host.
    let landed: { org: string; gateway: string } | undefined;
    for (let k = 0; k <= MAIN_GATEWAYS.length && landed === undefined; k++) {
      const org = randomUUID();
      startedOrgs.add(org);
      const r = await step(`POST https://ganymede.${DOMAIN}/operator/organizations/${org}/start`, () => operator(d, token, 'POST', `/organizations/${org}/start`));
      assert.equal(r.status, 200, `start ${org}: ${r.status} ${JSON.stringify(r.json)}`);
      assert.equal(r.json.success, true, JSON.stringify(r.json));
      const gateway = String(r.json.gateway_id);
      assert.ok(everyGateway.includes(gateway), `gateway_id ${gateway} is one of the environment's`);
      note(`  ${org} → ${gateway}`);
      if (HOST2_GATEWAYS.includes(gateway)) landed = { org, gateway };
    }
    assert.ok(landed, 'an organization landed on a gateway of the second host');
    const { org, gateway } = landed;
    const fqdn = orgFqdn(org, DOMAIN);
    let last = '';
    const status = await step(`https://${fqdn}/_app/status through the dev container's stage 1 (Pebble's root only) → ${gateway} on the second host`, () =>
      waitFor(`${fqdn} served by ${gateway}`, 30_000, async () => {
        const r = await httpsTo(d, fqdn, '/_app/status', { timeoutMs: 5000 });
        last = `${r.status} ${r.body.slice(0, 200)}`;
        if (r.status !== 200) return undefined;
        const st = JSON.parse(r.body) as { organization_id: string | null; gateway_id: string; build: string; state: string };
        return st.organization_id === org ? st : undefined;
      }, 250).catch((err: Error) => {
        throw new Error(`${err.message} (last: ${last})`);
      }));
    assert.equal(status.value.gateway_id, gateway);
    const page = await httpsTo(d, fqdn, '/');
    assert.equal(page.status, 200, `https://${fqdn}/: ${page.status}`);
    assert.match(page.body, new RegExp(gateway), `the page names its gateway ${gateway}`);
    note(`  ${fqdn} → stage 1 (certificate from the TLS renewer's ACME order at Pebble) → ${gateway} (${host2!.nsAddr}) → build ${packed.buildId}, state ${status.value.state}`);
    // Nested naming: the API server's AcmeIssuer orders the organization's own certificate in the background,
    // from Pebble through acmeCaCertificates (the file in the dev container); the base one does not cover it.
    const nested = `uc-e2e.${fqdn}`;
    let tlsLast = '';
    await step(`https://${nested}/ verifies against Pebble's root (the organization's certificate, ordered by the API server)`, () =>
      waitFor(`a certificate for ${nested}`, 60_000, async () => {
        try {
          await httpsTo(d, nested, '/', { timeoutMs: 5000 });
          return true;
        } catch (err) {
          tlsLast = (err as Error).message;
          return undefined;
        }
      }, 500).catch((err: Error) => {
        throw new Error(`${err.message} (last: ${tlsLast})`);
      }));

    // The second host goes away: the API server's own probe (hostHealthIntervalSeconds 2, 3 rounds) takes its free
    // gateway out of allocation; the organization it holds stays allocated (the reaper's call); the main host's
    // gateway is untouched. Restored, the free one is ready again.
    const h = host2 as SecondHost;
    const free = HOST2_GATEWAYS.find((n) => n !== gateway) as string;
    const before = await states();
    await step(`cut the second host off (${h.hostVeth} down)`, () => h.cutOff());
    try {
      await step(`the API server quarantines ${free} (unreachable), ${gateway} stays allocated, ${MAIN_GATEWAYS[0]} untouched`, () =>
        waitFor(`${free} unreachable in https://ganymede.${DOMAIN}/operator/status`, 30_000, async () => {
          seen = await states();
          return seen.get(free) === 'unreachable' ? true : undefined;
        }, 250).catch((err: Error) => {
          throw new Error(`${err.message} (last: ${JSON.stringify([...seen])})`);
        }));
      assert.equal(seen.get(gateway), 'allocated', `${gateway} keeps its organization while its host is away`);
      assert.equal(seen.get(MAIN_GATEWAYS[0]), before.get(MAIN_GATEWAYS[0]), `${MAIN_GATEWAYS[0]} (main host) untouched`);
    } finally {
      await step('restore the second host', () => h.restore());
    }
    await step(`restored: the API server puts ${free} back in the pool (ready)`, () =>
      waitFor(`${free} ready again in https://ganymede.${DOMAIN}/operator/status`, 30_000, async () => {
        seen = await states();
        return seen.get(free) === 'ready' ? true : undefined;
      }, 250).catch((err: Error) => {
        throw new Error(`${err.message} (last: ${JSON.stringify([...seen])})`);
      }));
    await step(`${fqdn} is served by ${gateway} again`, () =>
      waitFor(`${fqdn} served by ${gateway} after the restore`, 30_000, async () => {
        const r = await httpsTo(d, fqdn, '/_app/status', { timeoutMs: 5000 }).catch(() => undefined);
        return r?.status === 200 && (JSON.parse(r.body) as { organization_id: string | null }).organization_id === org ? true : undefined;
      }, 250));

    for (const o of [...startedOrgs]) {
      const r = await operator(d, token, 'POST', `/organizations/${o}/stop`);
      assert.ok(r.status === 200 || r.json.code === 'NOT_ALLOCATED', `stop ${o}: ${r.status} ${JSON.stringify(r.json)}`);
      startedOrgs.delete(o);
    }
  });
});
