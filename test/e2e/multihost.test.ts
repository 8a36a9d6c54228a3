/**
 * `demiurge-gateway pack` and `reload` on two Docker hosts: this machine's engine (unix://) and a
 * second engine the suite builds inside this machine (test/e2e/helpers/second-host.ts: a network
 * namespace with its own dockerd on unix:// + tcp:// and an sshd, reached as ssh://root@<addr>).
 * Each host carries the environment's per-host build mirror (network, builds volume, build
 * server): one gateway on the main host, two on the second. Checked: pack writes one build to the
 * builds volume of every host; reload reaches every gateway through unix://, tcp:// and ssh:// and
 * reports per host and gateway; a cut-off host is HOST_UNREACHABLE on its own while the main
 * host's gateway still reloads (exit 1); restored, everything reloads again.
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
import { DockerApi } from '../../tools/lib/docker-api';
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

    await step('per-host build mirror (network, builds volume, build server) and gateways on both hosts', async () => {
      await Promise.all([mirror('main'), mirror('host2')]);
      await Promise.all([startGateway('main', 0), startGateway('host2', 1), startGateway('host2', 2)]);
    });
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
});
