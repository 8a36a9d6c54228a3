#!/usr/bin/env node
/**
 * Entry of the built-in API server, bundled by the program into
 * /opt/demiurge/runtime/api-server.js and supervised by the dev container:
 *   node api-server.js [--config FILE] [--check]
 * Exit codes: 0 stopped by SIGTERM/SIGINT (or --check passed) · 1 failed at
 * start or while running · 2 configuration error.
 */
import { parseArgs } from 'util';
import { isAllocatorError } from '../errors';
import { loadRuntimeConfig } from '../config/load';
import { DEFAULT_RUNTIME_CONFIG_PATH, RUNTIME_CONFIG_ENV } from '../config/types';
import { startApiServer, stdoutLogger, type ApiServerHandle } from './api-server';

const HELP = `usage: api-server [--config FILE] [--check]

The environment's built-in API server (default Ganymede): /gateway/* (gateway protocol),
/operator/* (Authorization: Bearer <operatorToken>), GET /healthz.

  --config FILE   runtime config file; default $${RUNTIME_CONFIG_ENV}, else ${DEFAULT_RUNTIME_CONFIG_PATH}
  --check         validate the config and its secrets file, print a summary (no secrets), exit
  -h, --help      this text

Logs one JSON line per state change on stdout. SIGTERM/SIGINT: graceful stop.
exit codes: 0 stopped (or --check passed), 1 failure, 2 configuration error`;

function fatal(err: unknown): number {
  if (isAllocatorError(err, 'INVALID_CONFIG')) {
    process.stderr.write(`api-server: INVALID_CONFIG: ${err.message}\n`);
    return 2;
  }
  const code = (err as { code?: unknown } | null)?.code;
  process.stderr.write(`api-server: ${typeof code === 'string' ? `${code}: ` : ''}${err instanceof Error ? err.message : String(err)}\n`);
  return 1;
}

async function main(argv: string[]): Promise<void> {
  let values: { config?: string; check?: boolean; help?: boolean };
  try {
    values = parseArgs({ args: argv, strict: true, allowPositionals: false, options: { config: { type: 'string' }, check: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } } }).values;
  } catch (err) {
    process.stderr.write(`api-server: ${(err as Error).message}\n${HELP}\n`);
    process.exitCode = 2;
    return;
  }
  if (values.help) {
    process.stdout.write(`${HELP}\n`);
    return;
  }
  let server: ApiServerHandle | undefined;
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    // Still starting (e.g. waiting for PostgreSQL): nothing is half-done outside PostgreSQL transactions, leave now.
    if (!server) process.exit(0);
    stdoutLogger({ event: 'server.stopping', env: server?.allocator.envName ?? '', signal });
    void (server ? server.close() : Promise.resolve()).then(
      () => {
        process.exitCode = process.exitCode ?? 0;
      },
      (err: unknown) => {
        process.exitCode = fatal(err);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('unhandledRejection', (err) => {
    process.exitCode = fatal(err);
    process.exit();
  });
  try {
    const cfg = await loadRuntimeConfig(values.config);
    if (values.check) {
      process.stdout.write(
        `${JSON.stringify({ ok: true, configFile: cfg.configFile, secretsFile: cfg.secretsFile, envName: cfg.envName, domain: cfg.domain, gateways: cfg.inventory.length, tls: cfg.tls.mode, listen: `${cfg.api.listen.host}:${cfg.api.listen.port}` })}\n`,
      );
      return;
    }
    server = await startApiServer(cfg);
    if (stopping) await server.close();
  } catch (err) {
    process.exitCode = fatal(err);
    // Pending handles (a half-open pg pool) must not keep a failed start alive: the supervisor restarts us.
    setTimeout(() => process.exit(), 100).unref();
  }
}

void main(process.argv.slice(2));
