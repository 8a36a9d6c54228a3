/**
 * The loopback endpoint lego's `httpreq` DNS provider calls (POST /present and
 * /cleanup with {fqdn, value}, basic auth with random credentials): it writes
 * the TXT values through ChallengeDns, only for names of an order the issuer
 * is running, and remembers what each order presented so the issuer can remove
 * leftovers when lego did not. Node built-ins only; no @pulumi imports.
 */
import { randomBytes } from 'crypto';
import * as http from 'http';
import type { AddressInfo } from 'net';
import type { ChallengeDns } from './dns-challenge';

export interface ChallengeEvent {
  action: 'present' | 'cleanup';
  /** `_acme-challenge.<name>.` */
  fqdn: string;
  value: string;
}

export interface ActiveOrder {
  fqdns: Set<string>;
  /** Values presented for this order and not yet cleaned up, per fqdn. */
  presented: Map<string, Set<string>>;
}

export interface ChallengeEndpointOptions {
  dns: ChallengeDns;
  /** The running order a challenge name belongs to, if any. */
  orderOf: (fqdn: string) => ActiveOrder | undefined;
  /** Awaited after each TXT change is applied, before lego is answered. */
  onChallenge?: (event: ChallengeEvent) => void | Promise<void>;
  log: (line: string) => void;
}

export class ChallengeEndpoint {
  readonly credentials = { user: 'lego', password: randomBytes(24).toString('hex') };
  private server?: Promise<{ url: string; close: () => Promise<void> }>;

  constructor(private readonly o: ChallengeEndpointOptions) {}

  /** Starts the listener on first use; its URL. */
  url(): Promise<string> {
    if (!this.server) this.server = this.listen();
    return this.server.then((s) => s.url);
  }

  /** Stops the listener (url() starts it again). */
  async close(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (s) await (await s).close();
  }

  private listen(): Promise<{ url: string; close: () => Promise<void> }> {
    return new Promise((resolve, reject) => {
      const expected = `Basic ${Buffer.from(`${this.credentials.user}:${this.credentials.password}`).toString('base64')}`;
      const srv = http.createServer((req, res) => {
        let body = '';
        req.setEncoding('utf8');
        req.on('data', (c: string) => {
          body += c;
          if (body.length > 10_000) req.destroy();
        });
        req.on('end', () => {
          void this.handle(req, body, expected).then(
            (status) => {
              res.statusCode = status;
              res.end();
            },
            (err: Error) => {
              this.o.log(`acme: challenge endpoint: ${err.message}`);
              res.statusCode = 500;
              res.end(err.message);
            },
          );
        });
      });
      srv.on('error', reject);
      srv.listen(0, '127.0.0.1', () => {
        const port = (srv.address() as AddressInfo).port;
        resolve({ url: `http://127.0.0.1:${port}`, close: () => new Promise<void>((r) => srv.close(() => r())) });
      });
      // Does not keep the process alive on its own (CLI exits when done).
      srv.unref();
    });
  }

  private async handle(req: http.IncomingMessage, body: string, expectedAuth: string): Promise<number> {
    if (req.headers.authorization !== expectedAuth) return 401;
    const action = req.url === '/present' ? 'present' : req.url === '/cleanup' ? 'cleanup' : undefined;
    if (req.method !== 'POST' || action === undefined) return 404;
    const parsed = JSON.parse(body) as { fqdn?: unknown; value?: unknown };
    if (typeof parsed.fqdn !== 'string' || typeof parsed.value !== 'string') return 400;
    const fqdn = parsed.fqdn.toLowerCase().endsWith('.') ? parsed.fqdn.toLowerCase() : `${parsed.fqdn.toLowerCase()}.`;
    const value = parsed.value;
    const order = this.o.orderOf(fqdn);
    // Only names of an order this issuer is running: the endpoint is no general DNS writer.
    if (order === undefined) return 403;
    if (action === 'present') {
      await this.o.dns.present(fqdn, value);
      const set = order.presented.get(fqdn) ?? new Set<string>();
      set.add(value);
      order.presented.set(fqdn, set);
    } else {
      await this.o.dns.cleanup(fqdn, value);
      order.presented.get(fqdn)?.delete(value);
    }
    this.o.log(`acme: ${action} ${fqdn}`);
    await this.o.onChallenge?.({ action, fqdn, value });
    return 200;
  }
}
