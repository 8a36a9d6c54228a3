#!/usr/bin/env node
/**
 * demiurge-gateway: the daily build loop for gateway pools.
 *   pack    validate + pack a workspace build into gateway-<env>.tar.gz (a directory or the builds volume)
 *   reload  hot-reload every running gateway of an environment and report the build each now runs
 * Run from a checkout: node -r ts-node/register/transpile-only tools/gateway-cli.ts <command> ...
 */
import * as path from 'path';
import { formatBundleReport } from './lib/bundle-check';
import { DockerApiError } from './lib/docker-api';
import { EXIT_FAILED, EXIT_USAGE, PackError, VolumeWriteMode, pack } from './lib/pack';
import { ReloadError, reloadGateways } from './lib/reload';

const HELP = `Usage: demiurge-gateway <command> [options]

Commands:
  pack    --env <env> --workspace <dir> (--out <dir> | --volume <docker volume>)
          [--app-dir <dir>] [--volume-mode auto|direct|helper] [--helper-image <image>] [--json]
      Rejects <workspace>/dist/packages/app-gateway/main.js if it requires react/react-dom
      (file and line numbers are printed, nothing is written), then writes gateway-<env>.tar.gz
      (app-gateway/main.js[.map], app/{bin,lib,main.sh,config.conf}, BUILD_INFO.txt) atomically.
      Gateway scripts come from --app-dir, else <workspace>/docker-images/backend-images/gateway/app,
      else this repository's images/gateway/app.
      --volume writes into the Docker volume's mountpoint when it is writable from here (the CLI runs
      on the Docker host), else through a short-lived helper container (--volume-mode to force one).

  reload  --env <env> [--timeout <seconds>] [--json]
      Runs gateway-reload in every running container labelled environment=<env> and
      demiurge.role=gateway (in parallel) and prints the build id each one now runs. If the app
      crashes during the reload, the reload waits for the supervisor's restart (3 s back-off) and
      succeeds once the new build listens; otherwise a gateway fails with a stable code (--json:
      results[].code): FETCH_FAILED, RELOAD_BUSY, APP_NOT_STARTED, APP_NOT_LISTENING,
      APP_CRASHED_DURING_RELOAD, EXEC_FAILED, NO_RESULT.

Exit codes:
  0 success   1 failure (Docker error, a gateway failed to reload)   2 usage error
  3 bundle rejected (React found)   4 no running gateway found for the environment

Environment: DOCKER_HOST (unix:// only; default /var/run/docker.sock)
`;

type Flags = Record<string, string | true>;

class UsageError extends Error {}

function parseArgs(argv: string[], known: Record<string, 'value' | 'bool'>): Flags {
  const flags: Flags = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith('--')) throw new UsageError(`unexpected argument: ${arg}`);
    const [key, inline] = arg.slice(2).split(/=(.*)/s, 2);
    const kind = known[key];
    if (!kind) throw new UsageError(`unknown option --${key}`);
    if (kind === 'bool') {
      if (inline !== undefined) throw new UsageError(`--${key} takes no value`);
      flags[key] = true;
    } else {
      const value = inline ?? argv[++i];
      if (value === undefined || value === '' || (inline === undefined && value.startsWith('--'))) throw new UsageError(`--${key} needs a value`);
      flags[key] = value;
    }
  }
  return flags;
}

function str(flags: Flags, key: string): string | undefined {
  const v = flags[key];
  return typeof v === 'string' ? v : undefined;
}

function required(flags: Flags, key: string): string {
  const v = str(flags, key);
  if (!v) throw new UsageError(`--${key} is required`);
  return v;
}

function fmtBytes(n: number): string {
  return n >= 1024 * 1024 ? `${(n / 1024 / 1024).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`;
}

async function cmdPack(argv: string[]): Promise<number> {
  const flags = parseArgs(argv, {
    env: 'value', workspace: 'value', out: 'value', volume: 'value', 'app-dir': 'value',
    'volume-mode': 'value', 'helper-image': 'value', json: 'bool', help: 'bool',
  });
  if (flags.help) { process.stdout.write(HELP); return 0; }
  const mode = str(flags, 'volume-mode') ?? 'auto';
  if (!['auto', 'direct', 'helper'].includes(mode)) throw new UsageError('--volume-mode must be auto, direct or helper');
  const json = flags.json === true;
  const log = (line: string): void => { if (!json) process.stdout.write(`${line}\n`); };
  try {
    const r = await pack({
      env: required(flags, 'env'),
      workspace: required(flags, 'workspace'),
      outDir: str(flags, 'out'),
      volume: str(flags, 'volume'),
      appDir: str(flags, 'app-dir'),
      volumeMode: mode as VolumeWriteMode,
      helperImage: str(flags, 'helper-image'),
      log,
    });
    if (json) {
      process.stdout.write(`${JSON.stringify(r)}\n`);
    } else {
      log(`✅ Build packed: ${r.tarball} (${fmtBytes(r.bytes)}) build ${r.buildId}${r.gitCommit ? ` commit ${r.gitCommit.slice(0, 12)}` : ''}`);
      log(`   written to ${r.destination} (${r.via}) in ${r.ms} ms`);
      log(`   scripts from ${r.appDir}`);
      for (const [f, size] of Object.entries(r.files)) log(`   - ${f} (${fmtBytes(size)})`);
    }
    return 0;
  } catch (err) {
    if (err instanceof PackError) {
      if (err.report) {
        const ws = path.resolve(str(flags, 'workspace') ?? '.');
        process.stderr.write(`${formatBundleReport(err.report, path.relative(ws, err.report.file))}\n`);
        if (json) process.stdout.write(`${JSON.stringify({ ok: false, rejected: true, file: err.report.file, issues: err.report.issues })}\n`);
      } else {
        process.stderr.write(`demiurge-gateway pack: ${err.message}\n`);
      }
      return err.exitCode;
    }
    throw err;
  }
}

async function cmdReload(argv: string[]): Promise<number> {
  const flags = parseArgs(argv, { env: 'value', timeout: 'value', json: 'bool', help: 'bool' });
  if (flags.help) { process.stdout.write(HELP); return 0; }
  const env = required(flags, 'env');
  const timeoutS = Number(str(flags, 'timeout') ?? '90');
  if (!Number.isFinite(timeoutS) || timeoutS <= 0) throw new UsageError('--timeout must be a positive number of seconds');
  try {
    const summary = await reloadGateways(env, { timeoutMs: timeoutS * 1000 });
    if (flags.json) {
      process.stdout.write(`${JSON.stringify(summary)}\n`);
    } else {
      for (const r of summary.results) {
        if (r.ok) process.stdout.write(`✅ ${r.container}: build ${r.buildId} (pid ${r.pid ?? '?'}) in ${r.ms} ms\n`);
        else process.stdout.write(`❌ ${r.container}: ${r.code ?? 'FAILED'}: ${r.message} after ${r.ms} ms${r.output ? `\n${r.output.replace(/^/gm, '     | ')}` : ''}\n`);
      }
      const ids = new Set(summary.results.filter((r) => r.ok).map((r) => r.buildId));
      if (ids.size > 1) process.stdout.write(`⚠️  gateways run different builds: ${[...ids].join(', ')}\n`);
      process.stdout.write(`${summary.ok ? 'reloaded' : 'reload FAILED on some gateways'}: ${summary.results.filter((r) => r.ok).length}/${summary.results.length} in ${summary.ms} ms\n`);
    }
    return summary.ok ? 0 : EXIT_FAILED;
  } catch (err) {
    if (err instanceof ReloadError) {
      process.stderr.write(`demiurge-gateway reload: ${err.message}\n`);
      return err.exitCode;
    }
    throw err;
  }
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case undefined:
      case '-h':
      case '--help':
      case 'help':
        process.stdout.write(HELP);
        return cmd === undefined ? EXIT_USAGE : 0;
      case 'pack':
        return await cmdPack(rest);
      case 'reload':
        return await cmdReload(rest);
      default:
        throw new UsageError(`unknown command: ${cmd}`);
    }
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`demiurge-gateway: ${err.message}\nRun 'demiurge-gateway --help' for usage.\n`);
      return EXIT_USAGE;
    }
    if (err instanceof DockerApiError) {
      process.stderr.write(`demiurge-gateway: docker: ${err.message}\n`);
      return EXIT_FAILED;
    }
    process.stderr.write(`demiurge-gateway: ${(err as Error).stack ?? String(err)}\n`);
    return EXIT_FAILED;
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => { process.exitCode = code; },
    (err: unknown) => { process.stderr.write(`${String(err)}\n`); process.exitCode = EXIT_FAILED; },
  );
}
