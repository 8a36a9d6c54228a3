/**
 * DNS-01 challenge records in our own PowerDNS, with the semantics ACME needs
 * and lego's pdns provider (Debian's 4.9.1) does not have:
 *
 *  - An order for `<name>` + `*.<name>` has two challenges with the SAME
 *    record name, `_acme-challenge.<name>`, and the CA may check either while
 *    both are pending: the TXT rrset must hold both values at once. Present
 *    therefore ADDS a value to the rrset (PowerDNS PATCH can only REPLACE a
 *    whole rrset, so this is read-merge-replace under a per-name lock).
 *  - Clean-up removes only the value it was given. lego 4.9.1's pdns provider
 *    DELETEs the whole rrset on its first clean-up (checked against the test
 *    PowerDNS: the second clean-up then logs "no existing record found"), which
 *    would drop a value another order for the same name still needs.
 *
 * The rrsets carry a comment marking them as ours. Node built-ins only (global
 * fetch): the renewal CLI runs from a bare Node.js in the renewer container.
 */

export interface ChallengeDnsOptions {
  /** PowerDNS API base URL, e.g. http://127.0.0.1:8081 (no /api/v1). */
  apiUrl: string;
  apiKey: string;
  /** The zone the challenge names live in (the environment's domain). */
  zone: string;
  serverId?: string;
  /** TTL of the TXT records; short, so a retried order's value is seen at once. Default 60. */
  ttl?: number;
  /** Per request. Default 10 s. */
  timeoutMs?: number;
}

export const CHALLENGE_COMMENT_ACCOUNT = 'demiurge-acme';

function abs(name: string): string {
  return name.endsWith('.') ? name.toLowerCase() : `${name.toLowerCase()}.`;
}

/** TXT content is a quoted string in PowerDNS. */
function quoteTxt(value: string): string {
  if (!/^[A-Za-z0-9_-]+$/.test(value)) throw new Error(`unexpected characters in an ACME challenge value: ${JSON.stringify(value)}`);
  return `"${value}"`;
}

function unquoteTxt(content: string): string {
  return content.replace(/^"(.*)"$/, '$1');
}

interface Rrset {
  name: string;
  type: string;
  records: Array<{ content: string; disabled: boolean }>;
}

export class ChallengeDns {
  readonly zone: string;
  private readonly base: string;
  private readonly locks = new Map<string, Promise<void>>();

  constructor(private readonly opts: ChallengeDnsOptions) {
    this.zone = abs(opts.zone);
    this.base = `${opts.apiUrl.replace(/\/+$/, '')}/api/v1/servers/${encodeURIComponent(opts.serverId ?? 'localhost')}/zones/${encodeURIComponent(this.zone)}`;
  }

  /** `_acme-challenge.<name>.` for a certificate name (the wildcard's label is dropped, RFC 8555 §8.4). */
  static recordName(certName: string): string {
    return abs(`_acme-challenge.${certName.replace(/^\*\./, '')}`);
  }

  async present(fqdn: string, value: string): Promise<void> {
    await this.update(fqdn, (values) => (values.includes(value) ? values : [...values, value]));
  }

  async cleanup(fqdn: string, value: string): Promise<void> {
    await this.update(fqdn, (values) => values.filter((v) => v !== value));
  }

  /** Current TXT values at a name (unquoted). */
  async values(fqdn: string): Promise<string[]> {
    const name = this.checkName(fqdn);
    const rr = (await this.rrsets()).find((r) => r.name.toLowerCase() === name && r.type === 'TXT');
    return (rr?.records ?? []).map((r) => unquoteTxt(r.content));
  }

  private checkName(fqdn: string): string {
    const name = abs(fqdn);
    if (!name.startsWith('_acme-challenge.') || !(name === this.zone || name.endsWith(`.${this.zone}`))) {
      // Only ever touch challenge names inside our own zone.
      throw new Error(`refusing to write ${name}: not an _acme-challenge name in zone ${this.zone}`);
    }
    return name;
  }

  /** Serializes read-merge-replace per name (lego presents the two values of one name back to back). */
  private async update(fqdn: string, change: (values: string[]) => string[]): Promise<void> {
    const name = this.checkName(fqdn);
    const prev = this.locks.get(name) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const chained = prev.then(() => mine);
    this.locks.set(name, chained);
    await prev;
    try {
      const before = await this.values(name);
      const after = change(before);
      if (after.length === before.length && after.every((v, i) => v === before[i])) return;
      const rrset =
        after.length === 0
          ? { name, type: 'TXT', changetype: 'DELETE' }
          : {
              name,
              type: 'TXT',
              changetype: 'REPLACE',
              ttl: this.opts.ttl ?? 60,
              records: after.map((v) => ({ content: quoteTxt(v), disabled: false })),
              comments: [{ content: 'ACME DNS-01 challenge (removed after validation)', account: CHALLENGE_COMMENT_ACCOUNT }],
            };
      await this.request('PATCH', this.base, { rrsets: [rrset] });
    } finally {
      release();
      if (this.locks.get(name) === chained) this.locks.delete(name);
    }
  }

  private async rrsets(): Promise<Rrset[]> {
    const zone = (await this.request('GET', this.base)) as { rrsets?: Rrset[] };
    return zone.rrsets ?? [];
  }

  private async request(method: 'GET' | 'PATCH', url: string, body?: unknown): Promise<unknown> {
    let res: Response;
    try {
      res = await fetch(url, {
        method,
        headers: { 'X-API-Key': this.opts.apiKey, 'Content-Type': 'application/json', Accept: 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(this.opts.timeoutMs ?? 10_000),
      });
    } catch (err) {
      // Never include the key: only the method, zone and cause.
      throw new Error(`PowerDNS API ${method} ${this.zone} unreachable: ${(err as Error).message}`);
    }
    const text = await res.text();
    if (res.status < 200 || res.status >= 300) {
      let detail = text.slice(0, 200);
      try {
        detail = String((JSON.parse(text) as { error?: unknown }).error ?? detail);
      } catch {
        /* not JSON */
      }
      throw new Error(`PowerDNS API ${method} ${this.zone} answered ${res.status}: ${detail}`);
    }
    return text === '' ? undefined : (JSON.parse(text) as unknown);
  }
}
