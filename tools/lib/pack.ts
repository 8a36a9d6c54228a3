/**
 * `pack`: turns a workspace build of app-gateway into gateway-<env>.tar.gz:
 *   app-gateway/main.js (+ main.js.map), app/{bin,lib,main.sh,config.conf}, BUILD_INFO.txt
 * React-bearing bundles are rejected before anything is written. The tarball is written to a
 * temporary name in the destination directory and renamed, so the build server never serves a
 * partial file; into a Docker volume either directly at its mountpoint (CLI on the Docker host) or
 * through a short-lived helper container (archive upload + rename inside the volume).
 */
import { execFileSync } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as tar from 'tar';
import { buildTarballName, imageName, isValidEnvName } from '../../runtime/naming';
import { BundleReport, checkBundle } from './bundle-check';
import { DockerApi } from './docker-api';

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
  /** Progress lines. */
  log?: (line: string) => void;
}

export interface PackResult {
  buildId: string;
  tarball: string;
  /** Where it was written: a path, or volume:<name>/<file>. */
  destination: string;
  bytes: number;
  files: Record<string, number>;
  gitCommit?: string;
  appDir: string;
  via: 'directory' | 'volume-mountpoint' | 'helper-container';
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

async function writeTarball(stageDir: string, target: string): Promise<number> {
  await tar.c({ gzip: true, cwd: stageDir, portable: true, file: target }, ['BUILD_INFO.txt', 'app-gateway', 'app']);
  const fd = fs.openSync(target, 'r+');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.chmodSync(target, 0o644);
  return fs.statSync(target).size;
}

/** Writes into `dir` atomically: temp name (a dotfile the build server never serves) + rename. */
async function writeAtomically(stageDir: string, dir: string, name: string): Promise<number> {
  const tmp = path.join(dir, `.${name}.tmp-${process.pid}-${crypto.randomBytes(3).toString('hex')}`);
  try {
    const bytes = await writeTarball(stageDir, tmp);
    fs.renameSync(tmp, path.join(dir, name));
    return bytes;
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
}

async function writeViaHelper(docker: DockerApi, image: string, volume: string, stageDir: string, name: string): Promise<number> {
  if (!(await docker.imageExists(image))) {
    throw new PackError(`helper image ${image} not found (needs sh and mv; set --helper-image)`, EXIT_FAILED);
  }
  const local = fs.mkdtempSync(path.join(os.tmpdir(), 'gateway-upload-'));
  const tmpName = `.${name}.tmp-${process.pid}-${crypto.randomBytes(3).toString('hex')}`;
  let id: string | undefined;
  try {
    const bytes = await writeTarball(stageDir, path.join(local, tmpName));
    // Docker's archive upload takes a tar; wrap the tarball (as the temp name) in one.
    const chunks: Buffer[] = [];
    const stream = tar.c({ cwd: local, portable: true }, [tmpName]);
    for await (const chunk of stream) chunks.push(chunk as Buffer);
    id = await docker.createContainer({
      Image: image,
      // mv is a rename inside the volume (atomic); on failure the temp file is removed.
      Entrypoint: ['sh', '-c', 'mv -f "$0" "$1" || { rm -f "$0"; exit 1; }'],
      Cmd: [`/builds/${tmpName}`, `/builds/${name}`],
      User: '0:0',
      Labels: { 'demiurge.role': 'pack-helper' },
      HostConfig: { Binds: [`${volume}:/builds`] },
    });
    await docker.putArchive(id, '/builds', Buffer.concat(chunks));
    await docker.startContainer(id);
    const code = await docker.waitContainer(id);
    if (code !== 0) throw new PackError(`helper container failed to move the tarball into place (exit ${code}): ${await docker.containerLogs(id)}`, EXIT_FAILED);
    return bytes;
  } finally {
    if (id) await docker.removeContainer(id).catch(() => undefined);
    fs.rmSync(local, { recursive: true, force: true });
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
    if (opts.outDir) {
      const out = path.resolve(opts.outDir);
      fs.mkdirSync(out, { recursive: true });
      bytes = await writeAtomically(staged.dir, out, name);
      destination = path.join(out, name);
      via = 'directory';
    } else {
      const volume = opts.volume as string;
      const docker = opts.docker ?? new DockerApi();
      const info = await docker.inspectVolume(volume);
      if (!info) throw new PackError(`docker volume ${volume} does not exist`, EXIT_FAILED);
      const mode = opts.volumeMode ?? 'auto';
      let direct = false;
      if (mode !== 'helper') {
        try {
          fs.accessSync(info.Mountpoint, fs.constants.W_OK);
          direct = fs.statSync(info.Mountpoint).isDirectory();
        } catch {
          direct = false;
        }
        if (!direct && mode === 'direct') throw new PackError(`volume mountpoint ${info.Mountpoint} is not writable from here`, EXIT_FAILED);
      }
      if (direct) {
        bytes = await writeAtomically(staged.dir, info.Mountpoint, name);
        via = 'volume-mountpoint';
      } else {
        const image = opts.helperImage ?? imageName(opts.env, 'build-server');
        log(`writing through a helper container (${image})`);
        bytes = await writeViaHelper(docker, image, volume, staged.dir, name);
        via = 'helper-container';
      }
      destination = `volume:${volume}/${name}`;
    }
    return { buildId, tarball: name, destination, bytes, files: staged.files, gitCommit: staged.gitCommit, appDir, via, ms: Date.now() - t0 };
  } finally {
    fs.rmSync(staged.dir, { recursive: true, force: true });
  }
}
