import type { OrgSnapshot } from '../gateway-client';

/** The default app's "organization data": a counter and a few notes, enough to see a push and a pull carry something. */
export interface OrgDocument {
  counter: number;
  notes: string[];
  updated_at: string | null;
}

export const MAX_NOTES = 20;
export const MAX_NOTE_LENGTH = 200;

export function emptyDocument(): OrgDocument {
  return { counter: 0, notes: [], updated_at: null };
}

/** Where the document lives in the API's snapshot shape `{ yjs_state, gateway_state }`. */
const KEY = 'default_app';

export function toSnapshot(doc: OrgDocument): OrgSnapshot {
  return { yjs_state: {}, gateway_state: { [KEY]: { counter: doc.counter, notes: [...doc.notes], updated_at: doc.updated_at } } };
}

/** Reads the document back from a pulled snapshot; anything unexpected gives an empty one. */
export function fromSnapshot(data: OrgSnapshot | null): OrgDocument {
  const raw = data?.gateway_state?.[KEY] as Partial<OrgDocument> | undefined;
  if (!raw || typeof raw !== 'object') return emptyDocument();
  return {
    counter: Number.isSafeInteger(raw.counter) ? (raw.counter as number) : 0,
    notes: Array.isArray(raw.notes) ? raw.notes.filter((n): n is string => typeof n === 'string').slice(-MAX_NOTES) : [],
    updated_at: typeof raw.updated_at === 'string' ? raw.updated_at : null,
  };
}

export type DocumentChange = { increment: number } | { note: string };

/** Validates POST /_app/data's body: `{ "increment": n }` (|n| ≤ 1000) or `{ "note": "text" }`. */
export function parseChange(body: unknown): DocumentChange | string {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return 'the body must be a JSON object';
  const b = body as Record<string, unknown>;
  const keys = Object.keys(b);
  if (keys.length !== 1) return 'send exactly one of { "increment": n } or { "note": "text" }';
  if ('increment' in b) {
    const n = b.increment;
    return typeof n === 'number' && Number.isInteger(n) && Math.abs(n) <= 1000 ? { increment: n } : 'increment must be an integer within -1000..1000';
  }
  if ('note' in b) {
    const t = b.note;
    return typeof t === 'string' && t.trim().length > 0 && t.length <= MAX_NOTE_LENGTH ? { note: t.trim() } : `note must be a non-empty string of at most ${MAX_NOTE_LENGTH} characters`;
  }
  return 'send exactly one of { "increment": n } or { "note": "text" }';
}

export function applyChange(doc: OrgDocument, change: DocumentChange, now: Date): OrgDocument {
  const next: OrgDocument = { ...doc, notes: [...doc.notes], updated_at: now.toISOString() };
  if ('increment' in change) next.counter = Math.max(Number.MIN_SAFE_INTEGER, Math.min(Number.MAX_SAFE_INTEGER, doc.counter + change.increment));
  else next.notes = [...doc.notes, change.note].slice(-MAX_NOTES);
  return next;
}
