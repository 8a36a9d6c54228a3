import { readFileSync } from 'fs';
import * as path from 'path';

export interface BuildInfo {
  /** build_id of BUILD_INFO.txt, or 'default' when the app runs without a packed build. */
  buildId: string;
  file: string;
  fields: Record<string, string>;
}

/**
 * The running build's BUILD_INFO.txt: the parent of app-gateway/ (where the
 * bundle runs), so it is the build of the code actually running.
 */
export function readBuildInfo(file = path.join(__dirname, '..', 'BUILD_INFO.txt')): BuildInfo {
  const fields: Record<string, string> = {};
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return { buildId: 'default', file, fields };
  }
  for (const line of text.split('\n')) {
    const kv = /^([a-z_]+)=(.*)$/.exec(line.trim());
    if (kv) fields[kv[1]] = kv[2];
  }
  const id = fields.build_id;
  return { buildId: id && /^[A-Za-z0-9._:-]{1,100}$/.test(id) ? id : 'default', file, fields };
}
