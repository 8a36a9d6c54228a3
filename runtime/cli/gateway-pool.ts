#!/usr/bin/env node
/**
 * gateway-pool: operators' view of and hand on the pool (the seeds'
 * gateway-pool.sh, made safe). Settings come from flags, the environment
 * (see SETTINGS) or the environment's runtime config file (--config,
 * DEMIURGE_RUNTIME_CONFIG, /etc/demiurge/runtime/config.json), in that order
 * of priority; every command takes --json. Exit codes:
 *   0 done · 1 refused (typed error, e.g. NOT_ALLOCATED, POOL_EXHAUSTED) · 2 usage or configuration error
 *   3 a service failed (DATABASE_FAILED, DNS_FAILED, NGINX_FAILED, ALLOCATION_IN_PROGRESS: retry) · 4 done with errors (reconcile, reap)
 */
import { promises as fs } from 'fs';
import { parseArgs } from 'util';
import { GatewayAllocator, GatewayListing, type GatewayAllocatorOptions } from '../allocator';
import { AllocatorError, asAllocatorError } from '../errors';
import { certificatesFromConfig } from '../config/allocator-options';
import { loadRuntimeConfig } from '../config/load';
import { DEFAULT_RUNTIME_CONFIG_PATH, RUNTIME_CONFIG_ENV, type RuntimeConfig } from '../config/types';
import { OrgDataStore } from '../org-data-store';
import { SETTINGS, Settings, allocatorOptions, cliConfigPath, resolveSettings, settingsFromConfig } from './cli-config';

export const EXIT = { ok: 0, refused: 1, usage: 2, unavailable: 3, partial: 4 } as const;

const COMMANDS: Record<string, { args: string; help: string; effects: boolean }> = {
  status: { args: '', help: 'pool size and gateways per state', effects: false },
  list: { args: '', help: 'every gateway: name, state, org, host, ports, since', effects: false },
  allocate: { args: '<org-uuid>', help: 'allocate a gateway to an organization (DNS + route live when it returns)', effects: true },
  release: { args: '<org-uuid>', help: "release an organization's gateway", effects: true },
  reconcile: { args: '', help: 'repair DNS/routes, finish interrupted operations, remove orphans (--force: also live leases)', effects: true },
  sync: { args: '[--file F]', help: 'register the inventory from `pulumi stack output --json --show-secrets` (--file, else the runtime config file, else stdin); --prune retires the rest', effects: false },
  reap: { args: '', help: "release gateways silent for --max-silence (default 10m: longer than a seed gateway's 5-minute idle stop)", effects: true },
  migrate: { args: '', help: 'create or upgrade the pool tables', effects: false },
  snapshots: { args: '<org-uuid>', help: "an organization's stored data snapshots, newest first", effects: false },
  restore: { args: '<org-uuid> <version>', help: 'make a kept snapshot current again (--force while the org holds a gateway)', effects: false },
};

class UsageError extends Error {}

interface Io {
  stdout: (s: string) => void;
  stderr: (s: string) => void;
  stdin: () => Promise<string>;
  env: NodeJS.ProcessEnv;
}

function usage(): string {
  const cmds = Object.entries(COMMANDS).map(([n, c]) => `  ${`${n} ${c.args}`.padEnd(32)} ${c.help}`);
  const sets = SETTINGS.map((s) => `  --${s.flag.padEnd(22)} ${s.env.padEnd(22)} ${s.help}`);
  return [
    'usage: gateway-pool <command> [args] [--json] [settings]',
    '',
    'commands:',
    ...cmds,
    '',
    'settings (flag, or environment variable; either wins over the runtime config file):',
    ...sets,
    '',
    `runtime config file: --config F, else $${RUNTIME_CONFIG_ENV}, else ${DEFAULT_RUNTIME_CONFIG_PATH} if it exists (written by \`pulumi up\` in the dev container)`,
    'other flags: --json  --verbose (allocator events on stderr)  --force  --prune  --file F  --max-silence 10m  --show-token',
    'exit codes: 0 done, 1 refused, 2 usage/config error, 3 service failure (retry), 4 done with errors',
  ].join('\n');
}

function parseDuration(v: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(v.trim());
  if (!m) throw new UsageError(`invalid duration ${JSON.stringify(v)} (e.g. 90s, 5m, 120000ms)`);
  const n = Number(m[1]);
  return Math.round(n * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h']);
}

function table(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('  ')).join('\n');
}

function ago(iso: string): string {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 120) return `${s}s ago`;
  if (s < 7200) return `${Math.round(s / 60)}m ago`;
  if (s < 172_800) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86_400)}d ago`;
}

function listTable(gws: GatewayListing[]): string {
  if (gws.length === 0) return '(no gateways registered)';
  return table([
    ['NAME', 'STATE', 'ORG', 'HOST', 'PORTS', 'SINCE'],
    ...gws.map((g) => [
      g.name,
      g.leaseExpired ? `${g.state}(lease expired)` : g.state,
      g.organizationId ?? '-',
      g.host,
      `${g.httpPort}/tcp ${g.vpnPort}/udp`,
      `${g.since.replace(/\.\d+Z$/, 'Z')} (${ago(g.since)})`,
    ]),
  ]);
}

/** The parts of `pulumi stack output --json --show-secrets` sync uses. */
export function parseStackOutputs(text: string): { inventory: unknown; tokens?: Record<string, string>; envName?: string; domain?: string; warnings: string[] } {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new UsageError('stack outputs are not JSON: pipe `pulumi stack output --json --show-secrets` or pass --file');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new UsageError('stack outputs must be a JSON object');
  const o = parsed as Record<string, unknown>;
  if (!('gatewayInventory' in o)) throw new UsageError('stack outputs have no gatewayInventory (is this the demiurge project, after `pulumi up`?)');
  const warnings: string[] = [];
  let tokens: Record<string, string> | undefined;
  const t = o.gatewayRegistrationTokens;
  if (t === '[secret]') warnings.push('gatewayRegistrationTokens is hidden: run pulumi with --show-secrets, or gateways cannot call /gateway/ready');
  else if (t !== undefined) {
    if (typeof t !== 'object' || t === null || Array.isArray(t) || !Object.values(t).every((v) => typeof v === 'string')) {
      throw new UsageError('gatewayRegistrationTokens must map gateway names to strings');
    }
    tokens = t as Record<string, string>;
  }
  return {
    inventory: o.gatewayInventory,
    tokens,
    envName: typeof o.envName === 'string' ? o.envName : undefined,
    domain: typeof o.domain === 'string' ? o.domain : undefined,
    warnings,
  };
}

function exitCodeOf(err: AllocatorError): number {
  if (err.code === 'INVALID_CONFIG') return EXIT.usage;
  // runtime/errors.ts holds the one set of retryable codes.
  if (err.retryable) return EXIT.unavailable;
  return EXIT.refused;
}

function parseCommandLine(argv: string[]) {
  const settingOptions = Object.fromEntries(SETTINGS.map((s) => [s.flag, { type: 'string' as const }]));
  return parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: {
      ...settingOptions,
      json: { type: 'boolean' },
      verbose: { type: 'boolean' },
      force: { type: 'boolean' },
      prune: { type: 'boolean' },
      file: { type: 'string' },
      config: { type: 'string' },
      'max-silence': { type: 'string' },
      'show-token': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
}

type CliValues = ReturnType<typeof parseCommandLine>['values'];

/** What a command runs with. */
interface CommandContext {
  a: GatewayAllocator;
  command: string;
  args: string[];
  values: CliValues;
  io: Io;
  runtimeConfig: RuntimeConfig | undefined;
  opts: GatewayAllocatorOptions;
  out: (human: string, data: unknown) => void;
}

/** The allocator for a command: settings from flags, the environment and the runtime config file, in that order. */
async function openAllocator(values: CliValues, effects: boolean, io: Io): Promise<{ allocator: GatewayAllocator; opts: GatewayAllocatorOptions; runtimeConfig: RuntimeConfig | undefined; ownedCertificates?: { close(): Promise<void> } }> {
  const flagSettings: Settings = {};
  const given = values as Record<string, string | boolean | undefined>;
  for (const s of SETTINGS) {
    const v = given[s.flag];
    if (typeof v === 'string') flagSettings[s.flag] = v;
  }
  const configPath = cliConfigPath(values.config, io.env);
  const runtimeConfig: RuntimeConfig | undefined = configPath === undefined ? undefined : await loadRuntimeConfig(configPath);
  const settings = resolveSettings(flagSettings, io.env, runtimeConfig ? settingsFromConfig(runtimeConfig) : {});
  const opts = allocatorOptions(settings, effects);
  let ownedCertificates: { close(): Promise<void> } | undefined;
  // ACME organization certificates have no flag: the config file's, unless issuance was set by flag/env.
  const ownIssuer = flagSettings['org-cert-issuer'] ?? io.env.ORG_CERT_ISSUER;
  if (runtimeConfig?.tls.mode === 'letsencrypt' && effects && !ownIssuer && (settings['user-container-naming'] ?? 'nested') === 'nested') {
    const certs = certificatesFromConfig(runtimeConfig);
    ownedCertificates = certs;
    opts.certificates = certs;
  }
  opts.logger = values.verbose ? (e) => io.stderr(`${JSON.stringify(e)}\n`) : null;
  return { allocator: new GatewayAllocator(opts), opts, runtimeConfig, ownedCertificates };
}

/** Runs one invocation; returns the exit code. Separate from process handling so tests can drive it in-process too. */
export async function main(argv: string[], io: Io): Promise<number> {
  let json = false;
  let allocator: GatewayAllocator | undefined;
  let ownedCertificates: { close(): Promise<void> } | undefined;
  const out = (human: string, data: unknown): void => io.stdout(`${json ? JSON.stringify(data, null, 2) : human}\n`);
  try {
    const { values, positionals } = parseCommandLine(argv);
    json = values.json === true;
    const [command, ...args] = positionals;
    if (values.help || command === undefined || command === 'help') {
      io.stdout(`${usage()}\n`);
      return command === undefined && !values.help ? EXIT.usage : EXIT.ok;
    }
    const spec = COMMANDS[command];
    if (!spec) throw new UsageError(`unknown command ${JSON.stringify(command)}; try --help`);
    const expected = spec.args.split(' ').filter((a) => a.startsWith('<')).length;
    if (args.length !== expected) throw new UsageError(`${command} takes ${spec.args || 'no arguments'}`);
    const opened = await openAllocator(values, spec.effects, io);
    allocator = opened.allocator;
    ownedCertificates = opened.ownedCertificates;
    const run = HANDLERS[command];
    if (!run) throw new UsageError(`unknown command ${command}`);
    return await run({ a: opened.allocator, command, args, values, io, runtimeConfig: opened.runtimeConfig, opts: opened.opts, out });
  } catch (err) {
    if (err instanceof UsageError || (err instanceof TypeError && (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS'))) {
      io.stderr(`gateway-pool: ${err.message}\n`);
      if (json) io.stdout(`${JSON.stringify({ ok: false, code: 'USAGE', message: err.message })}\n`);
      return EXIT.usage;
    }
    const e = asAllocatorError(err, 'DATABASE_FAILED', 'command failed');
    io.stderr(`gateway-pool: ${e.code}: ${e.message}\n`);
    if (json) io.stdout(`${JSON.stringify({ ok: false, code: e.code, message: e.message, retryable: e.retryable })}\n`);
    return exitCodeOf(e);
  } finally {
    await allocator?.close().catch(() => undefined);
    await ownedCertificates?.close().catch(() => undefined);
  }
}

/** --file, else the runtime config file's inventory and tokens (what the API server registers at start), else stdin. */
async function syncSource({ values, runtimeConfig, io }: CommandContext): Promise<ReturnType<typeof parseStackOutputs>> {
  if (!values.file && runtimeConfig) {
    return { inventory: runtimeConfig.inventory, tokens: runtimeConfig.secrets.gatewayRegistrationTokens, envName: runtimeConfig.envName, domain: runtimeConfig.domain, warnings: [] as string[] };
  }
  const file = values.file;
  const text = file
    ? await fs.readFile(file, 'utf8').catch((e: Error) => {
        throw new UsageError(`cannot read ${file}: ${e.message}`);
      })
    : await io.stdin();
  return parseStackOutputs(text);
}

async function sync(ctx: CommandContext): Promise<number> {
  const { a, opts, values, io, out } = ctx;
  const stack = await syncSource(ctx);
  if (stack.envName && stack.envName !== opts.envName) throw new UsageError(`stack outputs are for environment ${stack.envName}, but ENV_NAME/--env is ${opts.envName}`);
  if (stack.domain && stack.domain !== opts.domain) throw new UsageError(`stack outputs are for domain ${stack.domain}, but DOMAIN/--domain is ${opts.domain}`);
  await a.migrate();
  const reg = await a.registerGateways(stack.inventory as never, { prune: values.prune === true });
  if (stack.tokens) await a.setRegistrationTokens(stack.tokens);
  stack.warnings.forEach((w) => io.stderr(`warning: ${w}\n`));
  out(
    `inventory synced: ${reg.added.length} added, ${reg.updated.length} updated, ${reg.unchanged.length} unchanged, ${reg.retired.length} retired` +
      (reg.removed.length ? `, ${reg.removed.length} removed (endpoint taken by a listed gateway: ${reg.removed.join(', ')})` : '') +
      (reg.retireDeferred.length ? `, ${reg.retireDeferred.length} to retire once released (${reg.retireDeferred.join(', ')})` : '') +
      (stack.tokens ? `; registration tokens set for ${Object.keys(stack.tokens).length}` : ''),
    { ...reg, registrationTokens: stack.tokens ? Object.keys(stack.tokens).length : 0, warnings: stack.warnings },
  );
  return EXIT.ok;
}

async function snapshotsOrRestore({ a, command, args, values, out }: CommandContext): Promise<number> {
  await a.migrate();
  const store = new OrgDataStore({ pg: a.pgPool, schema: a.schema });
  if (command === 'snapshots') {
    const h = await store.history(args[0]);
    out(h.length === 0 ? '(no snapshots)' : table([['VERSION', 'TIMESTAMP', 'BYTES', 'SHA256', 'GATEWAY', 'RESTORED FROM'], ...h.map((v) => [String(v.version), v.timestamp, String(v.bytes), v.sha256.slice(0, 16), v.gateway, v.restoredFrom === null ? '-' : String(v.restoredFrom)])]), h);
    return EXIT.ok;
  }
  if (!/^\d+$/.test(args[1])) throw new UsageError('version must be a positive integer');
  const r = await store.restore(args[0], Number(args[1]), { force: values.force === true, by: 'gateway-pool restore' });
  out(`restored version ${args[1]} as version ${r.version} (${r.bytes} bytes)`, r);
  return EXIT.ok;
}

/** One function per command of COMMANDS; each returns its exit code. */
const HANDLERS: Record<string, (ctx: CommandContext) => Promise<number>> = {
  async status({ a, out }) {
    const st = await a.status();
    const states = Object.entries(st.byState).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`).join(', ');
    out(`pool ${st.envName}: ${st.total} gateways (${states || 'none'}); ${st.allocatedOrganizations} organizations allocated`, st);
    return EXIT.ok;
  },
  async list({ a, out }) {
    const gws = await a.list();
    out(listTable(gws), gws);
    return EXIT.ok;
  },
  async allocate({ a, args, values, out }) {
    const al = await a.allocate(args[0]);
    const shown = { ...al, token: values['show-token'] ? al.token : al.token ? '(hidden: --show-token)' : null };
    out(`${al.created ? 'allocated' : 'already allocated'}: ${al.organizationId} → ${al.name} (${al.host}:${al.httpPort}), https://${al.fqdn}${values['show-token'] && al.token ? `\ntoken: ${al.token}` : ''}`, shown);
    return EXIT.ok;
  },
  async release({ a, args, out }) {
    const r = await a.release(args[0]);
    out(`released: ${r.organizationId} (gateway ${r.name} is ready again)`, r);
    return EXIT.ok;
  },
  async reconcile({ a, values, out }) {
    const rep = await a.reconcile({ force: values.force === true });
    const lines = [
      `recovered ${rep.recovered.length}, DNS repaired ${rep.dnsRepaired.length}, routes repaired ${rep.routesRepaired.length}, DNS orphans removed ${rep.dnsOrphansRemoved.length}, route orphans removed ${rep.routeOrphansRemoved.length}, abandoned temp files removed ${rep.tempFilesRemoved.length}, in flight ${rep.inFlight.length}, errors ${rep.errors.length}`,
      ...rep.errors.map((e) => `error ${e.code}: ${e.message}`),
    ];
    out(lines.join('\n'), rep);
    return rep.errors.length > 0 ? EXIT.partial : EXIT.ok;
  },
  sync,
  async reap({ a, values, out }) {
    const maxSilence = parseDuration(values['max-silence'] ?? '10m');
    const rep = await a.reapStale(maxSilence);
    out(
      [`reaped ${rep.released.length} silent gateway(s), ${rep.revived.length} spoke up in time, errors ${rep.errors.length}`, ...rep.released.map((r) => `released ${r.gateway} (org ${r.organizationId}, silent since ${r.silentSince})`), ...rep.errors.map((e) => `error ${e.gateway} ${e.code}: ${e.message}`)].join('\n'),
      rep,
    );
    return rep.errors.length > 0 ? EXIT.partial : EXIT.ok;
  },
  async migrate({ a, out }) {
    const m = await a.migrate();
    out(m.applied.length ? `applied ${m.applied.join(', ')}` : 'schema up to date', m);
    return EXIT.ok;
  },
  snapshots: snapshotsOrRestore,
  restore: snapshotsOrRestore,
};

async function readStdin(): Promise<string> {
  if (process.stdin.isTTY) throw new UsageError('sync reads stack outputs from stdin (pipe `pulumi stack output --json --show-secrets`) or --file');
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

if (require.main === module) {
  main(process.argv.slice(2), {
    stdout: (s) => process.stdout.write(s),
    stderr: (s) => process.stderr.write(s),
    stdin: readStdin,
    env: process.env,
  }).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`gateway-pool: unexpected failure: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
