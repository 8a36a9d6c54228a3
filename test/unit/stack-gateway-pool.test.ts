/** The laptop-side wrapper of the gateway-pool CLI (tools/stack-gateway-pool.ts): target resolution without Docker. */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { IN_CONTAINER_CLI, WRAPPER_EXIT, WrapperError, dockerEnv, execArgv, resolveTarget } from '../../tools/stack-gateway-pool';
import { DEV_RUNTIME_DIR } from '../../components/dev-container';

describe('stack gateway-pool wrapper (npm run gateway-pool -- --stack <stack> ...)', () => {
  let dir = '';
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'demiurge-wrapper-'));
    fs.writeFileSync(path.join(dir, 'Pulumi.dev.yaml'), 'config:\n  demiurge:envName: dev-001\n  demiurge:domain: demiurge.test\n');
    fs.writeFileSync(path.join(dir, 'Pulumi.staging.yaml'), "config:\n  demiurge:domain: s.test\n  demiurge:dockerHost: 'ssh://ops@203.0.113.5'\n");
    fs.writeFileSync(path.join(dir, 'Pulumi.bad.yaml'), 'config:\n  demiurge:envName: Bad_Name\n');
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  const expectWrapperError = (fn: () => unknown, exitCode: number, re: RegExp): void => {
    assert.throws(fn, (err: unknown) => err instanceof WrapperError && err.exitCode === exitCode && re.test(err.message));
  };

  it('finds the environment in Pulumi.<stack>.yaml and runs the bundled CLI in its dev container', () => {
    const t = resolveTarget(['--stack', 'dev', 'status', '--json'], dir);
    assert.deepEqual(t, { stack: 'dev', envName: 'dev-001', container: 'demiurge-dev-001-dev', dockerHost: undefined, args: ['status', '--json'] });
    assert.equal(IN_CONTAINER_CLI, `${DEV_RUNTIME_DIR}/gateway-pool.js`, 'where the program uploads it');
    assert.deepEqual(execArgv(t, false), ['exec', 'demiurge-dev-001-dev', 'node', IN_CONTAINER_CLI, 'status', '--json']);
    assert.deepEqual(execArgv({ ...t, args: ['sync'] }, true).slice(0, 3), ['exec', '-i', 'demiurge-dev-001-dev']);
    assert.equal(dockerEnv(t, { PATH: '/bin' }).DOCKER_HOST, undefined);
  });

  it('defaults: stack dev; envName defaults to the stack name; the stack\'s dockerHost becomes DOCKER_HOST', () => {
    assert.equal(resolveTarget(['list'], dir).envName, 'dev-001');
    const s = resolveTarget(['--stack=staging', 'release', '5f0c4c52-3c67-4b8e-9f6a-0a1b2c3d4e5f'], dir);
    assert.equal(s.envName, 'staging');
    assert.equal(s.container, 'demiurge-staging-dev');
    assert.equal(dockerEnv(s, {}).DOCKER_HOST, 'ssh://ops@203.0.113.5');
    assert.deepEqual(s.args, ['release', '5f0c4c52-3c67-4b8e-9f6a-0a1b2c3d4e5f']);
    // Flags after the command belong to gateway-pool.
    assert.deepEqual(resolveTarget(['--dir', dir, 'status', '--stack', 'x'], '/').args, ['status', '--stack', 'x']);
  });

  it('usage errors exit 2 and name the fix', () => {
    expectWrapperError(() => resolveTarget(['--stack', 'nope', 'status'], dir), WRAPPER_EXIT.usage, /Pulumi\.nope\.yaml does not exist/);
    expectWrapperError(() => resolveTarget(['--stack', 'dev'], dir), WRAPPER_EXIT.usage, /usage:/);
    expectWrapperError(() => resolveTarget(['--stack'], dir), WRAPPER_EXIT.usage, /--stack needs a value/);
    expectWrapperError(() => resolveTarget(['--stack', '../etc', 'status'], dir), WRAPPER_EXIT.usage, /not a stack name/);
    expectWrapperError(() => resolveTarget(['--stack', 'bad', 'status'], dir), WRAPPER_EXIT.usage, /is not an environment name/);
  });
});
