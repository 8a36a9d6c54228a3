/**
 * `reload`: hot-reloads every running gateway of an environment on every Docker host given. On
 * each host (in parallel) finds the containers labelled environment=<env> and
 * demiurge.role=gateway through the Docker Engine API, runs the image's gateway-reload in all of
 * them in parallel and reports, per host, whether it was reached, and per gateway the build id
 * and pid of the app now serving, or a stable failure code (contract: docs/CONTRACTS.md,
 * "Gateway reload"). A host that cannot be reached fails on its own; the others still reload.
 *
 * How gateway-reload is run: an image labelled demiurge.reload-signal=SIGUSR1 (RELOAD_SIGNAL_LABEL)
 * gets that signal and its entrypoint runs the script; the CLI follows the container's log from
 * just before the signal and takes the first reload that begins after it (ReloadLogFrame). Any
 * other image gets a `docker exec`, whose cost (runc entering the container: ≈40 ms of CPU under
 * load, and the slowest of ten execs starting 0.25-0.4 s late; docs/bench.md, row 2) the signal
 * avoids. Both give the same result, with the same codes.
 */
import { ENVIRONMENT_LABEL, RELOAD_SIGNAL, RELOAD_SIGNAL_LABEL, ROLE_LABEL, isValidEnvName } from '../../runtime/naming';
import { ContainerSummary, DockerApi, DockerApiError, DockerErrorCode, ExecResult, containerName } from './docker-api';

export const RELOAD_COMMAND = ['/usr/local/bin/gateway-reload'];

/** Failure codes gateway-reload reports on its RELOAD_RESULT line (exit 1). */
export const SCRIPT_FAILURE_CODES = ['RELOAD_BUSY', 'FETCH_FAILED', 'APP_NOT_STARTED', 'APP_NOT_LISTENING', 'APP_CRASHED_DURING_RELOAD', 'HANDOFF_FAILED', 'SWITCH_FAILED'] as const;
/**
 * Per-gateway failure code: one of the script's, or
 *   EXEC_FAILED  the Docker exec or signal itself failed, or no result came in time (the script's
 *                outcome is unknown)
 *   NO_RESULT    the script ended without a RELOAD_RESULT line (e.g. an image older than this CLI)
 */
export type ReloadFailureCode = (typeof SCRIPT_FAILURE_CODES)[number] | 'EXEC_FAILED' | 'NO_RESULT';

export interface GatewayReloadResult {
  container: string;
  /** Name of the Docker host it runs on (HostReloadResult.host). */
  host: string;
  ok: boolean;
  /** Why it failed (absent when ok). */
  code?: ReloadFailureCode;
  /** Build id the new app was started from (recorded by the supervisor), if known. */
  buildId?: string;
  pid?: number;
  /** Wall time of the reload as seen by the CLI. */
  ms: number;
  message: string;
  /** Output of the reload script when it failed. */
  output?: string;
}

/** Per Docker host: reached (and how many gateways it has) or a host-level failure code. */
export interface HostReloadResult {
  /** Host name (the stack's, or the URL for a --host flag). */
  host: string;
  url: string;
  ok: boolean;
  /** HOST_UNREACHABLE (no connection to its engine) or DOCKER_ERROR (the engine refused the listing). */
  code?: Exclude<DockerErrorCode, 'INVALID_HOST'>;
  message?: string;
  /** Running gateways of the environment found there. */
  gateways: number;
  ms: number;
}

export interface ReloadSummary {
  env: string;
  hosts: HostReloadResult[];
  /** Every gateway of every reachable host, ordered by host then name. */
  results: GatewayReloadResult[];
  ok: boolean;
  ms: number;
}

export class ReloadError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
    this.name = 'ReloadError';
  }
}

interface ScriptResult {
  ok: boolean;
  code: ReloadFailureCode | null;
  buildId: string;
  pid: number | null;
  ms: number;
  message: string;
}

export function parseReloadOutput(stdout: string): ScriptResult | undefined {
  const line = stdout.split('\n').reverse().find((l) => l.startsWith('RELOAD_RESULT '));
  if (!line) return undefined;
  try {
    const parsed = JSON.parse(line.slice('RELOAD_RESULT '.length)) as Partial<ScriptResult>;
    if (typeof parsed.ok !== 'boolean') return undefined;
    const code = (SCRIPT_FAILURE_CODES as readonly unknown[]).includes(parsed.code) ? (parsed.code as ReloadFailureCode) : null;
    return {
      ok: parsed.ok,
      code,
      buildId: String(parsed.buildId ?? ''),
      pid: typeof parsed.pid === 'number' ? parsed.pid : null,
      ms: Number(parsed.ms ?? 0),
      message: String(parsed.message ?? ''),
    };
  } catch {
    return undefined;
  }
}

export async function findGateways(docker: DockerApi, env: string): Promise<ContainerSummary[]> {
  const found = await docker.listContainers({
    label: [`${ENVIRONMENT_LABEL}=${env}`, `${ROLE_LABEL}=gateway`],
    status: ['running'],
  });
  return found.sort((a, b) => containerName(a).localeCompare(containerName(b), 'en', { numeric: true }));
}

/** One gateway-reload as the CLI reads it, plus the script's whole output (its own log, with times). */
export type ContainerReloadResult = Omit<GatewayReloadResult, 'host'> & { stdout: string };

/** A container to reload: id (or name), the name results report, and its labels (how to trigger). */
export interface ReloadTarget {
  id: string;
  name: string;
  labels?: Readonly<Record<string, string>>;
}

export function reloadTarget(c: ContainerSummary): ReloadTarget {
  return { id: c.Id, name: containerName(c), labels: c.Labels };
}

/**
 * gateway-reload in one container through the Docker Engine API (by signal when its image says it
 * traps one, else by exec), its RELOAD_RESULT line read into a result with a stable code. The
 * bench's reload row runs exactly this, so it measures what `demiurge-gateway reload` does.
 */
export async function reloadContainer(docker: DockerApi, c: ReloadTarget, timeoutMs: number): Promise<ContainerReloadResult> {
  const t0 = Date.now();
  let exec: ExecResult;
  try {
    exec = c.labels?.[RELOAD_SIGNAL_LABEL] === RELOAD_SIGNAL ? await signalledReload(docker, c.id, timeoutMs) : await docker.exec(c.id, RELOAD_COMMAND, timeoutMs);
  } catch (err) {
    return { container: c.name, ok: false, code: 'EXEC_FAILED', ms: Date.now() - t0, message: (err as Error).message, stdout: '' };
  }
  return { ...readReload(c.name, exec, Date.now() - t0), stdout: exec.stdout };
}

/**
 * One signalled reload in a container's log, as gateway-entrypoint frames it: `RELOAD_BEGIN <n>`,
 * the script's output (with whatever else the container logs meanwhile), `RELOAD_END <n> <exit
 * code>`. Fed the log from before the signal on, it takes the first reload that begins there: a
 * reload already running when the log was opened shows no beginning and is skipped; one that began
 * after (for this signal, or for another caller's: it fetched after this call began, so the newest
 * build) is this call's.
 */
export class ReloadLogFrame {
  private seq: string | undefined;
  private readonly lines: string[] = [];
  private ended: ExecResult | undefined;

  /** Whether the reload began (a missing beginning: the entrypoint does not trap the signal). */
  get begun(): boolean {
    return this.seq !== undefined;
  }

  /** The reload's output and exit code once it ended. */
  get result(): ExecResult | undefined {
    return this.ended;
  }

  /** Takes one log line; true once the reload ended. */
  push(line: string): boolean {
    if (this.ended) return true;
    if (this.seq === undefined) {
      this.seq = /^RELOAD_BEGIN (\d+)$/.exec(line)?.[1];
      return false;
    }
    const end = /^RELOAD_END (\d+) (\d+)$/.exec(line);
    if (end && end[1] === this.seq) {
      this.ended = { exitCode: Number(end[2]), stdout: this.lines.map((l) => `${l}\n`).join(''), stderr: '' };
      return true;
    }
    this.lines.push(line);
    return false;
  }
}

/** gateway-reload run by the container's entrypoint on RELOAD_SIGNAL, its output read from the log. */
async function signalledReload(docker: DockerApi, id: string, timeoutMs: number): Promise<ExecResult> {
  const frame = new ReloadLogFrame();
  let ended: () => void = () => undefined;
  const reloaded = new Promise<void>((resolve) => (ended = resolve));
  let follower: Awaited<ReturnType<DockerApi['followLogs']>>;
  try {
    follower = await docker.followLogs(id, (line) => { if (frame.push(line)) ended(); });
  } catch (err) {
    // A logging driver that cannot be read back (`none`, syslog, ...): the exec still works.
    if (err instanceof DockerApiError && err.code === 'DOCKER_ERROR') return docker.exec(id, RELOAD_COMMAND, timeoutMs);
    throw err;
  }
  let timer: NodeJS.Timeout | undefined;
  try {
    await docker.kill(id, RELOAD_SIGNAL);
    const timedOut = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), timeoutMs)));
    const how = await Promise.race([reloaded.then(() => 'ended' as const), follower.ended.then(() => 'log-closed' as const), timedOut]);
    if (frame.result) return frame.result;
    const what = frame.begun ? 'the reload began but did not end' : 'no reload began';
    throw new Error(how === 'timeout'
      ? `${RELOAD_SIGNAL} sent to ${id}: ${what} in its log within ${timeoutMs / 1000} s`
      : `${RELOAD_SIGNAL} sent to ${id}: its log ended (the container stopped?) and ${what}`);
  } finally {
    clearTimeout(timer);
    follower.close();
  }
}

/** What a finished gateway-reload says: its RELOAD_RESULT line, checked against its exit code. */
function readReload(name: string, exec: ExecResult, ms: number): Omit<GatewayReloadResult, 'host'> {
  const parsed = parseReloadOutput(exec.stdout);
  const output = (exec.stdout + exec.stderr).trim();
  if (!parsed) {
    return { container: name, ok: false, code: 'NO_RESULT', ms, message: `gateway-reload exited ${exec.exitCode} without a RELOAD_RESULT line`, output };
  }
  if (exec.exitCode !== 0 || !parsed.ok) {
    // A script that exits non-zero with ok:true (or without a code) is a failure nonetheless.
    return { container: name, ok: false, code: parsed.code ?? 'NO_RESULT', buildId: parsed.buildId || undefined, ms, message: parsed.message || `gateway-reload exited ${exec.exitCode}`, output };
  }
  // The script reports the pid it saw listening and the build the supervisor recorded for it; the
  // app may crash again right after (the supervisor restarts it), which does not undo the reload.
  return { container: name, ok: true, buildId: parsed.buildId || undefined, pid: parsed.pid ?? undefined, ms, message: parsed.message };
}

async function reloadOne(host: string, docker: DockerApi, c: ContainerSummary, timeoutMs: number): Promise<GatewayReloadResult> {
  // The CLI reports the script's output only for a failure (`output`).
  const { stdout: _log, ...result } = await reloadContainer(docker, reloadTarget(c), timeoutMs);
  return { host, ...result };
}

/** fn over items, at most `limit` at once, results in the items' order. */
async function mapLimited<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/** A Docker host to reload on: its report name and its API client. */
export interface ReloadHost {
  name: string;
  docker: DockerApi;
}

async function reloadHost(env: string, h: ReloadHost, timeoutMs: number): Promise<{ host: HostReloadResult; results: GatewayReloadResult[] }> {
  const t0 = Date.now();
  const url = h.docker.url ?? h.name;
  let gateways: ContainerSummary[];
  try {
    gateways = await findGateways(h.docker, env);
  } catch (err) {
    const code = err instanceof DockerApiError && err.code === 'HOST_UNREACHABLE' ? 'HOST_UNREACHABLE' : 'DOCKER_ERROR';
    return { host: { host: h.name, url, ok: false, code, message: (err as Error).message, gateways: 0, ms: Date.now() - t0 }, results: [] };
  }
  // A signalled reload holds a connection (its followed log) until it ended, and its signal needs
  // another: at most all but one of the host's connections at once, or the signals would queue
  // behind the logs they end (8 over ssh; 32 for a socket or TCP).
  const results = await mapLimited(gateways, Math.max(1, (h.docker.maxConnections ?? 32) - 1), (g) => reloadOne(h.name, h.docker, g, timeoutMs));
  return { host: { host: h.name, url, ok: true, gateways: gateways.length, ms: Date.now() - t0 }, results };
}

/**
 * Reloads on every host in parallel. Throws ReloadError (exit 4) only when every host was reached
 * and none has a running gateway of the environment; otherwise `ok` is false if any host or any
 * gateway failed.
 */
export async function reloadGateways(
  env: string,
  opts: { docker?: DockerApi; hosts?: readonly ReloadHost[]; timeoutMs?: number } = {},
): Promise<ReloadSummary> {
  if (!isValidEnvName(env)) throw new ReloadError(`invalid environment name: ${JSON.stringify(env)}`, 2);
  const hosts: readonly ReloadHost[] = opts.hosts ?? [{ name: 'default', docker: opts.docker ?? new DockerApi() }];
  const t0 = Date.now();
  const perHost = await Promise.all(hosts.map((h) => reloadHost(env, h, opts.timeoutMs ?? 90_000)));
  const hostResults = perHost.map((p) => p.host);
  const results = perHost.flatMap((p) => p.results);
  if (results.length === 0 && hostResults.every((h) => h.ok)) {
    const where = hosts.length === 1 ? '' : ` on any of ${hosts.length} hosts (${hosts.map((h) => h.name).join(', ')})`;
    throw new ReloadError(`no running containers labelled ${ENVIRONMENT_LABEL}=${env}, ${ROLE_LABEL}=gateway${where}`, 4);
  }
  return { env, hosts: hostResults, results, ok: hostResults.every((h) => h.ok) && results.every((r) => r.ok), ms: Date.now() - t0 };
}
