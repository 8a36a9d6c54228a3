/**
 * A minimal reader for the flat `config:` map of Pulumi.<stack>.yaml files
 * (no YAML package is installed). Supports what the stack files use: comments,
 * `  <ns>:<key>: value` lines with plain, 'single'- or "double"-quoted values.
 * Secure values (`key:` followed by an indented `secure: ...`) are skipped, so
 * neither tests nor the laptop-side CLI need the passphrase.
 */
import * as fs from 'fs';

export interface StackFile {
  /** Full keys (`demiurge:envName`) → string values, as Pulumi hands them to the program. */
  config: Record<string, string>;
  /** Keys that hold `secure:` values (skipped). */
  secureKeys: string[];
}

function unquote(v: string, file: string, line: number): string {
  if (v.startsWith("'")) {
    if (!v.endsWith("'") || v.length < 2) throw new Error(`${file}:${line}: unterminated '...' value`);
    return v.slice(1, -1).replace(/''/g, "'");
  }
  if (v.startsWith('"')) {
    return JSON.parse(v) as string;
  }
  return v;
}

function stripComment(v: string): string {
  if (v.startsWith("'") || v.startsWith('"')) return v;
  const i = v.search(/\s#/);
  return (i >= 0 ? v.slice(0, i) : v).trimEnd();
}

export function parseStackYaml(text: string, file = '<yaml>'): StackFile {
  const config: Record<string, string> = {};
  const secureKeys: string[] = [];
  const lines = text.split(/\r?\n/);
  let inConfig = false;
  let pendingKey: string | undefined;
  lines.forEach((rawLine, i) => {
    const n = i + 1;
    if (/^\s*(#.*)?$/.test(rawLine)) return;
    if (!/^\s/.test(rawLine)) {
      inConfig = /^config:\s*(#.*)?$/.test(rawLine);
      pendingKey = undefined;
      return;
    }
    if (!inConfig) return;
    const nested = /^\s{4,}secure:\s*(.+)$/.exec(rawLine);
    if (nested && pendingKey !== undefined) {
      secureKeys.push(pendingKey);
      pendingKey = undefined;
      return;
    }
    const m = /^ {2}([A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+):(?:\s+(.*))?$/.exec(rawLine);
    if (!m) throw new Error(`${file}:${n}: unsupported YAML (keep the config map flat): ${rawLine}`);
    const [, key, rest] = m;
    const value = rest === undefined ? '' : stripComment(rest.trim());
    if (value === '') {
      pendingKey = key;
      return;
    }
    pendingKey = undefined;
    config[key] = unquote(value, file, n);
  });
  return { config, secureKeys };
}

export function readStackYaml(path: string): StackFile {
  return parseStackYaml(fs.readFileSync(path, 'utf8'), path);
}
