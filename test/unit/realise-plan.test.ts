/**
 * The stack e2e suite's realiser (test/e2e/realise) without Docker: the
 * program's dev stack must stay fully realisable, and anything outside the
 * allow-list must be reported by resource and field. This fails in the unit
 * layer, where no Docker engine is needed, as soon as a component gains an
 * input the e2e suite would not apply.
 */
import { strict as assert } from 'assert';
import * as os from 'os';
import { REPO_ROOT, e2eConfig, preview, slotPorts } from '../e2e/realise/capture';
import { CONTAINER, DOCKER_PROVIDER, IMAGE, validateInputs } from '../e2e/realise/fields';
import { Realiser, UnrealisableError, durationNs } from '../e2e/realise/realise';
import type { CapturedResource } from './helpers/pulumi-mocks';

const URN = 'urn:pulumi:dev::demiurge::demiurge:components:DevContainer$docker:index/container:Container::dev';

describe('e2e realiser: allow-list and plan (no Docker)', function () {
  this.timeout(30000);

  it('the dev stack with the e2e overrides (pool 2, test ports) is fully realisable', async () => {
    const run = await preview(e2eConfig({ envName: 'e2e-unit', domain: 'e2e-unit.test', poolSize: 2, ports: slotPorts(0) }));
    new Realiser({ cwd: REPO_ROOT, logDir: os.tmpdir() }).plan(run.resources);
    const names = run.resources.filter((r) => r.type === CONTAINER).map((r) => String(r.inputs.name));
    assert.ok(names.includes('gw-pool-e2e-unit-1') && !names.includes('gw-pool-e2e-unit-2'), names.join(', '));
  });

  it('names the resource and the field of every input it cannot realise; empty ones ask for nothing', () => {
    const problems = validateInputs(URN, CONTAINER, {
      name: 'demiurge-x-dev',
      image: 'sha256:0',
      privileged: true,
      logOpts: {},
      ports: [{ internal: 80, external: 8080, protocol: 'sctp' }],
      healthcheck: { tests: ['CMD', 'true'], startInterval: '1s' },
      volumes: [{ volumeName: 'v', containerPath: '/v', volumeOptions: { driverName: 'local' } }],
    });
    assert.deepEqual(problems, [
      `${URN}: field privileged is not realisable`,
      `${URN}: field ports[0].protocol = "sctp" is not realisable (only "tcp", "udp": port protocols)`,
      `${URN}: field healthcheck.startInterval is not realisable`,
      `${URN}: field volumes[0].volumeOptions is not realisable`,
    ]);
  });

  it('refuses what only a registry, buildx or a remote Docker host could do, before any side effect', () => {
    const base = { urn: '', custom: true, parent: '', provider: '', secretPaths: [], dependencies: [], propertyDependencies: {}, explicitDependencies: [], protect: false, retainOnDelete: false, deleteBeforeReplace: false, additionalSecretOutputs: [], replaceOnChanges: [] };
    const provider: CapturedResource = { ...base, type: DOCKER_PROVIDER, name: 'docker-gw-b', urn: 'urn:p', inputs: { host: 'ssh://deploy@203.0.113.12' } };
    const image: CapturedResource = {
      ...base,
      type: IMAGE,
      name: 'image-dev',
      urn: 'urn:i',
      provider: 'urn:p::id',
      inputs: { imageName: 'x:latest', build: { context: 'images/dev', builderVersion: 'BuilderBuildKit' }, skipPush: false },
    };
    let err: unknown;
    try {
      new Realiser({ cwd: REPO_ROOT, logDir: os.tmpdir() }).plan([provider, image]);
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof UnrealisableError);
    assert.deepEqual(err.problems, [
      'urn:p: field host = "ssh://deploy@203.0.113.12" is not realisable (only the local Docker engine is)',
      'urn:i: field build.builderVersion = "BuilderBuildKit" is not realisable (only "BuilderV1": the engine has no buildx; BuildKit builds are not realisable here)',
      'urn:i: field skipPush = false is not realisable (only true: no registry is reachable)',
    ]);
  });

  it('converts healthcheck durations the way the Engine API wants them', () => {
    assert.equal(durationNs('10s'), 10e9);
    assert.equal(durationNs('1m30s'), 90e9);
    assert.equal(durationNs('500ms'), 500e6);
    assert.throws(() => durationNs('10'), /not a Go duration/);
  });
});
