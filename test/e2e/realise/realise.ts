/**
 * Realises the resources the real program registers (captured under Pulumi
 * mocks) on the local Docker engine, the way `pulumi up` with the Docker,
 * Command and Random providers would, and tears them down the way
 * `pulumi state unprotect --all && pulumi destroy` would.
 *
 * The realiser acts as the engine + providers:
 *  - `plan(resources)` (the preview): every input of every resource must be on
 *    the allow-list of fields.ts, else one error per field, before any side effect;
 *  - `beforeRegister(resource)`: waits for everything the resource depends on
 *    (`dependsOn`, inputs, parent, provider), creates it, and keeps its real
 *    outputs, which `mocks.newResource` then hands back to the program: image
 *    ids, container ids, generated passwords, command stdout;
 *  - `destroy()`: reverse creation order, honouring protect and retainOnDelete.
 *
 * Provider behaviour mirrored (pulumi-docker 4.x/5.x over kreuzwerker's provider):
 *  - Container: created, attached only to its `networksAdvanced` networks with
 *    their aliases, started; `wait` waits for `healthy` (`waitTimeout`, default
 *    60 s), otherwise the container must be running. Delete: stop with
 *    `destroyGraceSeconds` if set, then force-remove (anonymous volumes too).
 *  - Image (local build, skipPush): `docker build` with the legacy builder in the
 *    project directory; `repoDigest` is the image id. Delete leaves the image
 *    (pulumi-docker never removes built images on destroy).
 *  - RemoteImage: kept on delete when `keepLocally`.
 *  - Volume / Network: created by name with their labels (an existing volume of that name is
 *    adopted, as Docker's create returns it); deleted unless retainOnDelete.
 *  - command.local.Command: `interpreter` + `create` in the project directory with
 *    the process environment plus `environment`; `delete` on destroy with
 *    PULUMI_COMMAND_STDOUT/STDERR set; stdout without its trailing newline.
 *  - random.RandomPassword: `length` characters from A-Z a-z 0-9 (+ specials);
 *    random.RandomBytes: `length` bytes, as base64 and hex.
 */
import { spawn } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import type * as pulumi from '@pulumi/pulumi';
import type { CapturedResource } from '../../unit/helpers/pulumi-mocks';
import { Engine, EngineError, type ContainerCreateBody } from './engine';
import {
  COMMAND,
  CONTAINER,
  DOCKER_PROVIDER,
  IMAGE,
  NETWORK,
  RANDOM_BYTES,
  RANDOM_PASSWORD,
  REMOTE_IMAGE,
  VOLUME,
  isComponentType,
  validateInputs,
} from './fields';

export class UnrealisableError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(`the program declares ${problems.length} input(s) the e2e realiser cannot realise:\n  ${problems.join('\n  ')}`);
    this.name = 'UnrealisableError';
  }
}

export interface RealisedResource {
  resource: CapturedResource;
  id: string;
  /** What the provider would return: inputs plus computed outputs. */
  outputs: Record<string, unknown>;
  ms: number;
  /** One line for the log (e.g. `cached 14/14 steps`, `healthy after 12.1 s`). */
  detail: string;
}

export interface DestroyedResource {
  urn: string;
  type: string;
  name: string;
  action: 'deleted' | 'retained' | 'state-only' | 'left-in-docker';
  ms: number;
  detail: string;
}

export interface DestroyReport {
  resources: DestroyedResource[];
  /** Containers stopped gracefully before removal: exit code and stop time. */
  stops: Array<{ name: string; exitCode: number; ms: number }>;
  ms: number;
}

export interface RealiserOptions {
  /** The project directory (where Pulumi runs the program: build contexts and commands are relative to it). */
  cwd: string;
  engine?: Engine;
  /** Where `docker build` output goes (one file per image). */
  logDir: string;
  log?: (line: string) => void;
  /**
   * The id of an image already on `engine` for this Image resource (the multi-host suite loads
   * images into its second host, which cannot build: no registry, no Debian mirror there);
   * undefined: build it as the provider would.
   */
  prebuiltImage?: (r: CapturedResource) => Promise<string | undefined>;
}

interface Port {
  internal: number;
  external?: number;
  ip?: string;
  protocol?: string;
}
interface Healthcheck {
  tests?: string[];
  interval?: string;
  timeout?: string;
  retries?: number;
  startPeriod?: string;
}
interface Upload {
  file: string;
  content?: string;
  contentBase64?: string;
  executable?: boolean;
}
interface ContainerInputs {
  name: string;
  image: string;
  hostname?: string;
  entrypoints?: string[];
  command?: string[];
  uploads?: Upload[];
  restart?: string;
  labels?: Array<{ label: string; value: string }>;
  envs?: string[];
  ports?: Port[];
  networksAdvanced?: Array<{ name: string; aliases?: string[] }>;
  hosts?: Array<{ host: string; ip: string }>;
  volumes?: Array<{ volumeName?: string; hostPath?: string; containerPath: string; readOnly?: boolean }>;
  capabilities?: { adds?: string[]; drops?: string[] };
  devices?: Array<{ hostPath: string; containerPath?: string; permissions?: string }>;
  healthcheck?: Healthcheck;
  wait?: boolean;
  waitTimeout?: number;
  destroyGraceSeconds?: number;
}
interface CommandInputs {
  create?: string;
  delete?: string;
  interpreter?: string[];
  environment?: Record<string, string>;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const secs = (ms: number): string => `${(ms / 1000).toFixed(1)}s`;

/** Go duration (`10s`, `1m30s`, `500ms`) → nanoseconds, as the Engine API wants them. */
export function durationNs(d: string): number {
  const re = /(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/g;
  const unit: Record<string, number> = { ns: 1, us: 1e3, µs: 1e3, ms: 1e6, s: 1e9, m: 60e9, h: 3600e9 };
  let total = 0;
  let consumed = '';
  for (let m = re.exec(d); m !== null; m = re.exec(d)) {
    total += Number(m[1]) * unit[m[2]];
    consumed += m[0];
  }
  if (consumed !== d || d === '') throw new Error(`not a Go duration: ${JSON.stringify(d)}`);
  return Math.round(total);
}

function labelMap(labels: Array<{ label: string; value: string }> | undefined): Record<string, string> {
  return Object.fromEntries((labels ?? []).map((l) => [l.label, l.value]));
}

function providerUrn(ref: string): string {
  return ref === '' ? '' : ref.split('::').slice(0, -1).join('::');
}

function typeShort(type: string): string {
  return type.replace(/^docker:index\/\w+:/, 'docker:').replace(/^random:index\/\w+:/, 'random:').replace(/^command:local:/, 'command:');
}

class Deferred {
  readonly promise: Promise<void>;
  resolve!: () => void;
  reject!: (err: unknown) => void;
  constructor() {
    this.promise = new Promise<void>((res, rej) => {
      this.resolve = res;
      this.reject = rej;
    });
    // A dependency that failed is reported by its own registration; do not also crash the process.
    this.promise.catch(() => undefined);
  }
}

export class Realiser {
  readonly engine: Engine;
  private readonly log: (line: string) => void;
  private readonly started = Date.now();
  /** Completion of every registered URN (custom or component). */
  private readonly done = new Map<string, Deferred>();
  private readonly byKey = new Map<string, RealisedResource>();
  /** In creation (completion) order: the reverse is a valid destroy order. */
  readonly realised: RealisedResource[] = [];
  private destroyed = false;

  constructor(private readonly opts: RealiserOptions) {
    this.engine = opts.engine ?? new Engine();
    this.log = opts.log ?? ((line) => process.stdout.write(`${line}\n`));
  }

  /** Mock provider behaviour: the real outputs of what `beforeRegister` created. */
  readonly mocks: pulumi.runtime.Mocks = {
    newResource: (args: pulumi.runtime.MockResourceArgs): { id: string; state: Record<string, unknown> } => {
      const r = this.byKey.get(`${args.type}::${args.name}`);
      if (r === undefined) throw new Error(`realiser: ${args.type} ${args.name} was registered without being realised`);
      return { id: r.id, state: r.outputs };
    },
    call: (args: pulumi.runtime.MockCallArgs): Record<string, unknown> => {
      throw new Error(`realiser: provider function ${args.token} is not realisable`);
    },
  };

  // ---------------------------------------------------------------- preview

  /** Checks every resource of a preview run: all problems at once, before any side effect. */
  plan(resources: readonly CapturedResource[]): void {
    const problems: string[] = [];
    const keys = new Set<string>();
    const providers = new Map<string, CapturedResource>();
    for (const r of resources) if (r.type.startsWith('pulumi:providers:')) providers.set(r.urn, r);
    for (const r of resources) {
      const key = `${r.type}::${r.name}`;
      if (keys.has(key)) problems.push(`${r.urn}: a second ${r.type} named ${r.name} (the realiser keys resources by type and name)`);
      keys.add(key);
      problems.push(...validateInputs(r.urn, r.type, r.inputs));
      if (r.type === DOCKER_PROVIDER) {
        const host = r.inputs.host;
        if (typeof host === 'string' && host !== '' && !host.startsWith('unix://')) {
          problems.push(`${r.urn}: field host = ${JSON.stringify(host)} is not realisable (only the local Docker engine is)`);
        }
      } else if (r.type.startsWith('pulumi:providers:')) {
        problems.push(`${r.urn}: explicit provider type ${r.type} is not realisable`);
      }
      if (r.custom && !r.type.startsWith('pulumi:providers:')) {
        const p = providerUrn(r.provider);
        const isDocker = r.type.startsWith('docker:');
        if (isDocker && (p === '' || providers.get(p)?.type !== DOCKER_PROVIDER)) {
          problems.push(`${r.urn}: provider ${r.provider || '(default)'} is not realisable (Docker resources need the program's explicit Docker provider)`);
        }
        if (!isDocker && p !== '') problems.push(`${r.urn}: provider ${r.provider} is not realisable (only default providers for ${r.type.split(':')[0]})`);
      }
      if (r.type === IMAGE) {
        const build = (r.inputs.build ?? {}) as { context?: string };
        const ctx = path.resolve(this.opts.cwd, build.context ?? '');
        if (build.context === undefined || !fs.existsSync(path.join(ctx, 'Dockerfile'))) {
          problems.push(`${r.urn}: field build.context = ${JSON.stringify(build.context)} has no Dockerfile under ${this.opts.cwd}`);
        }
      }
      if (r.type === CONTAINER) {
        const c = r.inputs as unknown as ContainerInputs;
        for (const [i, v] of (c.volumes ?? []).entries()) {
          if ((v.volumeName === undefined) === (v.hostPath === undefined)) problems.push(`${r.urn}: field volumes[${i}] needs exactly one of volumeName, hostPath`);
        }
        for (const [i, h] of [c.healthcheck?.interval, c.healthcheck?.timeout, c.healthcheck?.startPeriod].entries()) {
          if (h !== undefined) {
            try {
              durationNs(h);
            } catch (err) {
              problems.push(`${r.urn}: field healthcheck.${['interval', 'timeout', 'startPeriod'][i]}: ${(err as Error).message}`);
            }
          }
        }
      }
    }
    if (problems.length > 0) throw new UnrealisableError(problems);
  }

  /** Docker object names a plan would create, so leftovers of an interrupted run can be removed first. */
  static declaredNames(resources: readonly CapturedResource[]): { containers: string[]; networks: string[]; volumes: string[] } {
    const names = (type: string): string[] => resources.filter((r) => r.type === type).map((r) => String(r.inputs.name));
    return { containers: names(CONTAINER), networks: names(NETWORK), volumes: names(VOLUME) };
  }

  // ---------------------------------------------------------------- up

  private deferred(urn: string): Deferred {
    let d = this.done.get(urn);
    if (d === undefined) {
      d = new Deferred();
      this.done.set(urn, d);
    }
    return d;
  }

  /**
   * Partial realisation (the multi-host suite realises one host's part of the graph): `r` is
   * taken as existing without being created here, so what waits for it goes on.
   */
  markElsewhere(r: CapturedResource): void {
    this.deferred(r.urn).resolve();
  }

  /** runProgram's hook: realise one resource once all it depends on exists. */
  readonly beforeRegister = async (r: CapturedResource): Promise<void> => {
    const mine = this.deferred(r.urn);
    try {
      if (this.destroyed) throw new Error('realiser already destroyed');
      // The engine's ordering: inputs' resources, dependsOn, parent and provider first.
      const deps = new Set([...r.dependencies, r.parent, providerUrn(r.provider)].filter((u) => u !== '' && u !== r.urn));
      await Promise.all([...deps].map((u) => this.deferred(u).promise));
      const problems = validateInputs(r.urn, r.type, r.inputs);
      if (problems.length > 0) throw new UnrealisableError(problems);
      const key = `${r.type}::${r.name}`;
      if (this.byKey.has(key)) throw new Error(`${r.urn}: registered twice`);
      const t0 = Date.now();
      const { id, outputs, detail } = await this.create(r);
      const done: RealisedResource = { resource: r, id, outputs, ms: Date.now() - t0, detail };
      this.byKey.set(key, done);
      this.realised.push(done);
      if (r.custom) {
        this.log(`[e2e] realise ${typeShort(r.type)} ${r.name} ✔ ${secs(done.ms)}${detail ? ` (${detail})` : ''} [up +${secs(Date.now() - this.started)}]`);
      }
      mine.resolve();
    } catch (err) {
      if (r.custom) this.log(`[e2e] realise ${typeShort(r.type)} ${r.name} ✘ ${(err as Error).message.split('\n')[0]}`);
      mine.reject(err);
      throw err;
    }
  };

  private async create(r: CapturedResource): Promise<{ id: string; outputs: Record<string, unknown>; detail: string }> {
    if (isComponentType(r.type)) return { id: '', outputs: {}, detail: '' };
    switch (r.type) {
      case DOCKER_PROVIDER:
        return { id: `${r.name}-local`, outputs: { ...r.inputs }, detail: 'local engine' };
      case RANDOM_PASSWORD:
        return this.createPassword(r);
      case RANDOM_BYTES: {
        const bytes = crypto.randomBytes(Number(r.inputs.length));
        return { id: bytes.toString('base64'), outputs: { ...r.inputs, base64: bytes.toString('base64'), hex: bytes.toString('hex') }, detail: `${bytes.length} bytes` };
      }
      case VOLUME:
        return this.createVolume(r);
      case NETWORK:
        return this.createNetwork(r);
      case IMAGE: {
        const id = await this.opts.prebuiltImage?.(r);
        if (id !== undefined) return { id, outputs: { ...r.inputs, repoDigest: id }, detail: `prebuilt ${id.slice(7, 19)}` };
        return this.createImage(r);
      }
      case REMOTE_IMAGE:
        return this.createRemoteImage(r);
      case CONTAINER:
        return this.createContainer(r);
      case COMMAND:
        return this.createCommand(r);
      default:
        throw new UnrealisableError([`${r.urn}: resource type ${r.type} is not realisable`]);
    }
  }

  private async createPassword(r: CapturedResource): Promise<{ id: string; outputs: Record<string, unknown>; detail: string }> {
    const length = Number(r.inputs.length);
    // The random provider's default character classes; `special: false` drops the punctuation.
    const chars = `ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789${r.inputs.special === false ? '' : '!@#$%&*()-_=+[]{}<>:?'}`;
    let result = '';
    while (result.length < length) {
      const b = crypto.randomBytes(1)[0];
      // Rejection sampling keeps the distribution uniform.
      if (b < 256 - (256 % chars.length)) result += chars[b % chars.length];
    }
    return { id: 'none', outputs: { ...r.inputs, result }, detail: `${length} characters` };
  }

  private async createVolume(r: CapturedResource): Promise<{ id: string; outputs: Record<string, unknown>; detail: string }> {
    const name = String(r.inputs.name);
    // Docker answers a create for an existing name with that volume, so the provider adopts it:
    // this is how an `up` after `destroy` gets its retained data volumes back.
    const existed = (await this.engine.volume(name)) !== undefined;
    const v = await this.engine.call<{ Name: string; Mountpoint: string; Driver: string }>(
      'POST', '/volumes/create', { Name: name, Labels: labelMap(r.inputs.labels as Array<{ label: string; value: string }>) }, [201], `${r.urn}: create volume`);
    const flags = [existed ? 'adopted the existing volume' : '', r.protect ? 'protect' : '', r.retainOnDelete ? 'retainOnDelete' : ''].filter(Boolean).join(', ');
    return { id: v.Name, outputs: { ...r.inputs, name: v.Name, driver: v.Driver, mountpoint: v.Mountpoint }, detail: flags };
  }

  private async createNetwork(r: CapturedResource): Promise<{ id: string; outputs: Record<string, unknown>; detail: string }> {
    const name = String(r.inputs.name);
    if (await this.engine.networkExists(name)) throw new Error(`${r.urn}: network ${name} already exists`);
    const n = await this.engine.call<{ Id: string }>('POST', '/networks/create', {
      Name: name,
      Driver: r.inputs.driver ?? 'bridge',
      CheckDuplicate: true,
      Labels: labelMap(r.inputs.labels as Array<{ label: string; value: string }>),
    }, [201], `${r.urn}: create network`);
    return { id: n.Id, outputs: { ...r.inputs, name }, detail: '' };
  }

  private createImage(r: CapturedResource): Promise<{ id: string; outputs: Record<string, unknown>; detail: string }> {
    const imageName = String(r.inputs.imageName);
    const build = r.inputs.build as { context: string };
    const context = path.resolve(this.opts.cwd, build.context);
    const logFile = path.join(this.opts.logDir, `build-${r.name}.log`);
    return this.engine.imageId(imageName).then((previousId) => new Promise((resolve, reject) => {
      const out = fs.openSync(logFile, 'w');
      // BuilderV1 = the legacy builder; DOCKER_BUILDKIT=0 also silences the CLI's buildx lookup.
      const child = spawn('docker', ['build', '-t', imageName, context], {
        cwd: this.opts.cwd,
        stdio: ['ignore', out, out],
        env: { ...process.env, DOCKER_BUILDKIT: '0' },
      });
      child.on('error', (err) => {
        fs.closeSync(out);
        reject(err);
      });
      child.on('exit', (code) => {
        fs.closeSync(out);
        const text = fs.readFileSync(logFile, 'utf8');
        if (code !== 0) {
          reject(new Error(`${r.urn}: docker build ${imageName} failed (${code}); log ${logFile}:\n${text.split('\n').slice(-20).join('\n')}`));
          return;
        }
        const steps = (text.match(/^Step \d+\/\d+ : /gm) ?? []).length;
        const cached = (text.match(/^ ---> Using cache$/gm) ?? []).length;
        this.engine.imageId(imageName).then(async (id) => {
          if (id === undefined) throw new Error(`${r.urn}: ${imageName} missing after a successful build`);
          // Test hygiene, not provider behaviour: the image this tag named before is now dangling.
          if (previousId !== undefined && previousId !== id) await this.engine.request('DELETE', `/images/${previousId}`).catch(() => undefined);
          resolve({
            id,
            outputs: { ...r.inputs, imageName, repoDigest: id, baseImageName: imageName, context, dockerfile: path.join(context, 'Dockerfile'), platform: '', registryServer: '' },
            detail: `${imageName} ${id.slice(7, 19)}, ${cached}/${steps} steps cached`,
          });
        }).catch(reject);
      });
    }));
  }

  private async createRemoteImage(r: CapturedResource): Promise<{ id: string; outputs: Record<string, unknown>; detail: string }> {
    const name = String(r.inputs.name);
    let id = await this.engine.imageId(name);
    let detail = 'present locally';
    if (id === undefined) {
      const res = await runCommand(['docker', 'pull', name], {}, this.opts.cwd);
      if (res.code !== 0) throw new Error(`${r.urn}: docker pull ${name} failed: ${res.stderr.trim()}`);
      id = await this.engine.imageId(name);
      detail = 'pulled';
    }
    if (id === undefined) throw new Error(`${r.urn}: image ${name} missing after pull`);
    return { id, outputs: { ...r.inputs, imageId: id, repoDigest: `${name}@${id}` }, detail };
  }

  private containerBody(c: ContainerInputs): ContainerCreateBody {
    const exposed: Record<string, Record<string, never>> = {};
    const bindings: Record<string, Array<{ HostIp: string; HostPort: string }>> = {};
    for (const p of c.ports ?? []) {
      const key = `${p.internal}/${p.protocol ?? 'tcp'}`;
      exposed[key] = {};
      (bindings[key] ??= []).push({ HostIp: p.ip ?? '0.0.0.0', HostPort: p.external === undefined ? '' : String(p.external) });
    }
    const networks = c.networksAdvanced ?? [];
    const hc = c.healthcheck;
    return {
      Hostname: c.hostname,
      Image: c.image,
      Entrypoint: c.entrypoints,
      Cmd: c.command,
      Env: c.envs ?? [],
      Labels: labelMap(c.labels),
      ExposedPorts: exposed,
      Healthcheck: hc === undefined ? undefined : {
        Test: hc.tests ?? [],
        Interval: hc.interval === undefined ? undefined : durationNs(hc.interval),
        Timeout: hc.timeout === undefined ? undefined : durationNs(hc.timeout),
        Retries: hc.retries,
        StartPeriod: hc.startPeriod === undefined ? undefined : durationNs(hc.startPeriod),
      },
      HostConfig: {
        // The provider passes both named volumes and host paths as binds.
        Binds: (c.volumes ?? []).map((v) => `${v.volumeName ?? v.hostPath}:${v.containerPath}${v.readOnly ? ':ro' : ''}`),
        PortBindings: bindings,
        ExtraHosts: (c.hosts ?? []).map((h) => `${h.host}:${h.ip}`),
        RestartPolicy: { Name: c.restart ?? 'no' },
        CapAdd: c.capabilities?.adds,
        CapDrop: c.capabilities?.drops,
        Devices: (c.devices ?? []).map((d) => ({ PathOnHost: d.hostPath, PathInContainer: d.containerPath ?? d.hostPath, CgroupPermissions: d.permissions ?? 'rwm' })),
        // networksAdvanced without networkMode: the container ends up on those networks only
        // (the provider detaches the default bridge); the first one is its primary network.
        NetworkMode: networks[0]?.name ?? 'default',
      },
      NetworkingConfig: networks.length > 0 ? { EndpointsConfig: { [networks[0].name]: { Aliases: networks[0].aliases } } } : undefined,
    };
  }

  private async createContainer(r: CapturedResource): Promise<{ id: string; outputs: Record<string, unknown>; detail: string }> {
    const c = r.inputs as unknown as ContainerInputs;
    if ((await this.engine.imageId(c.image)) === undefined) throw new Error(`${r.urn}: field image = ${c.image} does not exist on the engine`);
    const created = await this.engine.call<{ Id: string }>(
      'POST', `/containers/create?name=${encodeURIComponent(c.name)}`, this.containerBody(c), [201], `${r.urn}: create container ${c.name}`);
    const id = created.Id;
    if ((c.uploads ?? []).length > 0) {
      // One archive extracted at / (parents created by the engine), before start: the provider's order.
      const entries = (c.uploads ?? []).map((u) => ({
        name: u.file.replace(/^\/+/, ''),
        mode: u.executable ? 0o744 : 0o644,
        data: u.contentBase64 !== undefined ? Buffer.from(u.contentBase64, 'base64') : Buffer.from(u.content ?? '', 'utf8'),
      }));
      const res = await this.engine.putArchive(id, '/', tarArchive(entries));
      if (res !== 200) throw new Error(`${r.urn}: uploading ${entries.length} file(s) into ${c.name} failed: HTTP ${res}`);
    }
    for (const n of (c.networksAdvanced ?? []).slice(1)) {
      await this.engine.call('POST', `/networks/${encodeURIComponent(n.name)}/connect`, { Container: id, EndpointConfig: { Aliases: n.aliases } }, [200], `${r.urn}: connect ${n.name}`);
    }
    await this.engine.call('POST', `/containers/${id}/start`, undefined, [204, 304], `${r.urn}: start ${c.name}`);
    const t0 = Date.now();
    let detail: string;
    if (c.wait === true) {
      const timeoutMs = (c.waitTimeout ?? 60) * 1000;
      for (;;) {
        const s = await this.engine.inspectContainer(id);
        const health = s?.State.Health?.Status ?? 'none';
        if (health === 'healthy') break;
        // The provider's state machine waits only through `starting`: `unhealthy` fails the create at once.
        if (health === 'unhealthy') {
          const last = s?.State.Health?.Log?.slice(-1)[0];
          throw new Error(`${r.urn}: ${c.name} became unhealthy after ${secs(Date.now() - t0)} (last check exit ${last?.ExitCode}: ${last?.Output.trim() ?? '-'}):\n${await this.logsTail(id)}`);
        }
        if (!s || !s.State.Running) {
          throw new Error(`${r.urn}: ${c.name} stopped (${s?.State.Status ?? 'gone'}, exit ${s?.State.ExitCode}) before it was healthy:\n${await this.logsTail(id)}`);
        }
        if (Date.now() - t0 > timeoutMs) {
          const last = s.State.Health?.Log?.slice(-1)[0];
          throw new Error(`${r.urn}: ${c.name} not healthy after waitTimeout ${timeoutMs / 1000} s (health ${health}; last check exit ${last?.ExitCode}: ${last?.Output.trim() ?? '-'}):\n${await this.logsTail(id)}`);
        }
        await sleep(250);
      }
      detail = `healthy after ${secs(Date.now() - t0)}`;
    } else {
      // The provider's must_run: a container that exits at once fails the create.
      await sleep(500);
      const s = await this.engine.inspectContainer(id);
      if (!s || !s.State.Running) throw new Error(`${r.urn}: ${c.name} is not running after start (${s?.State.Status}):\n${await this.logsTail(id)}`);
      detail = 'running (no wait)';
    }
    return { id, outputs: { ...r.inputs, id, name: c.name }, detail };
  }

  private async logsTail(id: string): Promise<string> {
    const res = await runCommand(['docker', 'logs', '--tail', '30', id], {}, this.opts.cwd);
    return `${res.stdout}${res.stderr}`.trim().replace(/^/gm, '    | ');
  }

  private async createCommand(r: CapturedResource): Promise<{ id: string; outputs: Record<string, unknown>; detail: string }> {
    const c = r.inputs as CommandInputs;
    if (c.create === undefined) return { id: crypto.randomUUID(), outputs: { ...r.inputs, stdout: '', stderr: '' }, detail: 'no create' };
    const res = await runCommand([...(c.interpreter ?? ['/bin/sh', '-c']), c.create], c.environment ?? {}, this.opts.cwd);
    if (res.code !== 0) {
      throw new Error(`${r.urn}: create command exited ${res.code}:\n${res.stderr.trim().replace(/^/gm, '    | ')}`);
    }
    const stdout = res.stdout.replace(/\n$/, '');
    const stderr = res.stderr.replace(/\n$/, '');
    const last = stdout.split('\n').filter(Boolean).pop() ?? '';
    // stdout of the mkcert/lego commands is a fingerprint: fine to show; never the environment.
    return { id: crypto.randomUUID(), outputs: { ...r.inputs, stdout, stderr }, detail: last.slice(0, 80) };
  }

  // ---------------------------------------------------------------- destroy

  get isDestroyed(): boolean {
    return this.destroyed;
  }

  /** The protected resources a plain `pulumi destroy` would refuse to touch. */
  protectedResources(): CapturedResource[] {
    return this.realised.filter((x) => x.resource.protect).map((x) => x.resource);
  }

  /**
   * `pulumi destroy`: refuses while any resource is protected (like the CLI),
   * unless `unprotectAll` (= `pulumi state unprotect --all` first). Deletes in
   * reverse creation order; retainOnDelete resources only leave the state.
   */
  async destroy(options: { unprotectAll: boolean }): Promise<DestroyReport> {
    const prot = this.protectedResources();
    if (!options.unprotectAll && prot.length > 0) {
      throw new Error(`refusing to destroy: ${prot.length} protected resource(s): ${prot.map((p) => p.urn).join(', ')}`);
    }
    this.destroyed = true;
    const t0 = Date.now();
    const report: DestroyReport = { resources: [], stops: [], ms: 0 };
    const errors: string[] = [];
    for (const x of [...this.realised].reverse()) {
      const r = x.resource;
      if (!r.custom) continue;
      const s0 = Date.now();
      try {
        const { action, detail } = await this.delete(x, report);
        report.resources.push({ urn: r.urn, type: r.type, name: r.name, action, ms: Date.now() - s0, detail });
        this.log(`[e2e] destroy ${typeShort(r.type)} ${r.name} ✔ ${action}${detail ? ` (${detail})` : ''} ${secs(Date.now() - s0)}`);
      } catch (err) {
        errors.push(`${r.urn}: ${(err as Error).message}`);
        this.log(`[e2e] destroy ${typeShort(r.type)} ${r.name} ✘ ${(err as Error).message.split('\n')[0]}`);
      }
    }
    report.ms = Date.now() - t0;
    if (errors.length > 0) throw new Error(`destroy failed for ${errors.length} resource(s):\n  ${errors.join('\n  ')}`);
    return report;
  }

  private async delete(x: RealisedResource, report: DestroyReport): Promise<{ action: DestroyedResource['action']; detail: string }> {
    const r = x.resource;
    if (r.retainOnDelete) return { action: 'retained', detail: 'retainOnDelete: left in Docker, dropped from the state' };
    switch (r.type) {
      case CONTAINER: {
        const c = r.inputs as unknown as ContainerInputs;
        let detail = 'force-removed';
        if ((c.destroyGraceSeconds ?? 0) > 0) {
          const s0 = Date.now();
          const res = await this.engine.request<unknown>('POST', `/containers/${x.id}/stop?t=${c.destroyGraceSeconds}`, undefined, ((c.destroyGraceSeconds ?? 0) + 30) * 1000);
          if (![204, 304, 404].includes(res.status)) throw new EngineError(`stop ${c.name}: HTTP ${res.status}`, res.status);
          const s = await this.engine.inspectContainer(x.id);
          const stop = { name: c.name, exitCode: s?.State.ExitCode ?? -1, ms: Date.now() - s0 };
          report.stops.push(stop);
          detail = `stopped (exit ${stop.exitCode}, ${secs(stop.ms)}), removed`;
        }
        await this.engine.call('DELETE', `/containers/${x.id}?force=1&v=1`, undefined, [204, 404], `remove ${c.name}`);
        return { action: 'deleted', detail };
      }
      case NETWORK:
        await this.engine.call('DELETE', `/networks/${x.id}`, undefined, [204, 404], `remove network ${String(r.inputs.name)}`);
        return { action: 'deleted', detail: '' };
      case VOLUME:
        await this.engine.call('DELETE', `/volumes/${encodeURIComponent(x.id)}`, undefined, [204, 404], `remove volume ${x.id}`);
        return { action: 'deleted', detail: '' };
      case IMAGE:
        return { action: 'left-in-docker', detail: 'pulumi-docker does not remove built images on destroy' };
      case REMOTE_IMAGE:
        if (r.inputs.keepLocally === true) return { action: 'left-in-docker', detail: 'keepLocally' };
        await this.engine.call('DELETE', `/images/${encodeURIComponent(x.id)}`, undefined, [200, 404, 409], `remove image ${x.id}`);
        return { action: 'deleted', detail: '' };
      case COMMAND: {
        const c = r.inputs as CommandInputs;
        if (c.delete === undefined) return { action: 'state-only', detail: 'no delete command' };
        const env = { ...(c.environment ?? {}), PULUMI_COMMAND_STDOUT: String(x.outputs.stdout ?? ''), PULUMI_COMMAND_STDERR: String(x.outputs.stderr ?? '') };
        const res = await runCommand([...(c.interpreter ?? ['/bin/sh', '-c']), c.delete], env, this.opts.cwd);
        if (res.code !== 0) throw new Error(`delete command exited ${res.code}: ${res.stderr.trim()}`);
        return { action: 'deleted', detail: res.stdout.trim().split('\n').pop() ?? '' };
      }
      default:
        return { action: 'state-only', detail: '' };
    }
  }
}

/** A ustar archive of regular files (names up to 255 bytes, split into prefix/name as ustar allows). */
export function tarArchive(files: Array<{ name: string; mode: number; data: Buffer }>): Buffer {
  const blocks: Buffer[] = [];
  for (const f of files) {
    let name = f.name;
    let prefix = '';
    if (Buffer.byteLength(name) > 100) {
      const cut = name.lastIndexOf('/', name.length - 1);
      prefix = name.slice(0, cut);
      name = name.slice(cut + 1);
      if (cut < 0 || Buffer.byteLength(prefix) > 155 || Buffer.byteLength(name) > 100) throw new Error(`path too long for a tar header: ${f.name}`);
    }
    const h = Buffer.alloc(512, 0);
    const put = (s: string, off: number, len: number): void => void h.write(s, off, len, 'utf8');
    const oct = (n: number, len: number): string => `${n.toString(8).padStart(len - 1, '0')}\0`;
    put(name, 0, 100);
    put(oct(f.mode, 8), 100, 8);
    put(oct(0, 8), 108, 8);
    put(oct(0, 8), 116, 8);
    put(oct(f.data.length, 12), 124, 12);
    put(oct(Math.floor(Date.now() / 1000), 12), 136, 12);
    put('        ', 148, 8);
    put('0', 156, 1);
    put('ustar\0', 257, 6);
    put('00', 263, 2);
    put(prefix, 345, 155);
    let sum = 0;
    for (const b of h) sum += b;
    put(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8);
    blocks.push(h, f.data, Buffer.alloc((512 - (f.data.length % 512)) % 512, 0));
  }
  blocks.push(Buffer.alloc(1024, 0));
  return Buffer.concat(blocks);
}

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs argv with the process environment plus `env`, collecting output; never throws on exit codes. */
export function runCommand(argv: string[], env: Record<string, string>, cwd: string, timeoutMs = 600_000): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0], argv.slice(1), { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
    });
  });
}
