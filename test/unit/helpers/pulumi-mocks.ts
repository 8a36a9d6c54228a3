/**
 * Runs the REAL Pulumi program (index.ts) in-process under
 * `pulumi.runtime.setMocks` and captures what a Pulumi engine would receive:
 *
 *  - every RegisterResource request, read at the mock monitor itself, so the
 *    capture includes the resource options the `Mocks.newResource` callback
 *    never sees: dependencies (all, per property, and the explicit `dependsOn`
 *    ones = all minus property dependencies), protect, retainOnDelete,
 *    deleteBeforeReplace, additionalSecretOutputs, parent and provider;
 *  - inputs as serialized on the wire, so secretness is visible per path
 *    (`envs[3]`, `environment.PDNS_API_KEY`) before it is unwrapped;
 *  - the stack outputs as registered on the root `pulumi:pulumi:Stack`
 *    resource, again with their secretness.
 *
 * Re-running in one process: config is set with `runtime.setAllConfig`, mocks
 * are re-installed (which resets the runtime settings via `resetOptions`), and
 * the program's own modules (index.ts, components/, stack/) are evicted from
 * `require.cache` so the program really runs again.
 */
import * as crypto from 'crypto';
import * as path from 'path';
import * as pulumi from '@pulumi/pulumi';
import * as publicSettings from '@pulumi/pulumi/runtime/settings';
import * as rpc from '@pulumi/pulumi/runtime/rpc';

/** `waitForRPCs` is marked @internal (absent from the .d.ts) but is what the language host awaits. */
const settings = publicSettings as typeof publicSettings & { waitForRPCs(): Promise<void> };
const errorCtor = Error as unknown as { prepareStackTrace: unknown; stackTraceLimit: number };

export const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');
export const PROJECT = 'demiurge';

export interface CapturedResource {
  type: string;
  name: string;
  urn: string;
  custom: boolean;
  parent: string;
  /** Provider reference `<urn>::<id>` ('' = default provider). */
  provider: string;
  /** Inputs with secrets unwrapped. */
  inputs: Record<string, unknown>;
  /** Paths of inputs that were Pulumi secrets on the wire, e.g. `envs[3]`. */
  secretPaths: string[];
  dependencies: string[];
  propertyDependencies: Record<string, string[]>;
  /**
   * Dependencies that come from `dependsOn` only: all dependencies minus those of
   * any input (a resource both in `dependsOn` and referenced by an input is not here).
   */
  explicitDependencies: string[];
  protect: boolean;
  retainOnDelete: boolean;
  deleteBeforeReplace: boolean;
  additionalSecretOutputs: string[];
  replaceOnChanges: string[];
}

export interface ProgramRun {
  resources: CapturedResource[];
  /** Stack outputs with secrets unwrapped. */
  outputs: Record<string, unknown>;
  /** Paths of stack outputs that are secret. */
  outputSecretPaths: string[];
}

export interface RunOptions {
  stack: string;
  /** Full keys (`demiurge:envName`) → values. */
  config: Record<string, string>;
  preview?: boolean;
  /** Provider behaviour; default `mocks` (deterministic fake outputs). */
  mocks?: pulumi.runtime.Mocks;
  /**
   * Called with each captured resource (its `urn` already set) before the
   * mocks see it, and awaited: the e2e realiser creates the resource here, so
   * `mocks.newResource` can return its real outputs (container ids, image ids).
   * A throw fails the registration, as a failed create fails `pulumi up`.
   */
  beforeRegister?: (resource: CapturedResource) => Promise<void>;
}

/** The URN the mock monitor gives a resource (same rule as MockMonitor.newUrn). */
export function mockUrn(stack: string, parent: string, type: string, name: string): string {
  let qualified = type;
  if (parent) qualified = `${parent.split('::')[2].split('$').pop() as string}$${type}`;
  return `urn:pulumi:${stack}::${PROJECT}::${qualified}::${name}`;
}

export function digest(s: string): string {
  return crypto.createHash('sha256').update(s).digest('hex');
}

/** The `repoDigest` the mocks give a built image / the `imageId` of a pulled one. */
export function mockImageId(type: string, name: string): string {
  return `sha256:${digest(`${type}/${name}`)}`;
}

/** The `result` the mocks give a RandomPassword. */
export function mockPassword(name: string, length: number): string {
  return `mockpw${digest(`random:index/randomPassword:RandomPassword/${name}`).slice(0, length - 6)}`;
}

/** The `base64` the mocks give a RandomBytes (`length` bytes, deterministic per resource name). */
export function mockBytesBase64(name: string, length: number): string {
  return Buffer.from(digest(`random:index/randomBytes:RandomBytes/${name}`).repeat(4), 'hex').subarray(0, length).toString('base64');
}

/** Deterministic mock provider behaviour: computed outputs of the resource types we use. */
export const mocks: pulumi.runtime.Mocks = {
  newResource(args: pulumi.runtime.MockResourceArgs): { id: string; state: Record<string, unknown> } {
    const inputs = args.inputs as Record<string, unknown>;
    const state: Record<string, unknown> = { ...inputs };
    const h = digest(`${args.type}/${args.name}`);
    switch (args.type) {
      case 'docker:index/image:Image':
        // A local-only build reports the image id as repoDigest.
        state.repoDigest = `sha256:${h}`;
        break;
      case 'docker:index/remoteImage:RemoteImage':
        state.imageId = `sha256:${h}`;
        state.repoDigest = `${String(inputs.name)}@sha256:${h}`;
        break;
      case 'random:index/randomPassword:RandomPassword':
        state.result = mockPassword(args.name, Number(inputs.length ?? 16));
        break;
      case 'random:index/randomBytes:RandomBytes':
        state.base64 = mockBytesBase64(args.name, Number(inputs.length ?? 32));
        state.hex = Buffer.from(String(state.base64), 'base64').toString('hex');
        break;
      case 'command:local:Command':
        state.stdout = h;
        state.stderr = '';
        break;
      default:
        break;
    }
    return { id: `${args.name}-id`, state };
  },
  call(args: pulumi.runtime.MockCallArgs): Record<string, unknown> {
    return args.inputs as Record<string, unknown>;
  },
};

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

function isSecretWrapper(v: unknown): v is { value: Json } {
  return typeof v === 'object' && v !== null && (v as Record<string, unknown>)[rpc.specialSigKey] === rpc.specialSecretSig;
}

/** Unwraps secret signatures, recording the path of each. */
export function unwrapSecrets(value: unknown, at: string, secretPaths: string[]): unknown {
  if (isSecretWrapper(value)) {
    secretPaths.push(at);
    return unwrapSecrets(value.value, at, secretPaths);
  }
  if (Array.isArray(value)) return value.map((v, i) => unwrapSecrets(v, `${at}[${i}]`, secretPaths));
  if (typeof value === 'object' && value !== null) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = unwrapSecrets(v, at === '' ? k : `${at}.${k}`, secretPaths);
    return out;
  }
  return value;
}

interface ProtoRegisterResourceRequest {
  getType(): string;
  getName(): string;
  getParent(): string;
  getCustom(): boolean;
  getProvider(): string;
  getObject(): { toJavaScript(): Record<string, unknown> } | undefined;
  getDependenciesList(): string[];
  getPropertydependenciesMap(): { forEach(cb: (v: { getUrnsList(): string[] }, k: string) => void): void };
  getProtect(): boolean | undefined;
  getRetainondelete(): boolean | undefined;
  getDeletebeforereplace(): boolean;
  getAdditionalsecretoutputsList(): string[];
  getReplaceonchangesList(): string[];
}
interface ProtoResponse {
  getUrn(): string;
}
interface ProtoOutputsRequest {
  getUrn(): string;
  getOutputs(): { toJavaScript(): Record<string, unknown> } | undefined;
}
type Callback = (err: unknown, resp: ProtoResponse | undefined) => void;
interface PatchableMonitor {
  registerResource(req: ProtoRegisterResourceRequest, cb: Callback): Promise<void>;
  registerResourceOutputs(req: ProtoOutputsRequest, cb: (err: unknown, resp: unknown) => void): void;
}

const PROGRAM_DIRS = ['components', 'stack'].map((d) => path.join(REPO_ROOT, d) + path.sep);
const PROGRAM_FILES = [path.join(REPO_ROOT, 'index.ts')];

function evictProgramModules(): void {
  for (const key of Object.keys(require.cache)) {
    if (PROGRAM_FILES.includes(key) || PROGRAM_DIRS.some((d) => key.startsWith(d))) delete require.cache[key];
  }
}

export class ProgramError extends Error {
  constructor(
    readonly cause: unknown,
    readonly resources: CapturedResource[],
  ) {
    super(cause instanceof Error ? cause.message : String(cause));
    this.name = 'ProgramError';
  }
}

/** Runs index.ts once under mocks with the given stack config. */
export async function runProgram(opts: RunOptions): Promise<ProgramRun> {
  pulumi.runtime.setAllConfig(opts.config);
  await pulumi.runtime.setMocks(opts.mocks ?? mocks, PROJECT, opts.stack, opts.preview ?? false);
  const monitor = settings.getMonitor() as unknown as PatchableMonitor;
  const resources: CapturedResource[] = [];
  let stackOutputs: Record<string, unknown> | undefined;

  const origRegister = monitor.registerResource.bind(monitor);
  monitor.registerResource = (req: ProtoRegisterResourceRequest, cb: Callback): Promise<void> => {
    const secretPaths: string[] = [];
    const rawInputs = req.getObject()?.toJavaScript() ?? {};
    const inputs = unwrapSecrets(rawInputs, '', secretPaths) as Record<string, unknown>;
    const propertyDependencies: Record<string, string[]> = {};
    req.getPropertydependenciesMap().forEach((v, k) => {
      propertyDependencies[k] = v.getUrnsList();
    });
    const implicit = new Set(Object.values(propertyDependencies).flat());
    const dependencies = req.getDependenciesList();
    const captured: CapturedResource = {
      type: req.getType(),
      name: req.getName(),
      urn: '',
      custom: req.getCustom(),
      parent: req.getParent(),
      provider: req.getProvider(),
      inputs,
      secretPaths,
      dependencies,
      propertyDependencies,
      explicitDependencies: dependencies.filter((d) => !implicit.has(d)),
      protect: req.getProtect() === true,
      retainOnDelete: req.getRetainondelete() === true,
      deleteBeforeReplace: req.getDeletebeforereplace(),
      additionalSecretOutputs: req.getAdditionalsecretoutputsList(),
      replaceOnChanges: req.getReplaceonchangesList(),
    };
    resources.push(captured);
    const before = opts.beforeRegister;
    const expected = before === undefined ? undefined : mockUrn(opts.stack, captured.parent, captured.type, captured.name);
    const register = (): Promise<void> =>
      origRegister(req, (err, resp) => {
        // beforeRegister saw the precomputed URN: it must be the one the monitor assigns.
        if (resp && expected !== undefined && resp.getUrn() !== expected) {
          cb(new Error(`mockUrn ${expected} differs from the monitor's ${resp.getUrn()}`), undefined);
          return;
        }
        if (resp) captured.urn = resp.getUrn();
        cb(err, resp);
      });
    if (before === undefined || expected === undefined) return register();
    captured.urn = expected;
    return before(captured).then(register, (err: unknown) => cb(err, undefined));
  };
  const origOutputs = monitor.registerResourceOutputs.bind(monitor);
  monitor.registerResourceOutputs = (req, cb) => {
    if (req.getUrn().includes('::pulumi:pulumi:Stack::')) stackOutputs = req.getOutputs()?.toJavaScript() ?? {};
    origOutputs(req, cb);
  };

  evictProgramModules();
  const program = path.join(REPO_ROOT, 'index.ts');
  // The SDK captures `new Error().stack` for every promise it tracks; with ts-node's
  // source-map-support installed that dominates the run time. V8's own formatting
  // is enough here, with short traces (set DEMIURGE_TEST_FULL_STACKS=1 to debug).
  const savedPrepareStackTrace = errorCtor.prepareStackTrace;
  const savedLimit = errorCtor.stackTraceLimit;
  if (process.env.DEMIURGE_TEST_FULL_STACKS !== '1') {
    errorCtor.prepareStackTrace = undefined;
    errorCtor.stackTraceLimit = 1;
  }
  try {
    await pulumi.runtime.runInPulumiStack(async () => require(program) as Record<string, unknown>);
    await settings.waitForRPCs();
  } catch (err) {
    await settings.waitForRPCs().catch(() => undefined);
    throw new ProgramError(err, resources);
  } finally {
    errorCtor.prepareStackTrace = savedPrepareStackTrace;
    errorCtor.stackTraceLimit = savedLimit;
  }
  const outputSecretPaths: string[] = [];
  const outputs = unwrapSecrets(stackOutputs ?? {}, '', outputSecretPaths) as Record<string, unknown>;
  return { resources, outputs, outputSecretPaths };
}

// ------------------------------------------------------------------ query helpers

export function byType(run: ProgramRun, type: string): CapturedResource[] {
  return run.resources.filter((r) => r.type === type);
}

export function byName(run: ProgramRun, type: string, name: string): CapturedResource {
  const found = run.resources.filter((r) => r.type === type && r.name === name);
  if (found.length !== 1) {
    throw new Error(`expected one ${type} named ${name}, found ${found.length}: ${byType(run, type).map((r) => r.name).join(', ')}`);
  }
  return found[0];
}

/** Docker containers by their `name` input. */
export function containers(run: ProgramRun): Map<string, CapturedResource> {
  return new Map(byType(run, 'docker:index/container:Container').map((r) => [String(r.inputs.name), r]));
}

/** `KEY=value` env list → map. */
export function envMap(r: CapturedResource): Map<string, string> {
  const envs = (r.inputs.envs ?? []) as string[];
  return new Map(envs.map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]));
}

/** Names of env vars whose entries are secret on the wire. */
export function secretEnvNames(r: CapturedResource): string[] {
  const envs = (r.inputs.envs ?? []) as string[];
  return r.secretPaths
    .map((p) => /^envs\[(\d+)\]$/.exec(p))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => envs[Number(m[1])].split('=')[0]);
}

export function providerUrn(ref: string): string {
  return ref.split('::').slice(0, -1).join('::');
}

/** Every string leaf of `value` with its path, skipping subtrees under `skip` paths. */
export function stringLeaves(value: unknown, skip: readonly string[], at = ''): { path: string; value: string }[] {
  if (skip.some((p) => at === p)) return [];
  if (typeof value === 'string') return [{ path: at, value }];
  if (Array.isArray(value)) return value.flatMap((v, i) => stringLeaves(v, skip, `${at}[${i}]`));
  if (typeof value === 'object' && value !== null) {
    return Object.entries(value).flatMap(([k, v]) => stringLeaves(v, skip, at === '' ? k : `${at}.${k}`));
  }
  return [];
}
