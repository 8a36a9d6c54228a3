/**
 * The runtime's one HTTP client: a JSON request over node's http/https with a
 * timeout, no redirects and no proxy. Enough for the PowerDNS API and a
 * gateway's /collab/start, and it keeps the installed package free of an HTTP
 * library and its dependency tree.
 */
import * as http from 'http';
import * as https from 'https';

export interface JsonRequest {
  method: 'GET' | 'POST' | 'PATCH' | 'PUT' | 'DELETE';
  url: string;
  headers?: Record<string, string>;
  /** Sent as JSON when defined. */
  body?: unknown;
  timeoutMs: number;
  /** A keep-alive agent for repeated calls to the same server; node's global agent otherwise. */
  agent?: http.Agent;
}

export interface JsonResponse {
  status: number;
  /** Parsed JSON when the answer says so (or looks like it), the raw text otherwise, undefined when empty. */
  body: unknown;
}

/** A request that got no answer; `code` is node's (ECONNREFUSED, ENOTFOUND, …) or ETIMEDOUT for our timeout. */
export class HttpRequestError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
    this.name = 'HttpRequestError';
  }
}

function parseBody(text: string, contentType: string | undefined): unknown {
  if (text.length === 0) return undefined;
  if (/json/i.test(contentType ?? '') || /^\s*[[{]/.test(text)) {
    try {
      return JSON.parse(text) as unknown;
    } catch {
      return text;
    }
  }
  return text;
}

/** Resolves with any status (the caller interprets it); rejects only when no complete answer arrived. */
export function requestJson(req: JsonRequest): Promise<JsonResponse> {
  const url = new URL(req.url);
  const transport = url.protocol === 'https:' ? https : url.protocol === 'http:' ? http : undefined;
  if (!transport) return Promise.reject(new HttpRequestError(`unsupported URL scheme ${url.protocol}`, 'EPROTO'));
  const payload = req.body === undefined ? undefined : Buffer.from(JSON.stringify(req.body));
  const headers: Record<string, string> = { accept: 'application/json', ...req.headers };
  if (payload) {
    headers['content-type'] = 'application/json';
    headers['content-length'] = String(payload.length);
  }
  return new Promise<JsonResponse>((resolve, reject) => {
    let settled = false;
    const fail = (err: unknown): void => {
      if (settled) return;
      settled = true;
      const code = (err as { code?: unknown } | null)?.code;
      reject(err instanceof HttpRequestError ? err : new HttpRequestError(err instanceof Error ? err.message : String(err), typeof code === 'string' ? code : 'ECONNRESET'));
    };
    const request = transport.request(url, { method: req.method, headers, agent: req.agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', fail);
      res.on('aborted', () => fail(new HttpRequestError('response aborted', 'ECONNRESET')));
      res.on('end', () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, body: parseBody(Buffer.concat(chunks).toString('utf8'), res.headers['content-type']) });
      });
    });
    const timer = setTimeout(() => {
      fail(new HttpRequestError(`timeout of ${req.timeoutMs} ms exceeded`, 'ETIMEDOUT'));
      request.destroy();
    }, req.timeoutMs);
    request.on('error', (err) => {
      clearTimeout(timer);
      fail(err);
    });
    request.end(payload);
  });
}
