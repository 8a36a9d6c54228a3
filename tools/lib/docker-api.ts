/**
 * Minimal Docker Engine API client (axios over our own http.Agent, no dockerode) for the three
 * kinds of Docker host a stack names: `unix:///path`, `tcp://host:port` (plain HTTP: trusted
 * networks only) and `ssh://[user@]host[:port]` (as the docker CLI does: `ssh … docker system
 * dial-stdio` and HTTP over its stdio, so the remote needs only sshd and the docker client).
 * Only what the gateway CLI and its tests need: list containers, exec with demultiplexed output,
 * a signal and a followed log, volumes, and short-lived helper containers (create / archive upload /
 * start / wait / remove). Every error names the host; a host that cannot be reached at all is
 * `HOST_UNREACHABLE`. Host URLs and connections: tools/lib/docker-transport.ts.
 */
import axios, { AxiosInstance, AxiosResponse } from 'axios';
import { Readable } from 'stream';
import { DockerLineDecoder, demuxDockerStream } from './docker-stream';
import { DockerApiError, DockerHost, HostAgent, defaultDockerHost, isUnreachable, parseDockerHost } from './docker-transport';

export { demuxDockerStream } from './docker-stream';
export { DEFAULT_DOCKER_HOST, DockerApiError, defaultDockerHost, defaultSocketPath, parseDockerHost, sshCommand } from './docker-transport';
export type { DockerErrorCode, DockerHost } from './docker-transport';

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

export interface DockerApiOptions {
  /** Per-request timeout (ms) unless a call sets its own. */
  timeoutMs?: number;
  /** Time to establish a connection (TCP connect, ssh ConnectTimeout). */
  connectTimeoutMs?: number;
  env?: NodeJS.ProcessEnv;
}

/** A followed container log (DockerApi.followLogs). */
export interface LogFollower {
  /** Settles when the stream ended (the container stopped, the connection broke, or close()). */
  readonly ended: Promise<void>;
  close(): void;
}

async function readWhole(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(Buffer.from(c as Buffer));
  return Buffer.concat(chunks);
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
  private readonly agent: HostAgent;
  readonly host: DockerHost;

  /** `host`: a Docker host URL (default: DOCKER_HOST, else the local socket) or a bare socket path. */
  constructor(host: string = defaultDockerHost(), opts: DockerApiOptions = {}) {
    this.host = parseDockerHost(host.startsWith('/') ? `unix://${host}` : host);
    this.agent = new HostAgent(this.host, opts.connectTimeoutMs ?? 10_000, opts.env ?? process.env);
    this.http = axios.create({
      httpAgent: this.agent,
      baseURL: 'http://docker',
      proxy: false,
      timeout: opts.timeoutMs ?? 120_000,
      validateStatus: () => true,
      maxContentLength: 256 * 1024 * 1024,
      maxBodyLength: 1024 * 1024 * 1024,
    });
  }

  /**
   * Connections this client opens to its host at most (more requests queue). A followed log holds
   * one for as long as it is followed: callers keep fewer streams open than this, so the requests
   * that end them (a signal) still get through.
   */
  get maxConnections(): number {
    return this.agent.maxSockets;
  }

  /** The host URL, as given (for reports and messages). */
  get url(): string {
    return this.host.url;
  }

  /** Closes kept-alive connections (for ssh: ends the ssh processes). */
  close(): void {
    this.agent.destroy();
  }

  private async call<T>(method: 'GET' | 'POST' | 'PUT' | 'DELETE', url: string, what: string, opts: {
    data?: unknown;
    params?: Record<string, string>;
    ok?: number[];
    raw?: boolean;
    headers?: Record<string, string>;
    timeoutMs?: number;
    /** The body as a stream (a followed log); an error status still reads it whole for its message. */
    stream?: boolean;
    signal?: AbortSignal;
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
        signal: opts.signal,
        responseType: opts.stream ? 'stream' : opts.raw ? 'arraybuffer' : 'json',
      });
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (isUnreachable(err)) {
        const hint = this.host.kind === 'unix' && (e.code === 'ENOENT' || e.code === 'ECONNREFUSED') ? ' (is dockerd running?)' : '';
        throw new DockerApiError(`Docker host ${this.host.url} unreachable: ${e.message}${hint}`, undefined, 'HOST_UNREACHABLE', this.host.url);
      }
      throw new DockerApiError(`${this.host.url}: ${what}: ${e.message}`, undefined, 'DOCKER_ERROR', this.host.url);
    }
    const ok = opts.ok ?? [200, 201, 204];
    if (opts.stream && !ok.includes(res.status)) res = { ...res, data: await readWhole(res.data as Readable) as T };
    if (!ok.includes(res.status)) {
      throw new DockerApiError(`${this.host.url}: ${what}: HTTP ${res.status}: ${messageOf(res as AxiosResponse<unknown>)}`, res.status, 'DOCKER_ERROR', this.host.url);
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

  /** Sends a signal (e.g. SIGUSR1) to a running container's main process. */
  async kill(containerId: string, signal: string): Promise<void> {
    await this.call<unknown>('POST', `/containers/${encodeURIComponent(containerId)}/kill`, `signal ${signal} to ${containerId}`, { params: { signal } });
  }

  /**
   * Follows a container's log (stdout and stderr of a container without a TTY) from now on: resolves
   * once the engine answered, so every line written after that reaches `onLine`, in order. `ended`
   * settles when the stream ends (the container stopped, the connection broke, or close()).
   */
  async followLogs(containerId: string, onLine: (line: string) => void): Promise<LogFollower> {
    const abort = new AbortController();
    const what = `follow the log of ${containerId}`;
    const res = await this.call<Readable>('GET', `/containers/${encodeURIComponent(containerId)}/logs`, what, {
      params: { follow: '1', stdout: '1', stderr: '1', tail: '0' },
      stream: true,
      signal: abort.signal,
      timeoutMs: 0,
    });
    const body = res.data;
    const decoder = new DockerLineDecoder();
    const ended = new Promise<void>((resolve) => {
      body.on('data', (chunk: Buffer) => decoder.push(chunk).forEach(onLine));
      const done = (): void => {
        decoder.end().forEach(onLine);
        resolve();
      };
      body.on('end', done);
      body.on('error', done);
      body.on('close', done);
    });
    return { ended, close: () => abort.abort() };
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
