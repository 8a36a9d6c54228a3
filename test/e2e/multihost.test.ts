/**
 * `demiurge-gateway pack` and `reload` on two Docker hosts: this machine's engine (unix://) and a
 * second engine the suite builds inside this machine (test/e2e/helpers/second-host.ts: a network
 * namespace with its own dockerd on unix:// + tcp:// and an sshd, reached as ssh://root@<addr>).
 The main host carries a hand-made build mirror (network, builds volume, build server) and gateway
 * 0; the second host carries its part of the program's prod-shaped graph (network, build mirror,
 * gateways 1 and 2), realised there from the real index.ts under mocks. Checked: pack writes one
 * build to the builds volume of every host; reload reaches every gateway through unix://, tcp://
 * and ssh:// and reports per host and gateway; a cut-off host is HOST_UNREACHABLE on its own while
 * the main host's gateway still reloads (exit 1); restored, everything reloads again; the remote
 * mirror is unpublished and its gateways publish HTTP on the host address only; the host
 * quarantine marks the cut-off host's gateways unreachable and back ready; an organization on a
 * remote gateway is served through a stage-1 nginx with a Pebble (DNS-01) certificate.
 *
 * Run: npx mocha --config .mocharc.e2e.json test/e2e/multihost.test.ts --grep 'multi-host'
 * Needs root (network namespace, second dockerd, sshd: openssh-server, see scripts/docker-setup.sh).
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  buildServerContainerName,
  buildServerUrl,
  containerLabels,
  gatewayName,
  ganymedeFqdn,
  imageName,
  networkName,
  volumeName,
} from '../../runtime/naming';
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
import { mocks as deterministicMocks, providerUrn, runProgram, type CapturedResource } from '../unit/helpers/pulumi-mocks';
import { Engine, type ContainerInspect } from './realise/engine';
import { DOCKER_PROVIDER, isComponentType } from './realise/fields';
import { Realiser } from './realise/realise';
import type { PackResult } from '../../tools/lib/pack';
import type { ReloadSummary } from '../../tools/lib/reload';
import { checkoutId } from './helpers/checkout';
import { REPO_ROOT, RunResult, buildImageCached, docker, removeByName, run, waitFor } from './helpers/docker';
import { requireDocker } from './helpers/require-docker';
import { SecondHost, startSecondHost } from './helpers/second-host';
import { note, step } from './helpers/steps';

const ID = checkoutId();
const ENV = `mh-${ID}`;
const DOMAIN = `${ENV}.test`;
const MAIN_URL = 'unix:///var/run/docker.sock';
const NET = networkName(ENV);
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
/** On the main engine: what after() removes (the second engine goes away whole). */
const OWNED_MAIN = { containers: [...MAIN_GATEWAYS, BUILD_SERVER], networks: [NET], volumes: [VOL_BUILDS] };

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
  /** The Docker resources of the program's graph realised on the second host. */
  let host2Resources: CapturedResource[] = [];
  let tmp = '';
  let ws = '';
  let stackFile = '';
  /** The build every gateway serves (set once they all run it). */
  let serving: string | undefined;

  const labelArgs = (role: 'build-server' | 'gateway'): string[] => Object.entries(containerLabels(ENV, role)).flatMap(([k, v]) => ['--label', `${k}=${v}`]);

  /** docker CLI against the main engine (no -H) or the second one. */
  const dk = (on: 'main' | 'host2', args: string[]): Promise<string> => docker([...(on === 'host2' ? host2!.dockerArgs : []), ...args]);

  /** Network, builds volume and build server on a host: the per-host build mirror. */
  async function mirror(on: 'main' | 'host2'): Promise<void> {
    await dk(on, ['network', 'create', '--label', `environment=${ENV}`, NET]);
    await dk(on, ['volume', 'create', '--label', `environment=${ENV}`, VOL_BUILDS]);
    await dk(on, ['run', '-d', '--name', BUILD_SERVER, '--network', NET, ...labelArgs('build-server'), '-v', `${VOL_BUILDS}:/srv/builds:ro`, IMAGES['build-server'].tag]);
  }

  async function startGateway(on: 'main' | 'host2', index: number): Promise<void> {
    const name = gatewayName(ENV, index);
    await dk(on, ['run', '-d', '--name', name, '--hostname', name, '--network', NET, ...labelArgs('gateway'),
      '-e', `ENV_NAME=${ENV}`, '-e', `GATEWAY_HTTP_PORT=${7100 + index}`, '-e', `GATEWAY_VPN_PORT=${49100 + index}`,
      '-e', `GATEWAY_ID=00000000-0000-4000-8000-00000000000${index}`, '-e', 'GATEWAY_TOKEN=e2e-token',
      '-e', `GANYMEDE_FQDN=${ganymedeFqdn(DOMAIN)}`, '-e', `DOMAIN=${DOMAIN}`, '-e', `BUILD_SERVER_URL=${buildServerUrl(ENV)}`,
      IMAGES.gateway.tag]);
  }

  /**
   * The second host's part of the program's graph, realised on the second engine: the real index.ts
   * runs under a prod-shaped config (letsencrypt, gatewayHosts naming the second host as
   * `ssh://root@<addr>`), the realiser creates every Docker resource of the `docker-host2` provider
   * (network, build mirror's volume and build server, gateways) with its real outputs, and
   * everything else (the main host's resources, commands) gets deterministic mock outputs. Images
   * are the ones loaded into the second host (it cannot build: no mirror there).
   */
  async function realiseHost2FromProgram(): Promise<CapturedResource[]> {
    const h = host2 as SecondHost;
    const config = { ...readStackYaml(path.join(REPO_ROOT, 'Pulumi.prod.yaml')).config };
    Object.assign(config, {
      'demiurge:envName': ENV,
      'demiurge:domain': DOMAIN,
      // The main host as the second one sees it: where remote gateways reach stage 1.
      'demiurge:publicIp': h.hostAddr,
      'demiurge:gatewayPoolSize': '3',
      'demiurge:gatewayHosts': JSON.stringify([{ name: 'main', host: 'main', poolSize: 1 }, { name: HOST2, host: h.sshUrl, poolSize: 2 }]),
    });
    const engine = new Engine(undefined, { host: h.nsAddr, port: 2375 });
    const realiser = new Realiser({
      cwd: REPO_ROOT,
      engine,
      logDir: tmp,
      log: note,
      prebuiltImage: async (r) => {
        const id = await engine.imageId(String(r.inputs.imageName));
        if (id === undefined) throw new Error(`${r.urn}: ${String(r.inputs.imageName)} is not loaded on the second host`);
        return id;
      },
    });
    let host2Provider = '';
    const realisedKeys = new Set<string>();
    const mine: CapturedResource[] = [];
    const onHost2 = (r: CapturedResource): boolean => {
      if (r.type === DOCKER_PROVIDER && r.name === `docker-${HOST2}`) host2Provider = r.urn;
      if (isComponentType(r.type) || r.type.startsWith('random:') || r.type.startsWith('pulumi:providers:')) return true;
      return r.type.startsWith('docker:') && host2Provider !== '' && providerUrn(r.provider) === host2Provider;
    };
    await runProgram({
      stack: 'prod',
      config,
      mocks: {
        newResource: (args) => (realisedKeys.has(`${args.type}::${args.name}`) ? realiser.mocks.newResource(args) : deterministicMocks.newResource(args)),
        call: (args) => deterministicMocks.call(args),
      },
      beforeRegister: async (r) => {
        if (!onHost2(r)) {
          realiser.markElsewhere(r);
          return;
        }
        realisedKeys.add(`${r.type}::${r.name}`);
        if (r.type.startsWith('docker:') && r.type !== DOCKER_PROVIDER) mine.push(r);
        await realiser.beforeRegister(r);
      },
    });
    assert.ok(host2Provider !== '', 'the program declares a docker-host2 provider');
    return mine;
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
    await removeByName(OWNED_MAIN); // leftovers of an interrupted run (suite-owned names only)
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

    await step('main host: build mirror (network, builds volume, build server) and gateway 0', async () => {
      await mirror('main');
      await startGateway('main', 0);
    });
    host2Resources = await step('second host: its part of the program\'s graph (prod-shaped, ssh://root@<addr>) realised there', realiseHost2FromProgram);
    note(`  realised on the second host: ${host2Resources.map((r) => r.name).join(', ')}`);
  });

  after(async function () {
    this.timeout(120_000);
    await step('teardown: the main host\'s suite-owned containers, network, volume; the whole second host', async () => {
      await removeByName(OWNED_MAIN);
      if (host2) await host2.teardown();
      if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
    });
    const left = (await docker(['ps', '-a', '--filter', `label=environment=${ENV}`, '--format', '{{.Names}}'])).trim();
    assert.equal(left, '', `containers of ${ENV} left on the main engine`);
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
      `network:Network:${NET}`,
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
        assert.equal(env.get('GANYMEDE_URL'), `https://${ganymedeFqdn(DOMAIN)}`);
        assert.deepEqual((c.HostConfig as unknown as { ExtraHosts: string[] }).ExtraHosts, [`${ganymedeFqdn(DOMAIN)}:${h.hostAddr}`]);
        assert.deepEqual(c.HostConfig.PortBindings?.[`${7101 + i}/tcp`], [{ HostIp: h.nsAddr, HostPort: String(7101 + i) }]);
        // Fetched from the mirror on its own host (the only build server it can reach).
        const r = await api.exec(gw, ['cat', '/run/gateway/app.build'], 5000);
        assert.equal(r.stdout.trim(), build);
      }
    } finally {
      api.close();
    }
    // Stage 1's route: the host address and published port answer from the main host; the mirror does not.
    const stage2 = await run('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '5', `http://${h.nsAddr}:7101/_gateway/nginx-health`]);
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
      const rows = [[MAIN_GATEWAYS[0], MAIN_GATEWAYS[0], 7100], [HOST2_GATEWAYS[0], h.nsAddr, 7101], [HOST2_GATEWAYS[1], h.nsAddr, 7102]];
      for (const [name, host, port] of rows) {
        await pool.query(`INSERT INTO "${schema}".gateways (name, host, http_port, vpn_port, state) VALUES ($1, $2, $3, $4, 'ready')`, [name, host, port, Number(port) + 42000]);
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
      const inventory = HOST2_GATEWAYS.map((name, i) => ({ name, host: h.nsAddr, httpPort: 7101 + i, vpnPort: 49101 + i }));
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
});
