/**
 * A small Docker Engine API client over the unix socket, for the realiser.
 *
 * Why the Engine API and not only the docker CLI: a container's declared
 * healthcheck is an exec-form `["CMD", ...]` array, which `docker run
 * --health-cmd` cannot express (it always makes `CMD-SHELL`); the API takes
 * the exact array, as the Pulumi Docker provider does.
 */
import * as http from 'http';

export class EngineError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
    this.name = 'EngineError';
  }
}

export interface EngineResponse<T> {
  status: number;
  body: T;
}

export interface ContainerInspect {
  Id: string;
  Name: string;
  State: {
    Status: string;
    Running: boolean;
    ExitCode: number;
    Health?: { Status: string; Log?: Array<{ ExitCode: number; Output: string }> };
  };
  Config: {
    Hostname: string;
    Image: string;
    Entrypoint: string[] | null;
    Cmd: string[] | null;
    Env: string[] | null;
    Labels: Record<string, string> | null;
    Healthcheck?: { Test: string[]; Interval?: number; Timeout?: number; Retries?: number; StartPeriod?: number };
  };
  Image: string;
  HostConfig: {
    Binds: string[] | null;
    PortBindings: Record<string, Array<{ HostIp: string; HostPort: string }>> | null;
    RestartPolicy: { Name: string };
    CapAdd: string[] | null;
    Devices: Array<{ PathOnHost: string; PathInContainer: string; CgroupPermissions: string }> | null;
  };
  NetworkSettings: { Networks: Record<string, { Aliases: string[] | null; IPAddress: string }> };
}

/** The subset of POST /containers/create the realiser fills in. */
export interface ContainerCreateBody {
  Hostname?: string;
  Image: string;
  Entrypoint?: string[];
  Cmd?: string[];
  Env?: string[];
  Labels?: Record<string, string>;
  ExposedPorts?: Record<string, Record<string, never>>;
  Healthcheck?: { Test: string[]; Interval?: number; Timeout?: number; Retries?: number; StartPeriod?: number };
  HostConfig: {
    Binds?: string[];
    PortBindings?: Record<string, Array<{ HostIp: string; HostPort: string }>>;
    ExtraHosts?: string[];
    RestartPolicy?: { Name: string; MaximumRetryCount?: number };
    CapAdd?: string[];
    CapDrop?: string[];
    Devices?: Array<{ PathOnHost: string; PathInContainer: string; CgroupPermissions: string }>;
    NetworkMode?: string;
  };
  NetworkingConfig?: { EndpointsConfig: Record<string, { Aliases?: string[] }> };
}

export class Engine {
  /** `tcp`: an engine listening on plain TCP instead of the socket (the multi-host suite's second host). */
  constructor(
    readonly socketPath = '/var/run/docker.sock',
    readonly tcp?: { host: string; port: number },
  ) {}

  private get target(): { socketPath: string } | { host: string; port: number } {
    return this.tcp ?? { socketPath: this.socketPath };
  }

  request<T>(method: string, path: string, body?: unknown, timeoutMs = 120_000): Promise<EngineResponse<T>> {
    return new Promise((resolve, reject) => {
      const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
      const req = http.request(
        {
          ...this.target,
          path,
          method,
          headers: payload ? { 'Content-Type': 'application/json', 'Content-Length': payload.length } : {},
          timeout: timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: unknown = text;
            if (text !== '' && /json/.test(String(res.headers['content-type']))) {
              try {
                parsed = JSON.parse(text);
              } catch {
                parsed = text;
              }
            }
            resolve({ status: res.statusCode ?? 0, body: parsed as T });
          });
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new Error(`Docker Engine API ${method} ${path}: timeout after ${timeoutMs} ms`)));
      req.on('error', reject);
      req.end(payload);
    });
  }

  /** Like request, but throws unless the status is one of `ok`. */
  async call<T>(method: string, path: string, body: unknown, ok: number[], what: string): Promise<T> {
    const res = await this.request<T>(method, path, body);
    if (!ok.includes(res.status)) {
      const msg = typeof res.body === 'object' && res.body !== null && 'message' in res.body ? String((res.body as { message: unknown }).message) : String(res.body);
      throw new EngineError(`${what}: HTTP ${res.status}: ${msg}`, res.status);
    }
    return res.body;
  }

  /** PUT /containers/{id}/archive: extracts a tar at `dir` (works before the container starts). Returns the status. */
  putArchive(id: string, dir: string, tar: Buffer): Promise<number> {
    return new Promise((resolve, reject) => {
      const req = http.request(
        {
          ...this.target,
          path: `/containers/${encodeURIComponent(id)}/archive?path=${encodeURIComponent(dir)}`,
          method: 'PUT',
          headers: { 'Content-Type': 'application/x-tar', 'Content-Length': tar.length },
          timeout: 120_000,
        },
        (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        },
      );
      req.on('error', reject);
      req.end(tar);
    });
  }

  async ping(): Promise<boolean> {
    try {
      return (await this.request<string>('GET', '/_ping', undefined, 3000)).status === 200;
    } catch {
      return false;
    }
  }

  async inspectContainer(nameOrId: string): Promise<ContainerInspect | undefined> {
    const res = await this.request<ContainerInspect>('GET', `/containers/${encodeURIComponent(nameOrId)}/json`);
    if (res.status === 404) return undefined;
    if (res.status !== 200) throw new EngineError(`inspect container ${nameOrId}: HTTP ${res.status}`, res.status);
    return res.body;
  }

  async imageId(ref: string): Promise<string | undefined> {
    const res = await this.request<{ Id: string }>('GET', `/images/${encodeURIComponent(ref)}/json`);
    return res.status === 200 ? res.body.Id : undefined;
  }

  async networkExists(name: string): Promise<boolean> {
    return (await this.request<unknown>('GET', `/networks/${encodeURIComponent(name)}`)).status === 200;
  }

  async volume(name: string): Promise<{ Name: string; Mountpoint: string; Labels: Record<string, string> | null } | undefined> {
    const res = await this.request<{ Name: string; Mountpoint: string; Labels: Record<string, string> | null }>('GET', `/volumes/${encodeURIComponent(name)}`);
    return res.status === 200 ? res.body : undefined;
  }
}
