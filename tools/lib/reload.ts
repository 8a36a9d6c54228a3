/**
 * `reload`: hot-reloads every running gateway of an environment. Finds the containers labelled
 * environment=<env> and demiurge.role=gateway through the Docker Engine API, runs the image's
 * gateway-reload in all of them in parallel and reports, per gateway, the build id and pid of the
 * app now serving, or a stable failure code (contract: docs/CONTRACTS.md, "Gateway reload").
 */
import { ENVIRONMENT_LABEL, ROLE_LABEL, isValidEnvName } from '../../runtime/naming';
import { ContainerSummary, DockerApi, containerName } from './docker-api';

export const RELOAD_COMMAND = ['/usr/local/bin/gateway-reload'];

/** Failure codes gateway-reload reports on its RELOAD_RESULT line (exit 1). */
export const SCRIPT_FAILURE_CODES = ['RELOAD_BUSY', 'FETCH_FAILED', 'APP_NOT_STARTED', 'APP_NOT_LISTENING', 'APP_CRASHED_DURING_RELOAD'] as const;
/**
 * Per-gateway failure code: one of the script's, or
 *   EXEC_FAILED  the Docker exec itself failed or timed out (the script's outcome is unknown)
 *   NO_RESULT    the script ended without a RELOAD_RESULT line (e.g. an image older than this CLI)
 */
export type ReloadFailureCode = (typeof SCRIPT_FAILURE_CODES)[number] | 'EXEC_FAILED' | 'NO_RESULT';

export interface GatewayReloadResult {
  container: string;
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

async function reloadOne(docker: DockerApi, c: ContainerSummary, timeoutMs: number): Promise<GatewayReloadResult> {
  const name = containerName(c);
  const t0 = Date.now();
  let exec: Awaited<ReturnType<DockerApi['exec']>>;
  try {
    exec = await docker.exec(c.Id, RELOAD_COMMAND, timeoutMs);
  } catch (err) {
    return { container: name, ok: false, code: 'EXEC_FAILED', ms: Date.now() - t0, message: (err as Error).message };
  }
  const ms = Date.now() - t0;
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
