/**
 * Thin Express adapter over the framework-free GatewayApi. Imported on its own
 * (`@demiurge/runtime/express`) so hosts without Express never load it;
 * express is a peer dependency (4.18+ or 5).
 */
import express from 'express';
import type { NextFunction, Request, Response, Router } from 'express';
import { GatewayApiError } from './api-errors';
import { GATEWAY_ROUTES, GatewayApi, GatewayApiOptions, GatewayRoute } from './gateway-api';

export interface GatewayRouter<User = unknown> extends Router {
  /** The handlers behind the router (for the host's own reaper timer, tests, metrics). */
  readonly api: GatewayApi<User>;
}

/** Room for the envelope around `data` (ids, timestamp) on top of the snapshot limit. */
const ENVELOPE_BYTES = 64 * 1024;

/**
 * Mount with `app.use('/gateway', createGatewayRouter({ allocator, authenticateUser }))`.
 * Every answer, including body-parser failures and wrong methods, is JSON
 * `{ success, … }` with a stable `code` on failure.
 */
export function createGatewayRouter<User = unknown>(options: GatewayApiOptions<User>): GatewayRouter<User> {
  const api = new GatewayApi<User>(options);
  const router = express.Router({ strict: true }) as unknown as GatewayRouter<User>;
  Object.defineProperty(router, 'api', { value: api, enumerable: true });

  router.use(express.json({ limit: api.data.maxBytes + ENVELOPE_BYTES, strict: true, type: ['application/json', 'application/*+json'] }));

  for (const route of GATEWAY_ROUTES) {
    router.post(route, (req: Request, res: Response) => {
      void api.handle(route as GatewayRoute, { headers: req.headers, body: req.body as unknown }).then((r) => {
        res.status(r.status).set('cache-control', 'no-store').json(r.body);
      });
    });
    router.all(route, (_req: Request, res: Response) => {
      const r = api.fail(new GatewayApiError('METHOD_NOT_ALLOWED', `${route} accepts POST only`), route);
      res.status(r.status).set('allow', 'POST').json(r.body);
    });
  }

  // Body-parser failures arrive here (before any handler ran, so nothing changed).
  router.use((err: unknown, _req: Request, res: Response, next: NextFunction) => {
    if (res.headersSent) {
      next(err);
      return;
    }
    const type = (err as { type?: string } | null)?.type;
    let mapped: GatewayApiError;
    if (type === 'entity.too.large') mapped = new GatewayApiError('PAYLOAD_TOO_LARGE', `request body exceeds ${api.data.maxBytes + ENVELOPE_BYTES} bytes`);
    else if (type === 'entity.parse.failed') mapped = new GatewayApiError('INVALID_REQUEST', 'malformed JSON body');
    else if (type === 'encoding.unsupported' || type === 'charset.unsupported') mapped = new GatewayApiError('UNSUPPORTED_MEDIA_TYPE', 'unsupported body encoding');
    else if (type === 'request.aborted' || type === 'request.size.invalid') mapped = new GatewayApiError('INVALID_REQUEST', 'incomplete request body');
    else {
      const r = api.fail(err, 'body');
      res.status(r.status).json(r.body);
      return;
    }
    const r = api.fail(mapped, 'body');
    res.status(r.status).json(r.body);
  });
  return router;
}
