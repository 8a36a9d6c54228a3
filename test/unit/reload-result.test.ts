/**
 * tools/lib/reload.ts: how a gateway-reload outcome becomes a per-gateway result with a stable code
 * (contract: docs/CONTRACTS.md, "Gateway reload"). The engine is a fake; the script's behaviour itself
 * is covered by test/e2e/images.test.ts.
 */
import { strict as assert } from 'assert';
import type { ContainerSummary, DockerApi, ExecResult } from '../../tools/lib/docker-api';
import { ReloadError, parseReloadOutput, reloadGateways } from '../../tools/lib/reload';

const container = (name: string): ContainerSummary => ({ Id: `id-${name}`, Names: [`/${name}`], Image: 'img', State: 'running', Status: 'Up', Labels: {} });

/** A fake engine whose exec answers per container id (or throws). */
function fakeDocker(answers: Record<string, ExecResult | Error>): DockerApi {
  const fake = {
    listContainers: async (): Promise<ContainerSummary[]> => Object.keys(answers).map((n) => container(n)),
    exec: async (id: string): Promise<ExecResult> => {
      const a = answers[id.replace(/^id-/, '')];
      if (a instanceof Error) throw a;
      return a;
    },
  };
  return fake as unknown as DockerApi;
}

const line = (o: Record<string, unknown>): string => `some log\nRELOAD_RESULT ${JSON.stringify(o)}\n`;

describe('reload results (tools/lib/reload.ts)', () => {
  it('parses the last RELOAD_RESULT line, keeping only known failure codes', () => {
    const out = `${line({ ok: false, code: 'FETCH_FAILED', buildId: '', pid: null, ms: 3, message: 'x' })}${line({ ok: true, code: null, buildId: 'b1', pid: 42, ms: 9, message: 'reloaded' })}`;
    assert.deepEqual(parseReloadOutput(out), { ok: true, code: null, buildId: 'b1', pid: 42, ms: 9, message: 'reloaded' });
    assert.equal(parseReloadOutput(line({ ok: false, code: 'SOMETHING_ELSE' }))?.code, null);
    assert.equal(parseReloadOutput(line({ ok: false, code: 'APP_CRASHED_DURING_RELOAD' }))?.code, 'APP_CRASHED_DURING_RELOAD');
    assert.equal(parseReloadOutput('no result here\n'), undefined);
    assert.equal(parseReloadOutput('RELOAD_RESULT {not json\n'), undefined);
  });

  it('reports a code per gateway: the script\'s, EXEC_FAILED or NO_RESULT; ok only with exit 0 and ok:true', async () => {
    const docker = fakeDocker({
      'gw-0': { exitCode: 0, stdout: line({ ok: true, code: null, buildId: 'b2', pid: 7, ms: 300, message: 'reloaded' }), stderr: '' },
      'gw-1': { exitCode: 1, stdout: line({ ok: false, code: 'APP_CRASHED_DURING_RELOAD', buildId: 'b2', pid: null, ms: 4000, message: 'the new app exited 2 times' }), stderr: '' },
      'gw-2': new Error('exec timed out after 90000 ms'),
      'gw-3': { exitCode: 126, stdout: '', stderr: 'OCI runtime exec failed' },
      'gw-4': { exitCode: 1, stdout: line({ ok: true, code: null, buildId: 'b2', pid: 9, ms: 1, message: 'reloaded' }), stderr: '' },
    });
    const s = await reloadGateways('dev-001', { docker });
    assert.equal(s.ok, false);
    const by = Object.fromEntries(s.results.map((r) => [r.container, r]));
    assert.deepEqual([by['gw-0'].ok, by['gw-0'].code, by['gw-0'].buildId, by['gw-0'].pid], [true, undefined, 'b2', 7]);
    assert.deepEqual([by['gw-1'].ok, by['gw-1'].code, by['gw-1'].message], [false, 'APP_CRASHED_DURING_RELOAD', 'the new app exited 2 times']);
    assert.deepEqual([by['gw-2'].ok, by['gw-2'].code], [false, 'EXEC_FAILED']);
    assert.match(by['gw-2'].message, /timed out/);
    assert.deepEqual([by['gw-3'].ok, by['gw-3'].code], [false, 'NO_RESULT']);
    assert.match(by['gw-3'].output ?? '', /OCI runtime exec failed/);
    assert.deepEqual([by['gw-4'].ok, by['gw-4'].code], [false, 'NO_RESULT'], 'a non-zero exit is a failure even with ok:true');
  });

  it('all gateways ok -> ok; an invalid env or no gateway is a ReloadError before any exec', async () => {
    const ok = { exitCode: 0, stdout: line({ ok: true, code: null, buildId: 'b', pid: 1, ms: 1, message: 'reloaded' }), stderr: '' };
    assert.equal((await reloadGateways('dev-001', { docker: fakeDocker({ 'gw-0': ok, 'gw-1': ok }) })).ok, true);
    await assert.rejects(reloadGateways('Not Valid', { docker: fakeDocker({}) }), (e: unknown) => e instanceof ReloadError && e.exitCode === 2);
    await assert.rejects(reloadGateways('dev-001', { docker: fakeDocker({}) }), (e: unknown) => e instanceof ReloadError && e.exitCode === 4);
  });
});
