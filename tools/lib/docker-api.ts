/**
 * Minimal Docker Engine API client over the unix socket (axios `socketPath`, no dockerode).
 * Only what the gateway CLI and its tests need: list containers, exec with demultiplexed output,
 * volumes, and short-lived helper containers (create / archive upload / start / wait / remove).
 */
import axios, { AxiosInstance, AxiosResponse } from 'axios';

export interface ContainerSummary {
  Id: string;
  Names: string[];
  Image: string;
  State: string;
  Status: string;
  Labels: Record<string, string>;
}

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export interface VolumeInfo {
  Name: string;
  Driver: string;
  Mountpoint: string;
  Labels: Record<string, string> | null;
}

export interface CreateContainerSpec {
  Image: string;
  Cmd?: string[];
  Entrypoint?: string[];
  User?: string;
  Labels?: Record<string, string>;
  HostConfig?: { Binds?: string[]; AutoRemove?: boolean; NetworkMode?: string };
}

export class DockerApiError extends Error {
  constructor(
    message: string,
    readonly statusCode?: number,
  ) {
    super(message);
    this.name = 'DockerApiError';
  }
}

/** Socket path from DOCKER_HOST (unix:// only) or the default. */
export function defaultSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  const host = env.DOCKER_HOST;
  if (!host) return '/var/run/docker.sock';
  if (host.startsWith('unix://')) return host.slice('unix://'.length);
  throw new DockerApiError(`DOCKER_HOST=${host} is not supported (unix:// sockets only)`);
}

/** Splits Docker's multiplexed raw stream (8-byte frame headers) into stdout and stderr. */
export function demuxDockerStream(buf: Buffer): { stdout: string; stderr: string } {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  let off = 0;
  while (off + 8 <= buf.length) {
    const type = buf[off];
    const size = buf.readUInt32BE(off + 4);
    const payload = buf.subarray(off + 8, off + 8 + size);
    if (type === 2) err.push(payload);
    else out.push(payload);
    off += 8 + size;
  }
  return { stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') };
}

function messageOf(res: AxiosResponse<unknown>): string {
  const data = res.data;
  if (data && typeof data === 'object' && 'message' in data && typeof (data as { message: unknown }).message === 'string') {
    return (data as { message: string }).message;
  }
  if (Buffer.isBuffer(data)) {
    try {
      const parsed: unknown = JSON.parse(data.toString('utf8'));
      if (parsed && typeof parsed === 'object' && 'message' in parsed) return String((parsed as { message: unknown }).message);
    } catch {
      return data.toString('utf8').slice(0, 300);
    }
  }
  return typeof data === 'string' ? data.slice(0, 300) : `HTTP ${res.status}`;
}

export class DockerApi {
  private readonly http: AxiosInstance;

  constructor(readonly socketPath: string = defaultSocketPath(), timeoutMs = 120_000) {
    this.http = axios.create({
      socketPath,
      baseURL: 'http://docker',
      timeout: timeoutMs,
      validateStatus: () => true,
      maxContentLength: 256 * 1024 * 1024,
      maxBodyLength: 1024 * 1024 * 1024,
    });
  }

  private async call<T>(method: 'GET' | 'POST' | 'PUT' | 'DELETE', url: string, what: string, opts: {
    data?: unknown;
    params?: Record<string, string>;
    ok?: number[];
    raw?: boolean;
    headers?: Record<string, string>;
    timeoutMs?: number;
  } = {}): Promise<AxiosResponse<T>> {
    let res: AxiosResponse<T>;
    try {
      res = await this.http.request<T>({
        method,
        url,
        data: opts.data,
        params: opts.params,
        headers: opts.headers,
        timeout: opts.timeoutMs,
        responseType: opts.raw ? 'arraybuffer' : 'json',
      });
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      const hint = e.code === 'ENOENT' || e.code === 'ECONNREFUSED' ? ` (is dockerd running? socket ${this.socketPath})` : '';
      throw new DockerApiError(`${what}: ${e.message}${hint}`);
    }
    const ok = opts.ok ?? [200, 201, 204];
    if (!ok.includes(res.status)) {
      throw new DockerApiError(`${what}: HTTP ${res.status}: ${messageOf(res as AxiosResponse<unknown>)}`, res.status);
    }
    return res;
  }

  async ping(): Promise<void> {
    await this.call<unknown>('GET', '/_ping', 'docker ping');
  }

  async listContainers(filters: Record<string, string[]>, all = false): Promise<ContainerSummary[]> {
    const res = await this.call<ContainerSummary[]>('GET', '/containers/json', 'list containers', {
      params: { all: all ? '1' : '0', filters: JSON.stringify(filters) },
    });
    return res.data;
  }

  /** Runs a command in a running container and collects its output and exit code. */
  async exec(containerId: string, cmd: string[], timeoutMs = 120_000): Promise<ExecResult> {
    const created = await this.call<{ Id: string }>('POST', `/containers/${encodeURIComponent(containerId)}/exec`, `exec create in ${containerId}`, {
      data: { AttachStdout: true, AttachStderr: true, AttachStdin: false, Tty: false, Cmd: cmd },
    });
    const execId = created.data.Id;
    const started = await this.call<ArrayBuffer>('POST', `/exec/${execId}/start`, `exec start in ${containerId}`, {
      data: { Detach: false, Tty: false },
      raw: true,
      timeoutMs,
    });
    const { stdout, stderr } = demuxDockerStream(Buffer.from(started.data));
    const inspected = await this.call<{ ExitCode: number | null; Running: boolean }>('GET', `/exec/${execId}/json`, 'exec inspect');
    return { exitCode: inspected.data.ExitCode ?? -1, stdout, stderr };
  }

  async inspectVolume(name: string): Promise<VolumeInfo | undefined> {
    const res = await this.call<VolumeInfo>('GET', `/volumes/${encodeURIComponent(name)}`, `inspect volume ${name}`, { ok: [200, 404] });
    return res.status === 404 ? undefined : res.data;
  }

  async imageExists(name: string): Promise<boolean> {
    const res = await this.call<unknown>('GET', `/images/${encodeURIComponent(name)}/json`, `inspect image ${name}`, { ok: [200, 404] });
    return res.status === 200;
  }

  async createContainer(spec: CreateContainerSpec, name?: string): Promise<string> {
    const res = await this.call<{ Id: string }>('POST', '/containers/create', `create container from ${spec.Image}`, {
      data: spec,
      params: name ? { name } : undefined,
    });
    return res.data.Id;
  }

  /** Extracts a tar archive into the container's filesystem at `dir` (works on stopped containers and their volumes). */
  async putArchive(containerId: string, dir: string, tarball: Buffer): Promise<void> {
    await this.call<unknown>('PUT', `/containers/${containerId}/archive`, `upload to ${dir}`, {
      params: { path: dir },
      data: tarball,
      headers: { 'Content-Type': 'application/x-tar' },
    });
  }

  async startContainer(id: string): Promise<void> {
    await this.call<unknown>('POST', `/containers/${id}/start`, 'start container', { ok: [204, 304] });
  }

  async waitContainer(id: string, timeoutMs = 60_000): Promise<number> {
    const res = await this.call<{ StatusCode: number }>('POST', `/containers/${id}/wait`, 'wait container', { timeoutMs });
    return res.data.StatusCode;
  }

  async containerLogs(id: string): Promise<string> {
    const res = await this.call<ArrayBuffer>('GET', `/containers/${id}/logs`, 'container logs', {
      params: { stdout: '1', stderr: '1' },
      raw: true,
    });
    const { stdout, stderr } = demuxDockerStream(Buffer.from(res.data));
    return stdout + stderr;
  }

  async removeContainer(id: string): Promise<void> {
    await this.call<unknown>('DELETE', `/containers/${id}`, 'remove container', { params: { force: '1', v: '1' }, ok: [204, 404] });
  }
}

/** Container name without Docker's leading slash. */
export function containerName(c: ContainerSummary): string {
  return (c.Names[0] ?? c.Id.slice(0, 12)).replace(/^\//, '');
}
