/**
 * Organization data the soak pushes, and how it recognises it again.
 *
 * Every snapshot is unique (worker, sequence number, nonce), so its hash names
 * one push. The hash is taken over a canonical JSON text (keys sorted at every
 * level): a pull must give back the same values, strings and numbers to the
 * last byte, while key order is the store's business.
 */
import { createHash, randomBytes } from 'crypto';

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

export interface SoakSnapshot {
  yjs_state: Record<string, string>;
  gateway_state: { [k: string]: Json };
}

export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map((v) => canonicalJson(v)).join(',')}]`;
  const obj = value as Record<string, unknown>;
  return `{${Object.keys(obj)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`)
    .join(',')}}`;
}

export function snapshotHash(value: unknown): string {
  return createHash('sha256').update(canonicalJson(value), 'utf8').digest('hex');
}

/** Strings that tend to break naive serialisers: quotes, backslashes, control characters, non-BMP code points. */
const AWKWARD = ['plain', 'quote " and \\ backslash', 'line\nbreak\ttab', 'ünïcødé ✓', 'emoji 😀👩‍💻', '\u2028\u2029', '<script>&amp;</script>', ''];

/**
 * A snapshot of roughly `bytes` bytes (mostly random base64 in yjs_state, the
 * shape the gateway sends), with awkward strings and numbers in gateway_state.
 */
export function makeSnapshot(tag: { org: string; writer: string; seq: number }, bytes: number, rand: () => number): SoakSnapshot {
  const projects = 1 + Math.floor(rand() * 3);
  const yjs: Record<string, string> = {};
  for (let i = 0; i < projects; i++) {
    const raw = Math.max(0, Math.floor((bytes / projects) * 0.75));
    yjs[`project-${i}-${Math.floor(rand() * 1e6)}`] = randomBytes(raw).toString('base64');
  }
  return {
    yjs_state: yjs,
    gateway_state: {
      org: tag.org,
      writer: tag.writer,
      seq: tag.seq,
      nonce: randomBytes(12).toString('hex'),
      text: AWKWARD[Math.floor(rand() * AWKWARD.length)],
      numbers: [0, -1, 1.5, 0.1, 1e-7, 123456789012345, Number.MAX_SAFE_INTEGER, -2.5e300],
      flags: { on: true, off: false, none: null },
      nested: { level: { deeper: [[], {}, [1, [2, [3]]]] } },
    },
  };
}
