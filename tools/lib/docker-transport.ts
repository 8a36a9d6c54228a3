/**
 * Docker hosts and the connections to them, for tools/lib/docker-api.ts: the host URLs a stack names
 * (`unix:///path`, `tcp://host:port`, `ssh://[user@]host[:port]`), and an http.Agent that connects
 * to each kind — for ssh, as the docker CLI does, HTTP over the stdio of `ssh … docker system
 * dial-stdio`. A host that cannot be reached at all is `HOST_UNREACHABLE`.
 */
import { ChildProcess, spawn } from 'child_process';
import * as http from 'http';
import * as net from 'net';
import { Duplex } from 'stream';

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

export function isUnreachable(err: unknown): boolean {
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
export class HostAgent extends http.Agent {
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
