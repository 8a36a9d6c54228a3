import * as http from 'http';
import * as https from 'https';
import type { FetchLike } from './transport';

/**
 * The client's default transport: node:http(s), not the global fetch. Why: the
 * WHATWG fetch refuses "bad ports", and 6000 — where the API server listens in
 * the dev container (http://demiurge-<env>-dev:6000) — is one of them (X11),
 * so `fetch` fails there with `bad port` before connecting.
 */
export const httpFetch: FetchLike = (url, init) =>
  new Promise((resolve, reject) => {
    const u = new URL(url);
    const mod = u.protocol === 'https:' ? https : http;
    if (init.signal.aborted) {
      reject(Object.assign(new Error('aborted'), { name: 'AbortError' }));
      return;
    }
    const req = mod.request(
      u,
      { method: init.method, headers: { ...init.headers, 'content-length': String(Buffer.byteLength(init.body)) }, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          resolve({
            status: res.statusCode ?? 0,
            headers: {
              get: (name: string): string | null => {
                const v = res.headers[name.toLowerCase()];
                return v === undefined ? null : Array.isArray(v) ? v.join(', ') : v;
              },
            },
            text: () => Promise.resolve(text),
          });
        });
      },
    );
    const onAbort = (): void => {
      req.destroy(Object.assign(new Error('aborted'), { name: 'AbortError' }));
    };
    init.signal.addEventListener('abort', onAbort, { once: true });
    req.on('close', () => init.signal.removeEventListener('abort', onAbort));
    req.on('error', (err: NodeJS.ErrnoException) => reject(Object.assign(new TypeError('fetch failed'), { cause: err })));
    req.end(init.body);
  });
