/**
 * The signalled reload (tools/lib/reload.ts, tools/lib/docker-stream.ts): a gateway whose image is
 * labelled demiurge.reload-signal=SIGUSR1 gets the signal and its result is read from its followed
 * log, framed by the entrypoint (RELOAD_BEGIN / RELOAD_END); any other gets an exec. The engine is a
 * fake; the real entrypoint and engine are covered by test/e2e/images.test.ts (tests 2 and 2b).
 */
import { strict as assert } from 'assert';
import { ContainerSummary, DockerApiError, DockerApi, ExecResult, LogFollower } from '../../tools/lib/docker-api';
import { DockerLineDecoder } from '../../tools/lib/docker-stream';
import { ReloadLogFrame, reloadContainer, reloadGateways } from '../../tools/lib/reload';
import { RELOAD_SIGNAL, RELOAD_SIGNAL_LABEL } from '../../runtime/naming';

const frame = (type: 1 | 2, text: string): Buffer => {
  const payload = Buffer.from(text, 'utf8');
  const header = Buffer.alloc(8);
  header[0] = type;
  header.writeUInt32BE(payload.length, 4);
  return Buffer.concat([header, payload]);
};

const RESULT_OK = 'RELOAD_RESULT {"ok":true,"code":null,"buildId":"b2","pid":77,"ms":900,"message":"reloaded"}';
const LABELLED = { [RELOAD_SIGNAL_LABEL]: RELOAD_SIGNAL };

interface FakeEngine {
  api: DockerApi;
  calls: string[];
}

/**
 * An engine whose followed log gets `afterSignal` once the signal was sent (in a later tick, as a
 * real log would), then stays open (or closes when `close` is set); exec answers `execAnswer`.
 */
function fakeEngine(opts: { afterSignal?: string[]; closeAfter?: boolean; followError?: Error; execAnswer?: ExecResult } = {}): FakeEngine {
  const calls: string[] = [];
  let onLine: ((l: string) => void) | undefined;
  let endLog: () => void = () => undefined;
  const api = {
    followLogs: async (id: string, cb: (l: string) => void): Promise<LogFollower> => {
      calls.push(`follow ${id}`);
      if (opts.followError) throw opts.followError;
      onLine = cb;
      const ended = new Promise<void>((resolve) => (endLog = resolve));
      return { ended, close: () => { calls.push('close'); endLog(); } };
    },
    kill: async (id: string, signal: string): Promise<void> => {
      calls.push(`kill ${id} ${signal}`);
      setImmediate(() => {
        for (const l of opts.afterSignal ?? []) onLine?.(l);
        if (opts.closeAfter) endLog();
      });
    },
    exec: async (id: string): Promise<ExecResult> => {
      calls.push(`exec ${id}`);
      return opts.execAnswer ?? { exitCode: 0, stdout: `${RESULT_OK}\n`, stderr: '' };
    },
  };
  return { api: api as unknown as DockerApi, calls };
}

describe('signalled gateway reload (tools/lib/reload.ts)', () => {
  it('decodes a multiplexed log into lines wherever its chunks are cut, stdout and stderr apart', () => {
    const stream = Buffer.concat([frame(1, 'RELOAD_BEGIN 3\nfetch'), frame(2, 'warn: '), frame(1, 'ed\n'), frame(2, 'slow\n'), frame(1, 'tail')]);
    for (let cut = 0; cut <= stream.length; cut += 1) {
      const d = new DockerLineDecoder();
      const lines = [...d.push(stream.subarray(0, cut)), ...d.push(stream.subarray(cut)), ...d.end()];
      assert.deepEqual(lines, ['RELOAD_BEGIN 3', 'fetched', 'warn: slow', 'tail'], `cut at byte ${cut}`);
    }
  });

  it('takes the first reload that begins in the log, skipping one that was running when it was opened', () => {
    const f = new ReloadLogFrame();
    const log = [
      'RELOAD_RESULT {"ok":true}', 'RELOAD_END 4 0', // the end of a reload that began earlier
      'supervisor line', 'RELOAD_BEGIN 5', 'step one', RESULT_OK, 'RELOAD_END 4 1', 'RELOAD_END 5 0', 'RELOAD_BEGIN 6',
    ];
    const done = log.map((l) => f.push(l));
    assert.deepEqual(done, [false, false, false, false, false, false, false, true, true]);
    assert.deepEqual(f.result, { exitCode: 0, stdout: `step one\n${RESULT_OK}\nRELOAD_END 4 1\n`, stderr: '' });
  });

  it('a labelled image is signalled after its log is followed, and its framed result is read', async () => {
    const e = fakeEngine({ afterSignal: ['RELOAD_BEGIN 1', '12:00:00.000Z [gateway:reload] FETCHED build_id=b2', RESULT_OK, 'RELOAD_END 1 0'] });
    const r = await reloadContainer(e.api, { id: 'gw-0', name: 'gw-0', labels: LABELLED }, 5_000);
    assert.deepEqual(e.calls, ['follow gw-0', `kill gw-0 ${RELOAD_SIGNAL}`, 'close']);
    assert.equal(r.ok, true, r.message);
    assert.equal(r.buildId, 'b2');
    assert.equal(r.pid, 77);
    assert.match(r.stdout, /FETCHED build_id=b2/);
  });

  it('the same failure codes as by exec: a non-zero end is the script\'s code; a reload killed before its result is NO_RESULT', async () => {
    const failed = 'RELOAD_RESULT {"ok":false,"code":"FETCH_FAILED","buildId":"","pid":null,"ms":5,"message":"fetch failed, app left running"}';
    const a = await reloadContainer(fakeEngine({ afterSignal: ['RELOAD_BEGIN 2', failed, 'RELOAD_END 2 1'] }).api, { id: 'g', name: 'g', labels: LABELLED }, 5_000);
    assert.equal(a.code, 'FETCH_FAILED');
    const b = await reloadContainer(fakeEngine({ afterSignal: ['RELOAD_BEGIN 2', 'half a reload', 'RELOAD_END 2 137'] }).api, { id: 'g', name: 'g', labels: LABELLED }, 5_000);
    assert.equal(b.code, 'NO_RESULT');
    assert.match(b.message, /exited 137/);
  });

  it('no reload in the log in time, or a log that ends first, is EXEC_FAILED naming what did not happen', async () => {
    const silent = await reloadContainer(fakeEngine().api, { id: 'g', name: 'g', labels: LABELLED }, 50);
    assert.equal(silent.code, 'EXEC_FAILED');
    assert.match(silent.message, /no reload began in its log within 0.05 s/);
    const stopped = await reloadContainer(fakeEngine({ afterSignal: ['RELOAD_BEGIN 1'], closeAfter: true }).api, { id: 'g', name: 'g', labels: LABELLED }, 5_000);
    assert.equal(stopped.code, 'EXEC_FAILED');
    assert.match(stopped.message, /its log ended \(the container stopped\?\) and the reload began but did not end/);
  });

  it('keeps fewer logs followed at once than the host has connections, so every signal gets through', async () => {
    let open = 0;
    let most = 0;
    const names = ['gw-0', 'gw-1', 'gw-2', 'gw-3', 'gw-4'];
    const lines = new Map<string, (l: string) => void>();
    const api = {
      maxConnections: 3,
      listContainers: async (): Promise<ContainerSummary[]> => names.map((n) => ({ Id: n, Names: [`/${n}`], Image: 'img', State: 'running', Status: 'Up', Labels: LABELLED })),
      followLogs: async (id: string, cb: (l: string) => void): Promise<LogFollower> => {
        open += 1;
        most = Math.max(most, open);
        lines.set(id, cb);
        return { ended: new Promise<void>(() => undefined), close: () => { open -= 1; } };
      },
      kill: async (id: string): Promise<void> => {
        setImmediate(() => ['RELOAD_BEGIN 1', RESULT_OK, 'RELOAD_END 1 0'].forEach((l) => lines.get(id)?.(l)));
      },
    };
    const summary = await reloadGateways('dev', { docker: api as unknown as DockerApi, timeoutMs: 5_000 });
    assert.equal(summary.ok, true, JSON.stringify(summary.results));
    assert.deepEqual(summary.results.map((r) => r.container), names);
    assert.equal(most, 2, 'at most maxConnections - 1 logs followed at once');
  });

  it('an image without the label is reloaded by exec; a log that cannot be read back falls back to exec', async () => {
    const plain = fakeEngine();
    assert.equal((await reloadContainer(plain.api, { id: 'g', name: 'g', labels: {} }, 5_000)).ok, true);
    assert.deepEqual(plain.calls, ['exec g']);
    const noLog = fakeEngine({ followError: new DockerApiError('configured logging driver does not support reading', 501, 'DOCKER_ERROR', 'unix:///x') });
    assert.equal((await reloadContainer(noLog.api, { id: 'g', name: 'g', labels: LABELLED }, 5_000)).ok, true);
    assert.deepEqual(noLog.calls, ['follow g', 'exec g']);
  });
});
