/**
 * The gateway CLI on several Docker hosts, without an engine: Docker host URLs, the ssh command
 * line, the stack file's hosts, per-host reload and pack results (fake engines; one unreachable
 * host fails alone). The real transports are covered by test/e2e/multihost.test.ts.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { DockerApi, DockerApiError, parseDockerHost, sshCommand } from '../../tools/lib/docker-api';
import type { ContainerSummary, ExecResult, VolumeInfo } from '../../tools/lib/docker-api';
import { HostsError, parseStackYamlConfig, resolveHosts, stackHosts } from '../../tools/lib/hosts';
import { pack } from '../../tools/lib/pack';
import { ReloadError, reloadGateways } from '../../tools/lib/reload';

const REPO = path.resolve(__dirname, '..', '..');

const unreachable = (url: string): DockerApiError => new DockerApiError(`Docker host ${url} unreachable: connect ENETUNREACH`, undefined, 'HOST_UNREACHABLE', url);

const line = (o: Record<string, unknown>): string => `RELOAD_RESULT ${JSON.stringify(o)}\n`;
const OK_EXEC: ExecResult = { exitCode: 0, stdout: line({ ok: true, code: null, buildId: 'b1', pid: 5, ms: 10, message: 'reloaded' }), stderr: '' };

/** A fake engine: its gateways (names) or a listing error; exec always succeeds. */
function fakeEngine(url: string, gateways: string[] | Error, extra: Partial<Record<keyof DockerApi, unknown>> = {}): DockerApi {
  const fake = {
    url,
    host: parseDockerHost(url),
    listContainers: async (): Promise<ContainerSummary[]> => {
      if (gateways instanceof Error) throw gateways;
      return gateways.map((n) => ({ Id: `id-${n}`, Names: [`/${n}`], Image: 'img', State: 'running', Status: 'Up', Labels: {} }));
    },
    exec: async (): Promise<ExecResult> => OK_EXEC,
    close: (): void => undefined,
    ...extra,
  };
  return fake as unknown as DockerApi;
}

describe('Docker hosts (tools/lib/docker-api.ts, tools/lib/hosts.ts)', () => {
  it('parses unix://, tcp:// and ssh:// hosts and refuses anything else with INVALID_HOST naming it', () => {
    assert.deepEqual(parseDockerHost('unix:///run/x/docker.sock'), { kind: 'unix', url: 'unix:///run/x/docker.sock', socketPath: '/run/x/docker.sock' });
    assert.deepEqual(parseDockerHost('tcp://10.213.37.2:2375'), { kind: 'tcp', url: 'tcp://10.213.37.2:2375', host: '10.213.37.2', port: 2375 });
    assert.deepEqual(parseDockerHost('ssh://deploy@203.0.113.12'), { kind: 'ssh', url: 'ssh://deploy@203.0.113.12', user: 'deploy', host: '203.0.113.12', port: undefined });
    assert.deepEqual(parseDockerHost('ssh://gw.example.com:2222'), { kind: 'ssh', url: 'ssh://gw.example.com:2222', user: undefined, host: 'gw.example.com', port: 2222 });
    for (const bad of ['tcp://host', 'tcp://host:99999', 'ssh://', 'ssh://a b', 'unix://relative.sock', 'npipe:////./pipe/docker', 'http://x:1', 'ssh://u@h:0']) {
      assert.throws(() => parseDockerHost(bad), (e: unknown) => e instanceof DockerApiError && e.code === 'INVALID_HOST' && e.message.includes(JSON.stringify(bad)), bad);
    }
  });

  it('builds the ssh command as the docker CLI does: BatchMode, DEMIURGE_SSH_OPTS, user, port, dial-stdio', () => {
    const h = parseDockerHost('ssh://root@10.213.37.2:2200');
    assert.equal(h.kind, 'ssh');
    if (h.kind !== 'ssh') return;
    assert.deepEqual(sshCommand(h, { DEMIURGE_SSH_OPTS: ' -i /k/id  -o UserKnownHostsFile=/k/known ' }, 5), [
      'ssh', '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=5', '-T', '-i', '/k/id', '-o', 'UserKnownHostsFile=/k/known',
      '-l', 'root', '-p', '2200', '--', '10.213.37.2', 'docker', 'system', 'dial-stdio',
    ]);
    const bare = parseDockerHost('ssh://gw-b');
    if (bare.kind === 'ssh') assert.deepEqual(sshCommand(bare, {}).slice(-5), ['--', 'gw-b', 'docker', 'system', 'dial-stdio']);
  });

  it('an ssh host that refuses the connection is HOST_UNREACHABLE, naming the host (real ssh client)', async function () {
    if (!fs.existsSync('/usr/bin/ssh')) this.skip();
    const api = new DockerApi('ssh://nobody@127.0.0.1:1', { connectTimeoutMs: 3000, env: { ...process.env, DEMIURGE_SSH_OPTS: '-F /dev/null' } });
    try {
      await assert.rejects(api.ping(), (e: unknown) => e instanceof DockerApiError && e.code === 'HOST_UNREACHABLE'
        && e.host === 'ssh://nobody@127.0.0.1:1' && /ssh:\/\/nobody@127\.0\.0\.1:1 unreachable: .*refused/.test(e.message));
    } finally {
      api.close();
    }
  });

  it('a unix socket that does not exist and a refused tcp port are HOST_UNREACHABLE', async () => {
    for (const url of ['unix:///nonexistent/demiurge-test.sock', 'tcp://127.0.0.1:1']) {
      const api = new DockerApi(url, { connectTimeoutMs: 2000 });
      try {
        await assert.rejects(api.ping(), (e: unknown) => e instanceof DockerApiError && e.code === 'HOST_UNREACHABLE' && e.message.includes(url), url);
      } finally {
        api.close();
      }
    }
  });

  it('reads dockerHost and gatewayHosts from a Pulumi stack file (the repository\'s Pulumi.prod.yaml)', () => {
    const file = path.join(REPO, 'Pulumi.prod.yaml');
    const cfg = parseStackYamlConfig(fs.readFileSync(file, 'utf8'));
    assert.equal(cfg['demiurge:envName'], 'prod');
    assert.deepEqual(stackHosts(cfg, file, {}), [
      { name: 'main', url: 'unix:///var/run/docker.sock' },
      { name: 'gw-b', url: 'ssh://deploy@203.0.113.12' },
    ]);
    assert.deepEqual(stackHosts({ 'demiurge:dockerHost': 'ssh://ops@198.51.100.1' }, file, {}), [{ name: 'main', url: 'ssh://ops@198.51.100.1' }]);
    assert.deepEqual(stackHosts({}, file, { DOCKER_HOST: 'tcp://10.0.0.1:2375' }), [{ name: 'main', url: 'tcp://10.0.0.1:2375' }]);
  });

  it('parses the YAML scalars Pulumi writes: quoted, plain, comments, secure maps skipped', () => {
    const cfg = parseStackYamlConfig([
      '# comment', 'encryptionsalt: v1:abc', 'config:', '  demiurge:a: plain value # note', "  demiurge:b: 'it''s [\"x\"]'",
      '  demiurge:c: "tab\\tq\\"" ', '  demiurge:secret:', '    secure: AAAB', '  demiurge:d: "7"', 'other:', '  demiurge:e: no',
    ].join('\n'));
    assert.deepEqual(cfg, { 'demiurge:a': 'plain value', 'demiurge:b': 'it\'s ["x"]', 'demiurge:c': 'tab\tq"', 'demiurge:d': '7' });
  });

  it('resolves --host flags then the stack\'s hosts, one entry per URL; bad input is a HostsError', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mh-hosts-'));
    try {
      fs.writeFileSync(path.join(dir, 'Pulumi.two.yaml'), `config:\n  demiurge:dockerHost: unix:///run/a.sock\n  demiurge:gatewayHosts: '[{"name":"m","host":"main","poolSize":1},{"name":"b","host":"ssh://root@10.0.0.2","poolSize":2}]'\n`);
      assert.deepEqual(resolveHosts({ hosts: ['tcp://10.0.0.3:2375', 'unix:///run/a.sock'], stack: 'two', cwd: dir, env: {} }), [
        { name: 'tcp://10.0.0.3:2375', url: 'tcp://10.0.0.3:2375' },
        { name: 'unix:///run/a.sock', url: 'unix:///run/a.sock' },
        { name: 'b', url: 'ssh://root@10.0.0.2' },
      ]);
      assert.deepEqual(resolveHosts({ env: {} }), [{ name: 'default', url: 'unix:///var/run/docker.sock' }]);
      assert.throws(() => resolveHosts({ stack: 'missing', cwd: dir }), (e: unknown) => e instanceof HostsError && /Pulumi\.missing\.yaml: ENOENT/.test(e.message));
      assert.throws(() => resolveHosts({ hosts: ['ssh:/x'] }), HostsError);
      fs.writeFileSync(path.join(dir, 'Pulumi.bad.yaml'), `config:\n  demiurge:gatewayHosts: '[{"host":'\n`);
      assert.throws(() => resolveHosts({ stack: 'bad', cwd: dir }), (e: unknown) => e instanceof HostsError && /demiurge:gatewayHosts is not valid JSON/.test(e.message));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('reload and pack on several hosts (fake engines)', () => {
  it('reload: an unreachable host fails alone with HOST_UNREACHABLE; the other hosts\' gateways reload', async () => {
    const s = await reloadGateways('prod', {
      hosts: [
        { name: 'main', docker: fakeEngine('unix:///var/run/docker.sock', ['gw-pool-prod-0']) },
        { name: 'gw-b', docker: fakeEngine('ssh://root@10.0.0.2', unreachable('ssh://root@10.0.0.2')) },
        { name: 'gw-c', docker: fakeEngine('tcp://10.0.0.3:2375', ['gw-pool-prod-2', 'gw-pool-prod-1']) },
      ],
    });
    assert.equal(s.ok, false);
    assert.deepEqual(s.hosts.map((h) => [h.host, h.ok, h.code, h.gateways]), [['main', true, undefined, 1], ['gw-b', false, 'HOST_UNREACHABLE', 0], ['gw-c', true, undefined, 2]]);
    assert.match(s.hosts[1].message ?? '', /ssh:\/\/root@10\.0\.0\.2 unreachable/);
    assert.deepEqual(s.results.map((r) => [r.host, r.container, r.ok, r.buildId]), [
      ['main', 'gw-pool-prod-0', true, 'b1'], ['gw-c', 'gw-pool-prod-1', true, 'b1'], ['gw-c', 'gw-pool-prod-2', true, 'b1'],
    ]);
    const other = await reloadGateways('prod', { hosts: [{ name: 'x', docker: fakeEngine('tcp://10.0.0.3:2375', new DockerApiError('HTTP 500: boom', 500, 'DOCKER_ERROR', 'tcp://10.0.0.3:2375')) }] });
    assert.deepEqual([other.ok, other.hosts[0].code], [false, 'DOCKER_ERROR']);
  });

  it('reload: all hosts reached and no gateway anywhere is exit 4; all ok is ok', async () => {
    await assert.rejects(
      reloadGateways('prod', { hosts: [{ name: 'a', docker: fakeEngine('tcp://10.0.0.1:1', []) }, { name: 'b', docker: fakeEngine('tcp://10.0.0.2:1', []) }] }),
      (e: unknown) => e instanceof ReloadError && e.exitCode === 4 && /on any of 2 hosts \(a, b\)/.test(e.message),
    );
    const s = await reloadGateways('prod', { hosts: [{ name: 'a', docker: fakeEngine('tcp://10.0.0.1:1', ['g0']) }, { name: 'b', docker: fakeEngine('tcp://10.0.0.2:1', []) }] });
    assert.deepEqual([s.ok, s.hosts.map((h) => h.gateways)], [true, [1, 0]]);
  });

  it('pack: one tarball (one build id) into every host\'s volume; an unreachable host and a missing volume fail alone', async () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mh-pack-'));
    try {
      const ws = path.join(tmp, 'ws');
      fs.mkdirSync(path.join(ws, 'dist', 'packages', 'app-gateway'), { recursive: true });
      fs.copyFileSync(path.join(REPO, 'test', 'fixtures', 'stand-in-gateway', 'main.js'), path.join(ws, 'dist', 'packages', 'app-gateway', 'main.js'));
      const uploads: { url: string; bytes: number; cmd: string[] }[] = [];
      const helperEngine = (url: string, volume: VolumeInfo | undefined): DockerApi => {
        let cmd: string[] = [];
        return fakeEngine(url, [], {
          inspectVolume: async (): Promise<VolumeInfo | undefined> => volume,
          imageExists: async (): Promise<boolean> => true,
          createContainer: async (spec: { Cmd: string[] }): Promise<string> => { cmd = spec.Cmd; return 'c1'; },
          putArchive: async (_id: string, _dir: string, tarball: Buffer): Promise<void> => { uploads.push({ url, bytes: tarball.length, cmd }); },
          startContainer: async (): Promise<void> => undefined,
          waitContainer: async (): Promise<number> => 0,
          removeContainer: async (): Promise<void> => undefined,
        });
      };
      const vol: VolumeInfo = { Name: 'demiurge-prod-builds', Driver: 'local', Mountpoint: '/nonexistent/mountpoint', Labels: null };
      const r = await pack({
        env: 'prod', workspace: ws, volume: 'demiurge-prod-builds',
        hosts: [
          { name: 'main', docker: helperEngine('unix:///var/run/docker.sock', vol) },
          { name: 'gw-b', docker: fakeEngine('ssh://root@10.0.0.2', [], { inspectVolume: async () => { throw unreachable('ssh://root@10.0.0.2'); } }) },
          { name: 'gw-c', docker: helperEngine('tcp://10.0.0.3:2375', vol) },
          { name: 'gw-d', docker: helperEngine('tcp://10.0.0.4:2375', undefined) },
        ],
      });
      assert.equal(r.ok, false);
      assert.deepEqual(r.hosts?.map((h) => [h.host, h.ok, h.code, h.via]), [
        ['main', true, undefined, 'helper-container'], ['gw-b', false, 'HOST_UNREACHABLE', undefined],
        ['gw-c', true, undefined, 'helper-container'], ['gw-d', false, 'VOLUME_MISSING', undefined],
      ]);
      assert.match(r.hosts?.[3].message ?? '', /demiurge-prod-builds does not exist on tcp:\/\/10\.0\.0\.4:2375/);
      assert.deepEqual(uploads.map((u) => u.url), ['unix:///var/run/docker.sock', 'tcp://10.0.0.3:2375']);
      assert.equal(uploads[0].bytes, uploads[1].bytes, 'the same archive goes to every host');
      assert.deepEqual(uploads[0].cmd, uploads[1].cmd);
      assert.equal(uploads[0].cmd[1], '/builds/gateway-prod.tar.gz');
      assert.equal(r.destination, 'volume:demiurge-prod-builds/gateway-prod.tar.gz');
      // A remote engine's mountpoint is never written from here, even if a path of that name exists locally.
      const direct = await pack({ env: 'prod', workspace: ws, volume: 'v', volumeMode: 'direct', hosts: [{ name: 'gw-c', docker: helperEngine('tcp://10.0.0.3:2375', { ...vol, Mountpoint: tmp }) }] });
      assert.deepEqual([direct.ok, direct.hosts?.[0].code], [false, 'WRITE_FAILED']);
      assert.ok(!fs.existsSync(path.join(tmp, 'gateway-prod.tar.gz')));
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });
});
