/**
 * The HTTP client of the stage-1 nginx's status server (`/__demiurge/routes`,
 * answered by Lua in nginx's own workers): which configuration version they
 * run, what their shared route table holds for organizations, whether they
 * can read certificate bundles; and `load`, which has nginx (re)load the
 * given organizations' route files into that table. Every "is it live yet?"
 * wait of the allocator asks it.
 */
import * as http from 'http';
import { AllocatorError } from './errors';

export interface LookupAnswer {
  version: string;
  routes: Record<string, string>;
  /** With per-org certificates: whether the answering worker can read each org's bundle and the base certificate and key. */
  certs?: Record<string, boolean>;
  base?: boolean;
  pid?: number;
}

/** Organization ids per status-server request (37 bytes each; nginx's request line limit is 8 KiB). */
const LOOKUP_CHUNK = 100;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A status request was refused: nothing is bound to the status address. */
export const NOT_LISTENING = 'not-listening';

export class Stage1Status {
  constructor(
    /** Loopback address of the status server, `host:port`. */
    readonly listen: string,
    /** Default bound of `waitFor`. */
    private readonly liveTimeoutMs: number,
  ) {}

  /** Asks nginx's workers how they route the given organizations; undefined if nginx does not answer. */
  lookup(orgIds: string[]): Promise<LookupAnswer | undefined> {
    return this.ask('GET', '/__demiurge/routes', orgIds).then((a) => (a === NOT_LISTENING ? undefined : a));
  }

  /**
   * Has nginx (re)load these organizations' route files into its route table (an absent file removes
   * the entry); answers what the table then holds, as `lookup` does; undefined if nginx does not answer.
   */
  load(orgIds: string[]): Promise<LookupAnswer | undefined> {
    return this.ask('POST', '/__demiurge/routes/load', orgIds).then((a) => (a === NOT_LISTENING ? undefined : a));
  }

  /**
   * As `load`, but tells "nothing listens on the status address" (connection refused: nginx stopped,
   * or not yet bound, so its initial load is still to come) from any other failure.
   */
  loadOrNotListening(orgIds: string[]): Promise<LookupAnswer | typeof NOT_LISTENING | undefined> {
    return this.ask('POST', '/__demiurge/routes/load', orgIds);
  }

  private async ask(method: 'GET' | 'POST', urlPath: string, orgIds: string[]): Promise<LookupAnswer | typeof NOT_LISTENING | undefined> {
    if (orgIds.length <= LOOKUP_CHUNK) return this.askOnce(method, urlPath, orgIds);
    // nginx answers 414 to a request line over 8 KiB (~215 ids): ask in chunks, in parallel.
    const chunks: string[][] = [];
    for (let i = 0; i < orgIds.length; i += LOOKUP_CHUNK) chunks.push(orgIds.slice(i, i + LOOKUP_CHUNK));
    const answers = await Promise.all(chunks.map((c) => this.askOnce(method, urlPath, c)));
    if (answers.every((a) => a === NOT_LISTENING)) return NOT_LISTENING;
    if (answers.some((a) => a === undefined || a === NOT_LISTENING)) return undefined;
    const [first, ...rest] = answers as LookupAnswer[];
    return rest.reduce<LookupAnswer>(
      (acc, a) => ({ ...acc, routes: { ...acc.routes, ...a.routes }, ...(a.certs ? { certs: { ...acc.certs, ...a.certs } } : {}) }),
      { ...first, routes: { ...first.routes } },
    );
  }

  /** Polls `check` until it holds; NGINX_FAILED (stage `live`) with `failure()` after `timeoutMs`. */
  async waitFor(check: () => Promise<boolean>, failure: () => string, timeoutMs = this.liveTimeoutMs): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(await check())) {
      if (Date.now() > deadline) throw new AllocatorError('NGINX_FAILED', failure(), { stage: 'live' });
      await sleep(10);
    }
  }

  private askOnce(method: 'GET' | 'POST', urlPath: string, orgIds: string[]): Promise<LookupAnswer | typeof NOT_LISTENING | undefined> {
    const i = this.listen.lastIndexOf(':');
    const host = this.listen.slice(0, i);
    const port = Number(this.listen.slice(i + 1));
    return new Promise((resolve) => {
      const req = http.request({ method, host, port, path: `${urlPath}?ids=${orgIds.join(',')}`, agent: false, timeout: 2000 }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => {
          try {
            resolve(res.statusCode === 200 ? (JSON.parse(body) as LookupAnswer) : undefined);
          } catch {
            resolve(undefined);
          }
        });
      });
      req.on('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED' ? NOT_LISTENING : undefined));
      req.on('timeout', () => req.destroy());
      req.end();
    });
  }
}
