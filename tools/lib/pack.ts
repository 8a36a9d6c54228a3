/**
 * `pack`: turns a workspace build of app-gateway into gateway-<env>.tar.gz:
 *   app-gateway/main.js (+ main.js.map), app/{bin,lib,main.sh,config.conf}, BUILD_INFO.txt
 * React-bearing bundles are rejected before anything is written. The tarball is written to a
 * temporary name in the destination directory and renamed, so the build server never serves a
 * partial file; into a Docker volume either directly at its mountpoint (CLI on the Docker host) or
 * through a short-lived helper container (archive upload + rename inside the volume). With several
 * Docker hosts (each gateway host keeps its own copy of the builds volume, served by its own build
 * server), the same tarball (one build id) is written to the volume of every host, in parallel; a
 * host that fails is reported on its own and does not stop the others.
 */
import { execFileSync } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as tar from 'tar';
import { buildTarballName, imageName, isValidEnvName } from '../../runtime/naming';
import { BundleReport, checkBundle } from './bundle-check';
import { DockerApi, DockerApiError } from './docker-api';

/** Where a workspace keeps the gateway scripts (the original monorepo's location). */
export const WORKSPACE_APP_DIR = path.join('docker-images', 'backend-images', 'gateway', 'app');
/** Where a workspace's build puts the gateway bundle. */
export const WORKSPACE_BUNDLE = path.join('dist', 'packages', 'app-gateway', 'main.js');
const APP_ENTRIES = ['bin', 'lib', 'main.sh', 'config.conf'] as const;

export type VolumeWriteMode = 'auto' | 'direct' | 'helper';

export interface PackOptions {
  env: string;
  workspace: string;
  /** Output directory (exclusive with volume). */
  outDir?: string;
  /** Docker volume name (exclusive with outDir). */
  volume?: string;
  /** Gateway scripts directory; default: the workspace's, else this repository's images/gateway/app. */
  appDir?: string;
  volumeMode?: VolumeWriteMode;
  /** Image for the helper container (needs `mv`); default demiurge-<env>-build-server. */
  helperImage?: string;
  docker?: DockerApi;
  /** Docker hosts whose volume `volume` receives the tarball (default: [docker ?? the default host]). */
  hosts?: readonly PackHost[];
  /** Progress lines. */
  log?: (line: string) => void;
}

/** A Docker host to write the builds volume on: its report name and its API client. */
export interface PackHost {
  name: string;
  docker: DockerApi;
}

/**
 * Per-host failure code:
 *   HOST_UNREACHABLE      no connection to the host's engine
 *   VOLUME_MISSING        the volume does not exist on that host
 *   HELPER_IMAGE_MISSING  the helper image is not on that host
 *   WRITE_FAILED          the tarball could not be moved into place (mountpoint or helper)
 *   DOCKER_ERROR          any other engine error
 */
export type PackHostFailureCode = 'HOST_UNREACHABLE' | 'VOLUME_MISSING' | 'HELPER_IMAGE_MISSING' | 'WRITE_FAILED' | 'DOCKER_ERROR';

export interface HostPackResult {
  host: string;
  url: string;
  ok: boolean;
  code?: PackHostFailureCode;
  message?: string;
  /** volume:<name>/<file> when written. */
  destination?: string;
  via?: 'volume-mountpoint' | 'helper-container';
  ms: number;
}

export interface PackResult {
  /** False when the tarball could not be written on some host (see hosts). */
  ok: boolean;
  buildId: string;
  tarball: string;
  /** Where it was written: a path, or volume:<name>/<file> (the first host that succeeded). */
  destination: string;
  bytes: number;
  files: Record<string, number>;
  gitCommit?: string;
  appDir: string;
  via: 'directory' | 'volume-mountpoint' | 'helper-container';
  /** Volume mode: one entry per Docker host, in the order given. */
  hosts?: HostPackResult[];
  ms: number;
}

export class PackError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
    readonly report?: BundleReport,
  ) {
    super(message);
    this.name = 'PackError';
  }
}

export const EXIT_USAGE = 2;
export const EXIT_REJECTED = 3;
export const EXIT_FAILED = 1;

/** This repository's default gateway scripts (images/gateway/app), found from tools/ or dist/tools/. */
export function defaultAppDir(): string | undefined {
  let dir = __dirname;
  for (let i = 0; i < 5; i++) {
    const candidate = path.join(dir, 'images', 'gateway', 'app');
    if (fs.existsSync(path.join(candidate, 'main.sh'))) return candidate;
    dir = path.dirname(dir);
  }
  return undefined;
}

export function newBuildId(now = new Date()): string {
  const stamp = now.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  return `${stamp}-${crypto.randomBytes(4).toString('hex')}`;
}

function git(workspace: string, args: string[]): string | undefined {
  try {
    return execFileSync('git', ['-C', workspace, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return undefined;
  }
}

function walkFiles(root: string, rel = ''): string[] {
  const out: string[] = [];
  for (const entry of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${entry.name}` : entry.name;
    if (entry.isDirectory()) out.push(...walkFiles(root, r));
    else if (entry.isFile()) out.push(r);
  }
  return out.sort();
}

function resolveAppDir(opts: PackOptions): string {
  const candidates = opts.appDir
    ? [path.resolve(opts.appDir)]
    : [path.join(path.resolve(opts.workspace), WORKSPACE_APP_DIR), defaultAppDir()].filter((d): d is string => !!d);
  for (const c of candidates) {
    if (fs.existsSync(path.join(c, 'main.sh'))) return c;
  }
  throw new PackError(
    opts.appDir ? `--app-dir ${opts.appDir} has no main.sh` : `no gateway scripts found (looked in ${candidates.join(', ')})`,
    EXIT_USAGE,
  );
}

/** Stages the tarball layout in a temp dir and returns it with BUILD_INFO.txt written. */
function stage(opts: PackOptions, appDir: string, buildId: string, bundle: string): { dir: string; files: Record<string, number>; gitCommit?: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gateway-pack-'));
  fs.mkdirSync(path.join(dir, 'app-gateway'));
  fs.copyFileSync(bundle, path.join(dir, 'app-gateway', 'main.js'));
  if (fs.existsSync(`${bundle}.map`)) fs.copyFileSync(`${bundle}.map`, path.join(dir, 'app-gateway', 'main.js.map'));
  fs.mkdirSync(path.join(dir, 'app'));
  for (const entry of APP_ENTRIES) {
    const src = path.join(appDir, entry);
    if (fs.existsSync(src)) fs.cpSync(src, path.join(dir, 'app', entry), { recursive: true, dereference: true });
  }
  const files: Record<string, number> = {};
  for (const f of walkFiles(dir)) files[f] = fs.statSync(path.join(dir, f)).size;

  const ws = path.resolve(opts.workspace);
  const inRepo = git(ws, ['rev-parse', '--is-inside-work-tree']) === 'true';
  const gitCommit = inRepo ? git(ws, ['rev-parse', 'HEAD']) : undefined;
  const lines = [
    `build_id=${buildId}`,
    `environment=${opts.env}`,
    `created_at=${new Date().toISOString()}`,
    `git_commit=${gitCommit ?? 'none'}`,
  ];
  if (inRepo) {
    lines.push(`git_branch=${git(ws, ['rev-parse', '--abbrev-ref', 'HEAD']) ?? 'unknown'}`);
    lines.push(`git_dirty=${(git(ws, ['status', '--porcelain', '--untracked-files=no']) ?? '') !== ''}`);
  }
  lines.push(`workspace=${ws}`, `app_scripts=${appDir}`, `packed_by=demiurge-gateway pack on ${os.hostname()}`, '# size <bytes> <path>');
  for (const [f, size] of Object.entries(files)) lines.push(`size ${size} ${f}`);
  fs.writeFileSync(path.join(dir, 'BUILD_INFO.txt'), lines.join('\n') + '\n', { mode: 0o644 });
  return { dir, files, gitCommit };
}

/** Flushes a written file to disk and makes it world-readable (the build server serves it as another user). */
function fsyncAndPublish(file: string): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.chmodSync(file, 0o644);
}

async function writeTarball(stageDir: string, target: string): Promise<number> {
  await tar.c({ gzip: true, cwd: stageDir, portable: true, file: target }, ['BUILD_INFO.txt', 'app-gateway', 'app']);
  fsyncAndPublish(target);
  return fs.statSync(target).size;
}

/**
 * Writes `dir/name` atomically: `write` fills a temp name (a dotfile the build
 * server never serves), which is renamed over `name`; on failure it is removed.
 */
async function replaceAtomically<T>(dir: string, name: string, write: (tmp: string) => T | Promise<T>): Promise<T> {
  const tmp = path.join(dir, `.${name}.tmp-${process.pid}-${crypto.randomBytes(3).toString('hex')}`);
  try {
    const result = await write(tmp);
    fs.renameSync(tmp, path.join(dir, name));
    return result;
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
}

/** Packs `stageDir` into `dir/name` atomically. */
function writeAtomically(stageDir: string, dir: string, name: string): Promise<number> {
  return replaceAtomically(dir, name, (tmp) => writeTarball(stageDir, tmp));
}

/** Copies an already written tarball into `dir` atomically (temp dotfile, fsync, rename). */
function copyAtomically(tarball: string, dir: string, name: string): Promise<void> {
  return replaceAtomically(dir, name, (tmp) => {
    fs.copyFileSync(tarball, tmp);
    fsyncAndPublish(tmp);
  });
}

class HostWriteError extends Error {
  constructor(readonly code: PackHostFailureCode, message: string) {
    super(message);
  }
}

/** Uploads the tar-wrapped tarball (as `tmpName`) into the volume and renames it inside a helper container. */
async function writeViaHelper(docker: DockerApi, image: string, volume: string, wrapped: Buffer, tmpName: string, name: string): Promise<void> {
  if (!(await docker.imageExists(image))) {
    throw new HostWriteError('HELPER_IMAGE_MISSING', `helper image ${image} not found on ${docker.url} (needs sh and mv; set --helper-image)`);
  }
  let id: string | undefined;
  try {
    id = await docker.createContainer({
      Image: image,
      // mv is a rename inside the volume (atomic); on failure the temp file is removed.
      Entrypoint: ['sh', '-c', 'mv -f "$0" "$1" || { rm -f "$0"; exit 1; }'],
      Cmd: [`/builds/${tmpName}`, `/builds/${name}`],
      User: '0:0',
      Labels: { 'demiurge.role': 'pack-helper' },
      HostConfig: { Binds: [`${volume}:/builds`] },
    });
    await docker.putArchive(id, '/builds', wrapped);
    await docker.startContainer(id);
    const code = await docker.waitContainer(id);
    if (code !== 0) throw new HostWriteError('WRITE_FAILED', `helper container failed to move the tarball into place on ${docker.url} (exit ${code}): ${await docker.containerLogs(id)}`);
  } finally {
    if (id) await docker.removeContainer(id).catch(() => undefined);
  }
}

interface VolumeWrite {
  volume: string;
  name: string;
  mode: VolumeWriteMode;
  helperImage: string;
  /** The finished tarball on this machine. */
  tarball: string;
  /** The same, wrapped in a tar under `tmpName` (Docker's archive upload takes a tar). */
  wrapped: Buffer;
  tmpName: string;
  log: (line: string) => void;
}

async function writeToHost(h: PackHost, w: VolumeWrite): Promise<HostPackResult> {
  const t0 = Date.now();
  const base = { host: h.name, url: h.docker.url };
  try {
    const info = await h.docker.inspectVolume(w.volume);
    if (!info) throw new HostWriteError('VOLUME_MISSING', `docker volume ${w.volume} does not exist on ${h.docker.url}`);
    // The mountpoint is only ours to write when the engine is local (a unix socket on this machine).
    let direct = false;
    if (w.mode !== 'helper' && h.docker.host.kind === 'unix') {
      try {
        fs.accessSync(info.Mountpoint, fs.constants.W_OK);
        direct = fs.statSync(info.Mountpoint).isDirectory();
      } catch {
        direct = false;
      }
    }
    if (!direct && w.mode === 'direct') {
      throw new HostWriteError('WRITE_FAILED', h.docker.host.kind === 'unix'
        ? `volume mountpoint ${info.Mountpoint} is not writable from here`
        : `${h.docker.url} is not a local engine: its volume mountpoint cannot be written from here (use --volume-mode helper or auto)`);
    }
    let via: HostPackResult['via'];
    if (direct) {
      try {
        await copyAtomically(w.tarball, info.Mountpoint, w.name);
      } catch (err) {
        throw new HostWriteError('WRITE_FAILED', `writing ${info.Mountpoint}/${w.name}: ${(err as Error).message}`);
      }
      via = 'volume-mountpoint';
    } else {
      w.log(`${h.name}: writing through a helper container (${w.helperImage})`);
      await writeViaHelper(h.docker, w.helperImage, w.volume, w.wrapped, w.tmpName, w.name);
      via = 'helper-container';
    }
    return { ...base, ok: true, destination: `volume:${w.volume}/${w.name}`, via, ms: Date.now() - t0 };
  } catch (err) {
    const code: PackHostFailureCode = err instanceof HostWriteError
      ? err.code
      : err instanceof DockerApiError && err.code === 'HOST_UNREACHABLE' ? 'HOST_UNREACHABLE' : 'DOCKER_ERROR';
    return { ...base, ok: false, code, message: (err as Error).message, ms: Date.now() - t0 };
  }
}

export async function pack(opts: PackOptions): Promise<PackResult> {
  const t0 = Date.now();
  const log = opts.log ?? (() => undefined);
  if (!isValidEnvName(opts.env)) throw new PackError(`invalid environment name: ${JSON.stringify(opts.env)}`, EXIT_USAGE);
  if (!!opts.outDir === !!opts.volume) throw new PackError('give exactly one of --out <dir> or --volume <name>', EXIT_USAGE);
  const ws = path.resolve(opts.workspace);
  if (!fs.existsSync(ws) || !fs.statSync(ws).isDirectory()) throw new PackError(`workspace ${ws} is not a directory`, EXIT_USAGE);
  const bundle = path.join(ws, WORKSPACE_BUNDLE);
  if (!fs.existsSync(bundle)) throw new PackError(`no bundle at ${bundle} (build app-gateway first)`, EXIT_USAGE);

  // 1. Validation first: nothing is written for a rejected bundle.
  const report = await checkBundle(bundle);
  if (report.issues.length > 0) {
    throw new PackError(`${path.relative(ws, bundle)} requires React (${report.issues.length} occurrence(s))`, EXIT_REJECTED, report);
  }
  log(`✅ ${path.relative(ws, bundle)}: React-free (${report.lines} lines)`);

  const appDir = resolveAppDir(opts);
  const buildId = newBuildId();
  const name = buildTarballName(opts.env);
  const staged = stage(opts, appDir, buildId, bundle);
  try {
    let bytes: number;
    let destination: string;
    let via: PackResult['via'];
    let hostResults: HostPackResult[] | undefined;
    if (opts.outDir) {
      const out = path.resolve(opts.outDir);
      fs.mkdirSync(out, { recursive: true });
      bytes = await writeAtomically(staged.dir, out, name);
      destination = path.join(out, name);
      via = 'directory';
    } else {
      const volume = opts.volume as string;
      const hosts: readonly PackHost[] = opts.hosts ?? [{ name: 'default', docker: opts.docker ?? new DockerApi() }];
      // One tarball for every host: the same bytes and build id everywhere.
      const local = fs.mkdtempSync(path.join(os.tmpdir(), 'gateway-upload-'));
      try {
        const tmpName = `.${name}.tmp-${process.pid}-${crypto.randomBytes(3).toString('hex')}`;
        const tarball = path.join(local, tmpName);
        bytes = await writeTarball(staged.dir, tarball);
        const chunks: Buffer[] = [];
        for await (const chunk of tar.c({ cwd: local, portable: true }, [tmpName])) chunks.push(chunk as Buffer);
        const write: VolumeWrite = {
          volume, name, mode: opts.volumeMode ?? 'auto', helperImage: opts.helperImage ?? imageName(opts.env, 'build-server'),
          tarball, wrapped: Buffer.concat(chunks), tmpName, log,
        };
        hostResults = await Promise.all(hosts.map((h) => writeToHost(h, write)));
      } finally {
        fs.rmSync(local, { recursive: true, force: true });
      }
      const first = hostResults.find((r) => r.ok);
      destination = first?.destination ?? `volume:${volume}/${name}`;
      via = first?.via ?? 'helper-container';
    }
    const ok = hostResults === undefined || hostResults.every((r) => r.ok);
    return { ok, buildId, tarball: name, destination, bytes, files: staged.files, gitCommit: staged.gitCommit, appDir, via, hosts: hostResults, ms: Date.now() - t0 };
  } finally {
    fs.rmSync(staged.dir, { recursive: true, force: true });
  }
}
