/**
 * Operator endpoints of the built-in API server (`/operator/*`), authenticated
 * by the stack's operator token. Every answer is JSON `{ success, … }` with the
 * same stable codes as the gateway routes (runtime/http/api-errors.ts).
 */
import { createHash, timingSafeEqual } from 'crypto';
import express from 'express';
import type { Request, Response, Router } from 'express';
import type { GatewayAllocator } from '../allocator';
import { GatewayApiError, toErrorResponse } from '../http/api-errors';
import type { ApiRequest, GatewayApi } from '../http/gateway-api';
import { assertOrganizationId } from '../validation';

/** `Authorization: Bearer <token>` of a request, or undefined. */
export function bearerOf(headers: ApiRequest['headers']): string | undefined {
  const raw = headers.authorization;
  const value = Array.isArray(raw) ? raw[0] : raw;
  const m = typeof value === 'string' ? /^Bearer (\S{1,400})$/.exec(value.trim()) : null;
  return m ? m[1] : undefined;
}

/** Constant-time comparison of a presented token with the operator token (both hashed: equal lengths). */
export function operatorTokenMatcher(operatorToken: string): (headers: ApiRequest['headers']) => boolean {
  const expected = createHash('sha256').update(operatorToken, 'utf8').digest();
  return (headers) => {
    const presented = bearerOf(headers);
    if (presented === undefined) return false;
    return timingSafeEqual(createHash('sha256').update(presented, 'utf8').digest(), expected);
  };
}

export interface OperatorRouterOptions {
  allocator: GatewayAllocator;
  api: GatewayApi<unknown>;
  isOperator: (headers: ApiRequest['headers']) => boolean;
}

function send(res: Response, status: number, body: object): void {
  res.status(status).set('cache-control', 'no-store').json(body);
}

function fail(res: Response, err: unknown): void {
  const { status, body } = toErrorResponse(err);
  send(res, status, body);
}

/** Mount at `/operator`. */
export function createOperatorRouter(opts: OperatorRouterOptions): Router {
  const { allocator, api } = opts;
  const router = express.Router({ strict: true });

  router.use((req: Request, res: Response, next) => {
    if (opts.isOperator(req.headers)) return next();
    const presented = bearerOf(req.headers) !== undefined;
    fail(res, new GatewayApiError('UNAUTHENTICATED', presented ? 'wrong operator token' : 'Authorization: Bearer <operator token> is required (the stack secret output operatorToken)'));
  });

  router.get('/status', (_req, res) => {
    void Promise.all([allocator.status(), allocator.list()]).then(
      ([status, gateways]) => send(res, 200, { success: true, ...status, gateways }),
      (err: unknown) => fail(res, err),
    );
  });

  router.get('/organizations/:id', (req, res) => {
    void (async () => {
      const organizationId = req.params.id;
      assertOrganizationId(organizationId);
      const al = await allocator.getAllocation(organizationId);
      if (!al) throw new GatewayApiError('NOT_ALLOCATED', `organization ${organizationId} holds no gateway`);
      send(res, 200, { success: true, state: 'allocated', ...describeAllocation(al) });
    })().catch((err: unknown) => fail(res, err));
  });

  // The user side's /gateway/start for one organization: allocate (idempotent), then hand the gateway its organization.
  router.post('/organizations/:id/start', (req, res) => {
    void (async () => {
      const organizationId = req.params.id;
      assertOrganizationId(organizationId);
      const started = await api.handle('/start', { headers: req.headers, body: { organization_id: organizationId } });
      if (!started.body.success) return send(res, started.status, started.body);
      const al = await allocator.getAllocation(organizationId);
      send(res, 200, { ...started.body, state: al ? 'allocated' : 'released', ...(al ? { wildcard_fqdn: al.wildcardFqdn, certificate: al.certificate } : {}) });
    })().catch((err: unknown) => fail(res, err));
  });

  router.post('/organizations/:id/stop', (req, res) => {
    void (async () => {
      const organizationId = req.params.id;
      assertOrganizationId(organizationId);
      const r = await allocator.release(organizationId);
      send(res, 200, { success: true, released: true, organization_id: r.organizationId, gateway_id: r.name, state: 'released' });
    })().catch((err: unknown) => fail(res, err));
  });

  router.use((req: Request, res: Response) => fail(res, new GatewayApiError('NOT_FOUND', `no operator endpoint ${req.method} ${req.path}`)));
  return router;
}

function describeAllocation(al: NonNullable<Awaited<ReturnType<GatewayAllocator['getAllocation']>>>): Record<string, unknown> {
  return {
    organization_id: al.organizationId,
    gateway_id: al.name,
    gateway_url: `https://${al.fqdn}`,
    fqdn: al.fqdn,
    wildcard_fqdn: al.wildcardFqdn,
    certificate: al.certificate,
  };
}
