/**
 * Which Docker hosts a CLI command talks to: `--host <url>` flags and/or the hosts a stack file
 * declares (Pulumi.<stack>.yaml: `demiurge:dockerHost`, the main host, plus every `ssh://` entry
 * of `demiurge:gatewayHosts`), else DOCKER_HOST / the local socket. Reads the two keys itself
 * (no Pulumi import in the CLI); stack/config.ts stays the authority on their full validation.
 */
import * as fs from 'fs';
import * as path from 'path';
import { DockerApiError, defaultDockerHost, parseDockerHost } from './docker-api';

export interface TargetHost {
  /** Report label: the stack's host name (`main`, `gw-b`) or, for a --host flag, the URL. */
  name: string;
  /** Docker host URL. */
  url: string;
}

export class HostsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HostsError';
  }
}

/**
 * Top-level `config:` scalars of a Pulumi stack file. Pulumi writes these as `  key: value` with
 * the value plain, 'single-quoted' ('' escapes ') or "double-quoted" (JSON escapes); nested maps
 * (`secure:` values, objects) are skipped: the keys read here are never secrets.
 */
export function parseStackYamlConfig(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  let inConfig = false;
  let indent: number | undefined;
  for (const rawLine of text.split(/\r?\n/)) {
    if (/^\s*(#.*)?$/.test(rawLine)) continue;
    const lineIndent = rawLine.length - rawLine.trimStart().length;
    if (lineIndent === 0) {
      inConfig = /^config:\s*(#.*)?$/.test(rawLine);
      indent = undefined;
      continue;
    }
    if (!inConfig) continue;
    if (indent === undefined) indent = lineIndent;
    if (lineIndent !== indent) continue; // nested value of a previous key
    const m = /^\s*([^\s#]\S*?):(?:\s+(.*))?$/.exec(rawLine);
    if (!m) continue;
    const value = (m[2] ?? '').trim();
    if (value === '' || value.startsWith('#')) continue; // a map follows (e.g. secure:)
    out[m[1]] = unquote(value);
  }
  return out;
}

function unquote(v: string): string {
  if (v.startsWith("'")) {
    const end = v.lastIndexOf("'");
    return v.slice(1, end > 0 ? end : undefined).replace(/''/g, "'");
  }
  if (v.startsWith('"')) {
    const end = v.lastIndexOf('"');
    try {
      return JSON.parse(v.slice(0, end + 1)) as string;
    } catch {
      return v.slice(1, end > 0 ? end : undefined);
    }
  }
  return v.replace(/\s+#.*$/, '');
}

/** `--stack <name>` → Pulumi.<name>.yaml in `dir`; a value ending in .yaml/.yml is a path. */
export function stackFilePath(stack: string, dir = process.cwd()): string {
  return /\.ya?ml$/.test(stack) ? path.resolve(stack) : path.join(dir, `Pulumi.${stack}.yaml`);
}

/** The Docker hosts of a stack: the main host first, then each ssh:// gateway host. */
export function stackHosts(config: Record<string, string>, file: string, env: NodeJS.ProcessEnv = process.env, project = 'demiurge'): TargetHost[] {
  const where = (key: string): string => `${file}: ${project}:${key}`;
  const main = config[`${project}:dockerHost`] || defaultDockerHost(env);
  const hosts: TargetHost[] = [{ name: 'main', url: main }];
  const raw = config[`${project}:gatewayHosts`];
  if (raw !== undefined && raw !== '') {
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw);
    } catch (err) {
      throw new HostsError(`${where('gatewayHosts')} is not valid JSON (${(err as Error).message})`);
    }
    if (!Array.isArray(parsed)) throw new HostsError(`${where('gatewayHosts')} must be a JSON array`);
    parsed.forEach((entry: unknown, i: number) => {
      const e = (entry ?? {}) as { name?: unknown; host?: unknown };
      if (e.host === 'main') {
        if (typeof e.name === 'string') hosts[0].name = e.name;
        return;
      }
      if (typeof e.host !== 'string') throw new HostsError(`${where('gatewayHosts')}[${i}].host must be "main" or an ssh:// URL`);
      hosts.push({ name: typeof e.name === 'string' ? e.name : e.host, url: e.host });
    });
  }
  return hosts;
}

/** Flags first (as given), then the stack's hosts; the same URL twice is one host. */
export function resolveHosts(opts: { hosts?: string[]; stack?: string; cwd?: string; env?: NodeJS.ProcessEnv }): TargetHost[] {
  const env = opts.env ?? process.env;
  const list: TargetHost[] = (opts.hosts ?? []).map((url) => ({ name: url, url }));
  if (opts.stack !== undefined) {
    const file = stackFilePath(opts.stack, opts.cwd);
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      throw new HostsError(`cannot read stack file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    list.push(...stackHosts(parseStackYamlConfig(text), file, env));
  }
  if (list.length === 0) list.push({ name: 'default', url: defaultDockerHost(env) });
  const seen = new Set<string>();
  const out: TargetHost[] = [];
  for (const h of list) {
    try {
      parseDockerHost(h.url);
    } catch (err) {
      throw new HostsError(err instanceof DockerApiError ? err.message : String(err));
    }
    if (seen.has(h.url)) continue;
    seen.add(h.url);
    out.push(h);
  }
  return out;
}
