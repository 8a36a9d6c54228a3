#!/usr/bin/env node
/**
 * The operator CLI from the machine that ran `pulumi up`: runs the bundled
 * `gateway-pool` inside the environment's dev container through the Docker
 * engine, where it reads the environment's own configuration
 * (/etc/demiurge/runtime/config.json + secrets.json) and reaches PostgreSQL,
 * PowerDNS and nginx as the API server does. No Pulumi CLI, no passphrase:
 * the environment name comes from Pulumi.<stack>.yaml (`demiurge:envName`,
 * else the stack name), the Docker host from `demiurge:dockerHost` (else
 * DOCKER_HOST / the local socket).
 *
 *   npm run -s gateway-pool -- --stack dev status [--json]
 *   npm run -s gateway-pool -- --stack dev allocate <org-uuid>
 *
 * Same commands, flags, output and exit codes as gateway-pool itself (see its
 * --help); this wrapper's own failures exit 2 (usage: no stack file, bad
 * flags) or 3 (the dev container is not there or not running).
 */
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { devContainerName, isValidEnvName } from '../runtime/naming';
import { readStackYaml } from './lib/stack-yaml';

/** Where the program uploads the CLI bundle in the dev container (components/dev-container.ts DEV_RUNTIME_DIR). */
export const IN_CONTAINER_CLI = '/opt/demiurge/runtime/gateway-pool.js';
const PROJECT = 'demiurge';

export const WRAPPER_EXIT = { usage: 2, unavailable: 3 } as const;

export class WrapperError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
    this.name = 'WrapperError';
  }
}

export interface Target {
  stack: string;
  envName: string;
  container: string;
  /** From the stack file; undefined: the docker CLI's own default (DOCKER_HOST or the local socket). */
  dockerHost?: string;
  /** The arguments for gateway-pool inside the container. */
  args: string[];
}

const HELP = `usage: npm run -s gateway-pool -- [--stack <name>] [--dir <project dir>] <gateway-pool command> [args] [--json]

Runs gateway-pool (status, list, allocate, release, reconcile, reap, snapshots, restore, ...)
inside the dev container of the stack's environment, with the environment's configuration.
  --stack <name>   Pulumi stack whose Pulumi.<name>.yaml names the environment (default: dev)
  --dir <path>     directory holding Pulumi.<name>.yaml (default: the current directory)
Exit codes: those of gateway-pool (0 done, 1 refused, 2 usage, 3 service failure, 4 partial);
2 also when the stack file is missing, 3 when the dev container is not running.`;

/** Splits the wrapper's own flags (before the command) from gateway-pool's arguments. */
export function resolveTarget(argv: readonly string[], cwd: string): Target {
  let stack = 'dev';
  let dir = cwd;
  const rest = [...argv];
  while (rest.length > 0 && (rest[0] === '--stack' || rest[0] === '--dir' || rest[0].startsWith('--stack=') || rest[0].startsWith('--dir='))) {
    const flag = rest.shift() as string;
    const [name, inline] = flag.includes('=') ? [flag.slice(0, flag.indexOf('=')), flag.slice(flag.indexOf('=') + 1)] : [flag, rest.shift()];
    if (inline === undefined || inline === '') throw new WrapperError(`${name} needs a value\n${HELP}`, WRAPPER_EXIT.usage);
    if (name === '--stack') stack = inline;
    else dir = path.resolve(cwd, inline);
  }
  if (rest.length === 0) throw new WrapperError(HELP, WRAPPER_EXIT.usage);
  if (!/^[A-Za-z0-9_.-]+$/.test(stack)) throw new WrapperError(`--stack ${JSON.stringify(stack)} is not a stack name`, WRAPPER_EXIT.usage);
  const file = path.join(dir, `Pulumi.${stack}.yaml`);
  if (!fs.existsSync(file)) throw new WrapperError(`${file} does not exist (run from the project directory, or pass --dir / --stack)`, WRAPPER_EXIT.usage);
  const config = readStackYaml(file).config;
  const envName = config[`${PROJECT}:envName`] ?? stack;
  if (!isValidEnvName(envName)) throw new WrapperError(`${file}: ${PROJECT}:envName ${JSON.stringify(envName)} is not an environment name`, WRAPPER_EXIT.usage);
  const dockerHost = config[`${PROJECT}:dockerHost`];
  return { stack, envName, container: devContainerName(envName), dockerHost: dockerHost === '' ? undefined : dockerHost, args: rest };
}

/** The docker CLI's environment for the target (its Docker host, if the stack names one). */
export function dockerEnv(t: Target, env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  return t.dockerHost === undefined ? { ...env } : { ...env, DOCKER_HOST: t.dockerHost };
}

/** `docker exec` argv: -i only when stdin carries data (sync reads it), never a TTY (output stays parseable). */
export function execArgv(t: Target, stdinIsData: boolean): string[] {
  return ['exec', ...(stdinIsData ? ['-i'] : []), t.container, 'node', IN_CONTAINER_CLI, ...t.args];
}

function checkRunning(t: Target, env: NodeJS.ProcessEnv): void {
  const r = spawnSync('docker', ['inspect', '-f', '{{.State.Running}}', t.container], { env, encoding: 'utf8' });
  if (r.error) throw new WrapperError(`cannot run the docker CLI: ${r.error.message}`, WRAPPER_EXIT.unavailable);
  if (r.status !== 0) {
    throw new WrapperError(`dev container ${t.container} of stack ${t.stack} does not exist (${(r.stderr || '').trim()}); run pulumi up --stack ${t.stack}`, WRAPPER_EXIT.unavailable);
  }
  if (r.stdout.trim() !== 'true') throw new WrapperError(`dev container ${t.container} is not running (docker start ${t.container})`, WRAPPER_EXIT.unavailable);
}

export async function main(argv: readonly string[]): Promise<number> {
  let t: Target;
  try {
    if (argv[0] === '--help' || argv[0] === '-h') {
      process.stdout.write(`${HELP}\n`);
      return 0;
    }
    t = resolveTarget(argv, process.cwd());
    checkRunning(t, dockerEnv(t));
  } catch (err) {
    if (err instanceof WrapperError) {
      process.stderr.write(`gateway-pool (stack): ${err.message}\n`);
      return err.exitCode;
    }
    throw err;
  }
  const stdinIsData = t.args[0] === 'sync' && !t.args.includes('--file');
  const child = spawn('docker', execArgv(t, stdinIsData), { env: dockerEnv(t), stdio: [stdinIsData ? 'inherit' : 'ignore', 'inherit', 'inherit'] });
  return new Promise<number>((resolve) => {
    child.on('error', (err) => {
      process.stderr.write(`gateway-pool (stack): docker exec failed: ${err.message}\n`);
      resolve(WRAPPER_EXIT.unavailable);
    });
    child.on('close', (code) => resolve(code ?? WRAPPER_EXIT.unavailable));
  });
}

if (require.main === module) {
  void main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
