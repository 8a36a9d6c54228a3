import { promises as fs, type Stats } from 'fs';
import * as path from 'path';
import { inspect } from 'util';
import { AllocatorError } from '../errors';
import { DEFAULT_RUNTIME_CONFIG_PATH, RUNTIME_CONFIG_ENV, type RuntimeConfig, type RuntimeSecrets } from './types';
import { Problems, validateConfig, validateSecrets } from './validate';

export interface LoadRuntimeConfigOptions {
  /** Environment to read DEMIURGE_RUNTIME_CONFIG from; default process.env. */
  env?: NodeJS.ProcessEnv;
  /**
   * Accept a secrets file readable by group or others. For tests only: a real
   * environment's secrets file is 0600 and anything else is refused.
   */
  allowInsecureSecretsFile?: boolean;
}

/** The config file a process uses: the explicit path, else $DEMIURGE_RUNTIME_CONFIG, else /etc/demiurge/runtime/config.json. */
export function runtimeConfigPath(explicit?: string, env: NodeJS.ProcessEnv = process.env): string {
  const chosen = explicit ?? (env[RUNTIME_CONFIG_ENV] || undefined) ?? DEFAULT_RUNTIME_CONFIG_PATH;
  return path.resolve(chosen);
}

function invalid(file: string, problems: string[], what = 'invalid runtime configuration'): AllocatorError {
  return new AllocatorError('INVALID_CONFIG', `${what} in ${file}:\n  - ${problems.join('\n  - ')}`, { file, problems });
}

async function readJson(file: string, role: string): Promise<{ value: unknown; stat: Stats }> {
  let text: string;
  let stat: Stats;
  try {
    stat = await fs.stat(file);
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'it does not exist' : code === 'EACCES' ? 'permission denied (run as the user the program wrote it for)' : (err as Error).message;
    const hint = role === 'config' ? `; pass its path (--config, ${RUNTIME_CONFIG_ENV}) or run \`pulumi up\`, which writes ${DEFAULT_RUNTIME_CONFIG_PATH} in the dev container` : '';
    throw new AllocatorError('INVALID_CONFIG', `cannot read the runtime ${role} file ${file}: ${why}${hint}`, { file });
  }
  try {
    return { value: JSON.parse(text) as unknown, stat };
  } catch (err) {
    // A JSON syntax error quotes the text around it: never for the secrets file.
    const detail = role === 'secrets' ? 'not valid JSON' : `not valid JSON (${(err as Error).message})`;
    throw new AllocatorError('INVALID_CONFIG', `runtime ${role} file ${file} is ${detail}; fix the file (it is written by \`pulumi up\`)`, { file });
  }
}

/** Keeps the secrets out of JSON.stringify, console.log and util.inspect. */
function attachSecrets<T extends object>(cfg: T, secrets: RuntimeSecrets): T & { readonly secrets: RuntimeSecrets } {
  const hidden = { ...secrets, gatewayRegistrationTokens: { ...secrets.gatewayRegistrationTokens } };
  Object.defineProperty(hidden, inspect.custom, { value: () => '[secrets hidden]', enumerable: false });
  Object.defineProperty(hidden, 'toJSON', { value: () => '[secrets hidden]', enumerable: false });
  Object.defineProperty(cfg, 'secrets', { value: Object.freeze(hidden), enumerable: false, writable: false });
  return cfg as T & { readonly secrets: RuntimeSecrets };
}

/**
 * Reads and validates the runtime configuration and its secrets file.
 * Throws AllocatorError('INVALID_CONFIG') naming the file, every wrong field
 * and how to fix it; a secrets file readable by group or others is refused.
 */
export async function loadRuntimeConfig(file?: string, options: LoadRuntimeConfigOptions = {}): Promise<RuntimeConfig> {
  const configFile = runtimeConfigPath(file, options.env);
  const { value } = await readJson(configFile, 'config');
  return parseRuntimeConfig(value, configFile, options);
}

/** loadRuntimeConfig for an already parsed config.json (the secrets file is still read from disk). */
export async function parseRuntimeConfig(value: unknown, configFile: string, options: LoadRuntimeConfigOptions = {}): Promise<RuntimeConfig> {
  const p = new Problems();
  const cfg = validateConfig(value, configFile, p);
  if (!cfg) throw invalid(configFile, p.list);
  const { value: secretsValue, stat } = await readJson(cfg.secretsFile, 'secrets');
  if (!stat.isFile()) throw invalid(cfg.secretsFile, ['(file): not a regular file; point secretsFile at the secrets JSON file'], 'unusable secrets file');
  if ((stat.mode & 0o077) !== 0 && !options.allowInsecureSecretsFile) {
    throw new AllocatorError(
      'INVALID_CONFIG',
      `secrets file ${cfg.secretsFile} is readable by group or others (mode ${(stat.mode & 0o777).toString(8).padStart(4, '0')}); run \`chmod 600 ${cfg.secretsFile}\``,
      { file: cfg.secretsFile },
    );
  }
  const sp = new Problems();
  const secrets = validateSecrets(secretsValue, cfg, sp);
  if (!secrets) throw invalid(cfg.secretsFile, sp.list, 'invalid runtime secrets');
  return attachSecrets(cfg, secrets);
}
