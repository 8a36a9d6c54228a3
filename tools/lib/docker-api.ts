/**
 * Minimal Docker Engine API client (axios over our own http.Agent, no dockerode) for the three
 * kinds of Docker host a stack names: `unix:///path`, `tcp://host:port` (plain HTTP: trusted
 * networks only) and `ssh://[user@]host[:port]` (as the docker CLI does: `ssh … docker system
 * dial-stdio` and HTTP over its stdio, so the remote needs only sshd and the docker client).
 * Only what the gateway CLI and its tests need: list containers, exec with demultiplexed output,
 * volumes, and short-lived helper containers (create / archive upload / start / wait / remove).
 * Every error names the host; a host that cannot be reached at all is `HOST_UNREACHABLE`.
 */
import axios, { AxiosInstance, AxiosResponse } from 'axios';
import { ChildProcess, spawn } from 'child_process';
import * as http from 'http';
import * as net from 'net';
import { Duplex, Readable } from 'stream';
import { DockerLineDecoder, demuxDockerStream } from './docker-stream';

export { demuxDockerStream } from './docker-stream';

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

/**
 * HOST_UNREACHABLE  no connection to the engine (refused, no route, timed out, ssh failed, no daemon behind ssh)
 * INVALID_HOST      the Docker host URL is not one of the supported forms
 * DOCKER_ERROR      the engine answered with an error, or the connection broke mid-request
 */
export type DockerErrorCode = 'HOST_UNREACHABLE' | 'INVALID_HOST' | 'DOCKER_ERROR';

export class DockerApiError extends Error {
  constructor(
    message: string,
    readonly statusCode?: number,
    readonly code: DockerErrorCode = 'DOCKER_ERROR',
    /** The Docker host URL the error is about. */
    readonly host?: string,
  ) {
    super(message);
    this.name = 'DockerApiError';
  }
}

export type DockerHost =
  | { kind: 'unix'; url: string; socketPath: string }
  | { kind: 'tcp'; url: string; host: string; port: number }
  | { kind: 'ssh'; url: string; user?: string; host: string; port?: number };

export const DEFAULT_DOCKER_HOST = 'unix:///var/run/docker.sock';

const TCP_RE = /^tcp:\/\/(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):([0-9]{1,5})\/?$/;
const SSH_RE = /^ssh:\/\/(?:([A-Za-z0-9._][A-Za-z0-9._-]*)@)?([A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?\/?$/;

function validPort(p: string): number | undefined {
  const n = Number(p);
  return Number.isInteger(n) && n >= 1 && n <= 65535 ? n : undefined;
}

/** Parses a Docker host URL (`unix:///path`, `tcp://host:port`, `ssh://[user@]host[:port]`). */
export function parseDockerHost(url: string): DockerHost {
  const bad = (why: string): DockerApiError =>
    new DockerApiError(`Docker host ${JSON.stringify(url)} ${why} (use unix:///path, tcp://host:port or ssh://[user@]host[:port])`, undefined, 'INVALID_HOST', url);
  if (url.startsWith('unix://')) {
    const socketPath = url.slice('unix://'.length);
    if (!socketPath.startsWith('/')) throw bad('needs an absolute socket path');
    return { kind: 'unix', url, socketPath };
  }
  if (url.startsWith('tcp://')) {
    const m = TCP_RE.exec(url);
    const port = m ? validPort(m[2]) : undefined;
    if (!m || port === undefined) throw bad('is not tcp://host:port');
    return { kind: 'tcp', url, host: m[1].replace(/^\[|\]$/g, ''), port };
  }
  if (url.startsWith('ssh://')) {
    const m = SSH_RE.exec(url);
    if (!m) throw bad('is not ssh://[user@]host[:port]');
    const port = m[3] === undefined ? undefined : validPort(m[3]);
    if (m[3] !== undefined && port === undefined) throw bad('has an invalid port');
    return { kind: 'ssh', url, user: m[1], host: m[2].replace(/^\[|\]$/g, ''), port };
  }
  throw bad('is not supported');
}

/** DOCKER_HOST, else the local socket. */
export function defaultDockerHost(env: NodeJS.ProcessEnv = process.env): string {
  return env.DOCKER_HOST && env.DOCKER_HOST !== '' ? env.DOCKER_HOST : DEFAULT_DOCKER_HOST;
}

/** Socket path of a unix:// DOCKER_HOST or the default (kept for callers that need a local socket). */
export function defaultSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  const h = parseDockerHost(defaultDockerHost(env));
  if (h.kind !== 'unix') throw new DockerApiError(`DOCKER_HOST=${h.url} is not a unix:// socket`, undefined, 'INVALID_HOST', h.url);
  return h.socketPath;
}

/**
 * The ssh command line for a host: BatchMode (never prompts), a connect timeout, then the
 * whitespace-separated DEMIURGE_SSH_OPTS (e.g. `-i /path/key -o UserKnownHostsFile=/path`), the
 * URL's user and port, and `docker system dial-stdio` on the remote side. The user's ssh config
 * (~/.ssh/config: IdentityFile, ProxyJump, ControlMaster…) applies as for any ssh.
 */
export function sshCommand(h: Extract<DockerHost, { kind: 'ssh' }>, env: NodeJS.ProcessEnv = process.env, connectTimeoutS = 10): string[] {
  const extra = (env.DEMIURGE_SSH_OPTS ?? '').split(/\s+/).filter(Boolean);
  return [
    'ssh', '-o', 'BatchMode=yes', '-o', `ConnectTimeout=${connectTimeoutS}`, '-T', ...extra,
    ...(h.user ? ['-l', h.user] : []),
    ...(h.port ? ['-p', String(h.port)] : []),
    '--', h.host, 'docker', 'system', 'dial-stdio',
  ];
}

/** Marks errors that mean "no connection to the engine at all". */
const UNREACHABLE = Symbol('docker-host-unreachable');
type Tagged = Error & { [UNREACHABLE]?: true; code?: string };

function tagUnreachable(err: Error): Error {
  (err as Tagged)[UNREACHABLE] = true;
  return err;
}

function isUnreachable(err: unknown): boolean {
  for (let e = err as (Tagged & { cause?: unknown }) | undefined, i = 0; e && i < 4; e = e.cause as typeof e, i++) {
    if (e[UNREACHABLE]) return true;
  }
  return false;
}

/**
 * HTTP over an `ssh … docker system dial-stdio` child process. Implements the bits of net.Socket
 * the http client and Agent use (setTimeout, setKeepAlive, setNoDelay, ref/unref).
 */
class SshStdioSocket extends Duplex {
  timeout = 0;
  private timer?: NodeJS.Timeout;
  private stderr = '';
  private received = 0;
  private killed = false;

  constructor(private readonly child: ChildProcess, url: string) {
    super();
    const { stdout, stdin, stderr } = child;
    if (!stdout || !stdin || !stderr) throw new Error('ssh spawned without pipes');
    stdout.on('data', (chunk: Buffer) => {
      this.received += chunk.length;
      this.touch();
      if (!this.push(chunk)) stdout.pause();
    });
    stderr.on('data', (chunk: Buffer) => { this.stderr = (this.stderr + chunk.toString('utf8')).slice(-2000); });
    stdin.on('error', () => undefined); // EPIPE when ssh dies; reported through 'close'
    child.on('error', (err) => this.destroy(tagUnreachable(new Error(`cannot run ssh for ${url}: ${err.message}`))));
    // 'close' comes after exit and after stdio ended: an ssh that failed is an error, not an EOF.
    child.on('close', (code, signal) => {
      if (this.destroyed) return;
      if (code === 0 || this.killed) {
        this.push(null);
        return;
      }
      const why = this.stderr.replace(/\r/g, '').trim().split('\n').filter(Boolean).slice(-3).join(' | ') || `ssh exited ${code ?? signal}`;
      const err = new Error(`ssh ${url}: ${why}`) as Tagged;
      err.code = 'ESSHEXIT';
      // No byte came back: ssh (or the daemon behind it) could not be reached at all.
      this.destroy(this.received === 0 ? tagUnreachable(err) : err);
    });
  }

  private touch(): void {
    if (this.timer) this.timer.refresh();
  }

  _read(): void {
    this.child.stdout?.resume();
  }

  _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.touch();
    // A write error (EPIPE) means ssh is gone: 'close' reports why, with its stderr.
    this.child.stdin?.write(chunk, () => cb());
  }

  _final(cb: (err?: Error | null) => void): void {
    this.child.stdin?.end(() => cb());
  }

  _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (this.timer) clearTimeout(this.timer);
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.killed = true;
      this.child.kill('SIGTERM');
    }
    cb(err);
  }

  setTimeout(ms: number, cb?: () => void): this {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.timeout = ms;
    if (cb) this.once('timeout', cb);
    if (ms > 0) {
      this.timer = setTimeout(() => this.emit('timeout'), ms);
      this.timer.unref();
    }
    return this;
  }

  setKeepAlive(): this {
    return this;
  }

  setNoDelay(): this {
    return this;
  }

  ref(): this {
    this.child.ref();
    for (const s of [this.child.stdin, this.child.stdout, this.child.stderr]) (s as unknown as net.Socket | null)?.ref?.();
    return this;
  }

  unref(): this {
    this.child.unref();
    for (const s of [this.child.stdin, this.child.stdout, this.child.stderr]) (s as unknown as net.Socket | null)?.unref?.();
    return this;
  }
}

/** One agent per host: connections by socket path, TCP (with a connect timeout) or ssh. */
class HostAgent extends http.Agent {
  constructor(private readonly target: DockerHost, private readonly connectTimeoutMs: number, private readonly env: NodeJS.ProcessEnv) {
    super({ keepAlive: true, maxSockets: target.kind === 'ssh' ? 8 : 32 });
  }

  createConnection(): Duplex {
    const t = this.target;
    if (t.kind === 'ssh') {
      const [cmd, ...args] = sshCommand(t, this.env, Math.max(1, Math.ceil(this.connectTimeoutMs / 1000)));
      const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env: this.env });
      return new SshStdioSocket(child, t.url);
    }
    const sock = t.kind === 'unix' ? net.connect({ path: t.socketPath }) : net.connect({ host: t.host, port: t.port });
    let connected = false;
    const timer = setTimeout(() => {
      const err = new Error(`connect to ${t.url} timed out after ${this.connectTimeoutMs} ms`) as Tagged;
      err.code = 'ECONNECTTIMEOUT';
      sock.destroy(tagUnreachable(err));
    }, this.connectTimeoutMs);
    timer.unref();
    sock.once('connect', () => { connected = true; clearTimeout(timer); });
    sock.once('close', () => clearTimeout(timer));
    sock.prependOnceListener('error', (err) => { if (!connected) tagUnreachable(err); });
    return sock;
  }
}

export interface DockerApiOptions {
  /** Per-request timeout (ms) unless a call sets its own. */
  timeoutMs?: number;
  /** Time to establish a connection (TCP connect, ssh ConnectTimeout). */
  connectTimeoutMs?: number;
  env?: NodeJS.ProcessEnv;
}

/** Splits Docker's multiplexed raw stream (8-byte frame headers) into stdout and stderr. */
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
