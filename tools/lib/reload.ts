/**
 * `reload`: hot-reloads every running gateway of an environment. Finds the containers labelled
 * environment=<env> and demiurge.role=gateway through the Docker Engine API, runs the image's
 * gateway-reload in all of them in parallel, then reads back the build id each app now runs.
 */
import { ENVIRONMENT_LABEL, ROLE_LABEL, isValidEnvName } from '../../runtime/naming';
import { ContainerSummary, DockerApi, containerName } from './docker-api';

export const RELOAD_COMMAND = ['/usr/local/bin/gateway-reload'];
/** Written by the image's supervisor when it starts the app. */
export const RUNNING_BUILD_FILE = '/run/gateway/app.build';
export const RUNNING_PID_FILE = '/run/gateway/app.pid';

export interface GatewayReloadResult {
  container: string;
  ok: boolean;
  /** Build id the app runs after the reload (read back from the container), if known. */
  buildId?: string;
  pid?: number;
  /** Wall time of the reload as seen by the CLI. */
  ms: number;
  message: string;
  /** Output of the reload script when it failed. */
  output?: string;
}

export interface ReloadSummary {
  env: string;
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
    return {
      ok: parsed.ok,
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

async function reloadOne(docker: DockerApi, c: ContainerSummary, timeoutMs: number): Promise<GatewayReloadResult> {
  const name = containerName(c);
  const t0 = Date.now();
  try {
    const exec = await docker.exec(c.Id, RELOAD_COMMAND, timeoutMs);
    const ms = Date.now() - t0;
    const parsed = parseReloadOutput(exec.stdout);
    const output = (exec.stdout + exec.stderr).trim();
    if (exec.exitCode !== 0 || !parsed || !parsed.ok) {
      return { container: name, ok: false, buildId: parsed?.buildId || undefined, ms, message: parsed?.message || `gateway-reload exited ${exec.exitCode}`, output };
    }
    // Read back what the app now runs (the supervisor records it when it starts the app).
    const back = await docker.exec(c.Id, ['cat', RUNNING_BUILD_FILE, RUNNING_PID_FILE], 15_000);
    const [buildId, pidText] = back.stdout.split('\n').map((s) => s.trim());
    const pid = Number(pidText);
    if (back.exitCode !== 0 || !buildId) {
      return { container: name, ok: false, ms, message: `reloaded, but the running build could not be read back: ${back.stderr.trim()}` };
    }
    return { container: name, ok: true, buildId, pid: Number.isInteger(pid) ? pid : undefined, ms, message: parsed.message };
  } catch (err) {
    return { container: name, ok: false, ms: Date.now() - t0, message: (err as Error).message };
  }
}

export async function reloadGateways(env: string, opts: { docker?: DockerApi; timeoutMs?: number } = {}): Promise<ReloadSummary> {
  if (!isValidEnvName(env)) throw new ReloadError(`invalid environment name: ${JSON.stringify(env)}`, 2);
  const docker = opts.docker ?? new DockerApi();
  const t0 = Date.now();
  const gateways = await findGateways(docker, env);
  if (gateways.length === 0) {
    throw new ReloadError(`no running containers labelled ${ENVIRONMENT_LABEL}=${env}, ${ROLE_LABEL}=gateway`, 4);
  }
  const results = await Promise.all(gateways.map((g) => reloadOne(docker, g, opts.timeoutMs ?? 90_000)));
  return { env, results, ok: results.every((r) => r.ok), ms: Date.now() - t0 };
}
