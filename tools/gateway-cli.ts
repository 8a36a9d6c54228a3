#!/usr/bin/env node
/**
 * demiurge-gateway: the daily build loop for gateway pools.
 *   pack    validate + pack a workspace build into gateway-<env>.tar.gz (a directory or the builds volume)
 *   reload  hot-reload every running gateway of an environment and report the build each now runs
 * Run from a checkout: node -r ts-node/register/transpile-only tools/gateway-cli.ts <command> ...
 */
import * as path from 'path';
import { formatBundleReport } from './lib/bundle-check';
import { DockerApi, DockerApiError } from './lib/docker-api';
import { HostsError, TargetHost, resolveHosts } from './lib/hosts';
import { EXIT_FAILED, EXIT_USAGE, PackError, VolumeWriteMode, pack } from './lib/pack';
import { ReloadError, reloadGateways } from './lib/reload';

const HELP = `Usage: demiurge-gateway <command> [options]

Commands:
  pack    --env <env> --workspace <dir> (--out <dir> | --volume <docker volume>)
          [--app-dir <dir>] [--volume-mode auto|direct|helper] [--helper-image <image>]
          [--host <docker host>]... [--stack <stack name | Pulumi.<stack>.yaml>] [--json]
      Rejects <workspace>/dist/packages/app-gateway/main.js if it requires react/react-dom
      (file and line numbers are printed, nothing is written), then writes gateway-<env>.tar.gz
      (app-gateway/main.js[.map], app/{bin,lib,main.sh,config.conf}, BUILD_INFO.txt) atomically.
      Gateway scripts come from --app-dir, else <workspace>/docker-images/backend-images/gateway/app,
      else this repository's images/gateway/app.
      --volume writes into the Docker volume's mountpoint when it is writable from here (the CLI runs
      on the Docker host), else through a short-lived helper container (--volume-mode to force one).
      With several hosts, the same tarball (one build id) goes into the volume of that name on each
      host (remote hosts: always through the helper container); per host: ok, or HOST_UNREACHABLE,
      VOLUME_MISSING, HELPER_IMAGE_MISSING, WRITE_FAILED, DOCKER_ERROR (--json: hosts[].code).

  reload  --env <env> [--host <docker host>]... [--stack <stack name | file>] [--timeout <seconds>] [--json]
      Runs gateway-reload in every running container labelled environment=<env> and
      demiurge.role=gateway on every host (in parallel) and prints, per host and per gateway, the
      build id each one now runs. A host that cannot be reached is reported as HOST_UNREACHABLE
      (--json: hosts[].code; DOCKER_ERROR if its engine refused) and the others still reload. If the app
      crashes during the reload, the reload waits for the supervisor's restart (3 s back-off) and
      succeeds once the new build listens; otherwise a gateway fails with a stable code (--json:
      results[].code): FETCH_FAILED, RELOAD_BUSY, APP_NOT_STARTED, APP_NOT_LISTENING,
      APP_CRASHED_DURING_RELOAD, EXEC_FAILED, NO_RESULT.

Hosts (pack --volume, reload): every --host (unix:///path, tcp://host:port, ssh://[user@]host[:port]),
  plus with --stack the stack file's hosts: demiurge:dockerHost (the main host; unset: DOCKER_HOST or
  the local socket) and every ssh:// entry of demiurge:gatewayHosts, named as there. Neither given:
  DOCKER_HOST, else unix:///var/run/docker.sock.
  ssh:// runs \`ssh -o BatchMode=yes -o ConnectTimeout=10 -T [DEMIURGE_SSH_OPTS] [-l user] [-p port]
  host docker system dial-stdio\` (the remote needs sshd and the docker client; your ~/.ssh/config
  applies). tcp:// is plain, unauthenticated HTTP: only on a network you trust.

Exit codes:
  0 success   1 failure (a host or a gateway failed)   2 usage error
  3 bundle rejected (React found)   4 no running gateway found for the environment (on any host)

Environment: DOCKER_HOST (default host), DEMIURGE_SSH_OPTS (extra ssh options, whitespace-separated,
  e.g. "-i /root/.ssh/deploy -o UserKnownHostsFile=/root/.ssh/known_hosts_demiurge")
`;

type Flags = Record<string, string | string[] | true>;

class UsageError extends Error {}

function parseArgs(argv: string[], known: Record<string, 'value' | 'bool' | 'multi'>): Flags {
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
      if (kind === 'multi') {
        const prev = flags[key];
        flags[key] = [...(Array.isArray(prev) ? prev : []), value];
      } else {
        flags[key] = value;
      }
    }
  }
  return flags;
}

function str(flags: Flags, key: string): string | undefined {
  const v = flags[key];
  return typeof v === 'string' ? v : undefined;
}

function list(flags: Flags, key: string): string[] {
  const v = flags[key];
  return Array.isArray(v) ? v : [];
}

/** The Docker hosts of --host / --stack (usage errors for bad URLs or an unreadable stack file). */
function targetHosts(flags: Flags): TargetHost[] {
  try {
    return resolveHosts({ hosts: list(flags, 'host'), stack: str(flags, 'stack') });
  } catch (err) {
    if (err instanceof HostsError) throw new UsageError(err.message);
    throw err;
  }
}

function connect(hosts: TargetHost[]): { name: string; docker: DockerApi }[] {
  return hosts.map((h) => ({ name: h.name, docker: new DockerApi(h.url) }));
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
    'volume-mode': 'value', 'helper-image': 'value', host: 'multi', stack: 'value', json: 'bool', help: 'bool',
  });
  if (flags.help) { process.stdout.write(HELP); return 0; }
  if (str(flags, 'out') && (list(flags, 'host').length > 0 || str(flags, 'stack'))) throw new UsageError('--host and --stack go with --volume, not --out');
  const hosts = str(flags, 'volume') ? connect(targetHosts(flags)) : undefined;
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
      hosts,
      log,
    });
    if (json) {
      process.stdout.write(`${JSON.stringify(r)}\n`);
    } else {
      log(`${r.ok ? '✅' : '❌'} Build packed: ${r.tarball} (${fmtBytes(r.bytes)}) build ${r.buildId}${r.gitCommit ? ` commit ${r.gitCommit.slice(0, 12)}` : ''}`);
      if (!r.hosts) log(`   written to ${r.destination} (${r.via}) in ${r.ms} ms`);
      for (const h of r.hosts ?? []) {
        const label = h.host === h.url ? h.url : `${h.host} (${h.url})`;
        if (h.ok) log(`   ✅ ${label}: written to ${h.destination} (${h.via}) in ${h.ms} ms`);
        else log(`   ❌ ${label}: ${h.code}: ${h.message}`);
      }
      log(`   scripts from ${r.appDir}`);
      for (const [f, size] of Object.entries(r.files)) log(`   - ${f} (${fmtBytes(size)})`);
      if (r.hosts && r.hosts.length > 1) log(`${r.ok ? 'written' : 'pack FAILED on some hosts'}: ${r.hosts.filter((h) => h.ok).length}/${r.hosts.length} hosts in ${r.ms} ms`);
    }
    return r.ok ? 0 : EXIT_FAILED;
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
  } finally {
    for (const h of hosts ?? []) h.docker.close();
  }
}

async function cmdReload(argv: string[]): Promise<number> {
  const flags = parseArgs(argv, { env: 'value', timeout: 'value', host: 'multi', stack: 'value', json: 'bool', help: 'bool' });
  if (flags.help) { process.stdout.write(HELP); return 0; }
  const env = required(flags, 'env');
  const timeoutS = Number(str(flags, 'timeout') ?? '90');
  if (!Number.isFinite(timeoutS) || timeoutS <= 0) throw new UsageError('--timeout must be a positive number of seconds');
  const hosts = connect(targetHosts(flags));
  try {
    const summary = await reloadGateways(env, { hosts, timeoutMs: timeoutS * 1000 });
    if (flags.json) {
      process.stdout.write(`${JSON.stringify(summary)}\n`);
    } else {
      const out = (line: string): boolean => process.stdout.write(`${line}\n`);
      const multi = summary.hosts.length > 1;
      for (const h of summary.hosts) {
        const pad = multi ? '   ' : '';
        if (multi || !h.ok) {
          const label = h.host === h.url ? h.url : `${h.host} (${h.url})`;
          if (h.ok) out(`${h.gateways > 0 ? '✅' : '⚠️ '} host ${label}: ${h.gateways} gateway(s)`);
          else out(`❌ host ${label}: ${h.code}: ${h.message}`);
        }
        for (const r of summary.results.filter((x) => x.host === h.host)) {
          if (r.ok) out(`${pad}✅ ${r.container}: build ${r.buildId} (pid ${r.pid ?? '?'}) in ${r.ms} ms`);
          else out(`${pad}❌ ${r.container}: ${r.code ?? 'FAILED'}: ${r.message} after ${r.ms} ms${r.output ? `\n${r.output.replace(/^/gm, `${pad}     | `)}` : ''}`);
        }
      }
      const ids = new Set(summary.results.filter((r) => r.ok).map((r) => r.buildId));
      if (ids.size > 1) out(`⚠️  gateways run different builds: ${[...ids].join(', ')}`);
      const failedHosts = summary.hosts.filter((h) => !h.ok).length;
      const hostPart = multi || failedHosts > 0 ? ` on ${summary.hosts.length - failedHosts}/${summary.hosts.length} hosts` : '';
      out(`${summary.ok ? 'reloaded' : `reload FAILED on some ${failedHosts > 0 ? 'hosts or ' : ''}gateways`}: ${summary.results.filter((r) => r.ok).length}/${summary.results.length}${hostPart} in ${summary.ms} ms`);
    }
    return summary.ok ? 0 : EXIT_FAILED;
  } catch (err) {
    if (err instanceof ReloadError) {
      process.stderr.write(`demiurge-gateway reload: ${err.message}\n`);
      return err.exitCode;
    }
    throw err;
  } finally {
    for (const h of hosts) h.docker.close();
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
