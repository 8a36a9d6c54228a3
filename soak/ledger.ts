/**
 * The orchestrator's books of organization data, kept in an append-only
 * journal on disk (written synchronously before anything is counted), and the
 * rule that decides whether a pulled snapshot is acceptable:
 *
 * - it is the newest ACKNOWLEDGED push of the organization (same version, same bytes), or
 * - it is newer than that, and it is a push that was sent but never acknowledged
 *   (its worker was SIGKILLed, or the push failed in a way that may have committed).
 *
 * Anything else — nothing when something was acknowledged, an older version,
 * bytes that no push sent, two acknowledgements with the same version — is a violation.
 */
import { closeSync, fsyncSync, openSync, writeSync } from 'fs';

interface Ack {
  version: number;
  hash: string;
  /** When the orchestrator recorded it (ms). */
  at: number;
}

export interface PullObservation {
  org: string;
  version: number | null;
  hash: string | null;
  /** When the pull started (ms, same clock). */
  startedAt: number;
}

export class Ledger {
  private readonly fd: number;
  private readonly intents = new Map<string, Set<string>>();
  private readonly acks = new Map<string, Ack[]>();
  private readonly pulls: PullObservation[] = [];
  pushesAcked = 0;
  intentsSent = 0;

  constructor(journalPath: string) {
    this.fd = openSync(journalPath, 'a');
  }

  /** One JSON line, written before the in-memory books change. */
  record(entry: Record<string, unknown>): void {
    writeSync(this.fd, `${JSON.stringify({ at: new Date().toISOString(), ...entry })}\n`);
  }

  intent(org: string, hash: string, id: string): void {
    this.record({ t: 'push-intent', org, hash, id });
    const s = this.intents.get(org) ?? new Set<string>();
    s.add(hash);
    this.intents.set(org, s);
    this.intentsSent += 1;
  }

  ack(org: string, version: number, hash: string, id: string): void {
    this.record({ t: 'push-ack', org, version, hash, id });
    const list = this.acks.get(org) ?? [];
    list.push({ version, hash, at: Date.now() });
    this.acks.set(org, list);
    this.pushesAcked += 1;
  }

  pulled(obs: PullObservation): void {
    this.pulls.push(obs);
  }

  orgsWithData(): string[] {
    return [...new Set([...this.intents.keys(), ...this.acks.keys()])];
  }

  close(): void {
    try {
      fsyncSync(this.fd);
    } finally {
      closeSync(this.fd);
    }
  }

  /** Duplicate versions among acknowledgements: two pushes both told they were stored as version v. */
  duplicateAcks(): string[] {
    const out: string[] = [];
    for (const [org, list] of this.acks) {
      const seen = new Map<number, string>();
      for (const a of list) {
        const prev = seen.get(a.version);
        if (prev !== undefined && prev !== a.hash) out.push(`${org}: version ${a.version} acknowledged for two different snapshots`);
        seen.set(a.version, a.hash);
      }
    }
    return out;
  }

  /**
   * Judges one pulled snapshot against the acknowledgements recorded before
   * `before` (ms). Returns a violation description, or null if acceptable; and
   * whether it was the acknowledged one or a later unacknowledged one.
   */
  judge(obs: PullObservation, before: number): { problem: string | null; outcome: 'acked' | 'later-unacked' | 'none' } {
    const acks = (this.acks.get(obs.org) ?? []).filter((a) => a.at < before);
    const newest = acks.reduce<Ack | undefined>((m, a) => (!m || a.version > m.version ? a : m), undefined);
    if (obs.version === null || obs.hash === null) {
      return { problem: newest ? `pull of ${obs.org} found nothing, but version ${newest.version} was acknowledged` : null, outcome: 'none' };
    }
    if (newest && obs.version < newest.version) {
      return { problem: `pull of ${obs.org} gave version ${obs.version}, older than acknowledged version ${newest.version}`, outcome: 'acked' };
    }
    const allAcks = this.acks.get(obs.org) ?? [];
    const sameVersion = allAcks.find((a) => a.version === obs.version);
    if (sameVersion) {
      return { problem: sameVersion.hash === obs.hash ? null : `pull of ${obs.org} version ${obs.version}: bytes differ from the acknowledged push of that version`, outcome: 'acked' };
    }
    const sent = this.intents.get(obs.org);
    if (sent?.has(obs.hash)) return { problem: null, outcome: 'later-unacked' };
    return { problem: `pull of ${obs.org} version ${obs.version}: bytes match no push ever sent (corrupted)`, outcome: 'later-unacked' };
  }

  /** Checks every pull the workers made during the run (now that all acknowledgements are in). */
  judgeRunPulls(): { checked: number; problems: string[] } {
    const problems: string[] = [];
    for (const p of this.pulls) {
      const { problem } = this.judge(p, p.startedAt);
      if (problem) problems.push(problem);
    }
    return { checked: this.pulls.length, problems };
  }
}
