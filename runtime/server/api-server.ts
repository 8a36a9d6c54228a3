/**
 * The built-in API server: the environment's default Ganymede. It serves the
 * gateway protocol (`/gateway/*`, runtime/http), operator endpoints
 * (`/operator/*`, bearer = the stack's operator token) and `/healthz`, and
 * keeps the pool in shape: registers the stack's inventory at start, runs
 * reconcile() at start and periodically, and the reaper periodically; with
 * gateways on remote Docker hosts, the host quarantine too (runtime/host-health.ts).
 *
 * All state is in PostgreSQL, so a restart (of this process or of the whole
 * dev container, whose nginx route files are not on a volume) loses nothing:
 * start-up is idempotent and its reconcile() rewrites the stage-1 files and
 * DNS records from the pool tables.
 */
import express from 'express';
import type { Request, Response } from 'express';
import * as http from 'http';
import type { AddressInfo } from 'net';
import { GatewayAllocator, type AllocatorLogEvent, type AllocatorLogger } from '../allocator';
import type { RuntimeConfig } from '../config/types';
import { GatewayApiError, toErrorResponse } from '../http/api-errors';
import { createGatewayRouter } from '../http/express';
import { HostHealthMonitor, isRemoteGatewayHost, type GatewayProbe } from '../host-health';
import { createOperatorRouter, operatorTokenMatcher } from './operator';
import { Periodic } from './periodic';

export interface ApiServerOptions {
  /** One JSON object per event; default: one JSON line on stdout. */
  logger?: AllocatorLogger;
  /** How long start-up waits for PostgreSQL (it may start with the container); default 120 s. */
  databaseWaitMs?: number;
  /** Grace for open connections on close(); default 10 s. */
  closeGraceMs?: number;
  /** Probe of the host quarantine (tests); default: HTTP GET of the gateway's stage-2 health path. */
  hostProbe?: GatewayProbe;
}

export interface ApiServerHandle {
  readonly allocator: GatewayAllocator;
  readonly address: AddressInfo;
  /** Runs a reconcile pass now (after the one in progress, if any). */
  reconcileNow(): Promise<void>;
  /** Runs a reaper pass now. */
  reapNow(): Promise<void>;
  /** Runs a host-quarantine round now (no-op when every gateway is on the main host). */
  hostHealthNow(): Promise<void>;
  /** Stops the timers, the HTTP server and the allocator (idempotent). */
  close(): Promise<void>;
}

export function stdoutLogger(e: AllocatorLogEvent): void {
  process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), ...e })}\n`);
}

/** A reconcile pass that changed nothing is not a state change: not logged. */
function quietNoOps(log: AllocatorLogger): AllocatorLogger {
  return (e) => {
    if (e.event === 'pool.reconciled' && Object.entries(e).every(([k, v]) => typeof v !== 'number' || v === 0 || k === 'ms')) return;
    log(e);
  };
}

function errorFields(err: unknown): { code?: string; message: string } {
  const code = (err as { code?: unknown } | null)?.code;
  return { ...(typeof code === 'string' ? { code } : {}), message: err instanceof Error ? err.message : String(err) };
}

async function waitForDatabase(allocator: GatewayAllocator, log: AllocatorLogger, env: string, waitMs: number): Promise<void> {
  const deadline = Date.now() + waitMs;
  let delay = 250;
  for (;;) {
    try {
      const m = await allocator.migrate();
      log({ event: 'server.migrated', env, applied: m.applied });
      return;
    } catch (err) {
      if (Date.now() + delay > deadline) throw err;
      log({ event: 'server.waiting_for_database', env, ...errorFields(err) } as AllocatorLogEvent);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    }
  }
}

/**
 * Starts the server: migrations, inventory + registration tokens, reconcile(),
 * then listens on `api.listen` and starts the periodic reconcile and reaper.
 */
export async function startApiServer(cfg: RuntimeConfig, options: ApiServerOptions = {}): Promise<ApiServerHandle> {
  const env = cfg.envName;
  const log = quietNoOps(options.logger ?? stdoutLogger);
  const allocator = GatewayAllocator.fromConfig(cfg, { logger: log });
  let server: http.Server | undefined;
  const timers: Periodic[] = [];
  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      await Promise.all(timers.map((t) => t.stop()));
      if (server?.listening) await closeHttpServer(server, options.closeGraceMs ?? 10_000);
      await allocator.close();
      log({ event: 'server.stopped', env });
    })();
    return closing;
  };

  try {
    await waitForDatabase(allocator, log, env, options.databaseWaitMs ?? 120_000);
    // Same as `gateway-pool sync --prune`: the config's inventory is the stack's, so a pool resize in `pulumi up` lands here.
    // (The allocator logs the result: event inventory.registered.)
    await allocator.registerGateways(cfg.inventory, { prune: true });
    await allocator.setRegistrationTokens(cfg.secrets.gatewayRegistrationTokens);
    await runReconcile(allocator, log, env);

    const app = apiApp(cfg, allocator, log);
    const s = http.createServer(app);
    server = s;
    await listen(s, cfg.api.listen.port, cfg.api.listen.host);
    const address = s.address() as AddressInfo;

    const { reconcile, reaper } = periodicTasks(cfg, allocator, log);
    timers.push(reconcile, reaper);
    // Remote gateway hosts only (inventory host = an IPv4 address): the main host's gateways are never probed.
    const remote = cfg.inventory.some((g) => isRemoteGatewayHost(g.host));
    const hostHealth = hostHealthTask(cfg, allocator, log, options.hostProbe);
    if (remote) timers.push(hostHealth);
    reconcile.start();
    reaper.start();
    if (remote) hostHealth.start();
    log({ event: 'server.listening', env, host: address.address, port: address.port, publicUrl: cfg.api.publicUrl, gateways: cfg.inventory.length });
    return {
      allocator,
      address,
      reconcileNow: () => reconcile.runNow(),
      reapNow: () => reaper.runNow(),
      hostHealthNow: () => (remote ? hostHealth.runNow() : Promise.resolve()),
      close,
    };
  } catch (err) {
    await close().catch(() => undefined);
    throw err;
  }
}

/** The probe of remote gateway hosts' stage-2 endpoints (not started); the server runs it only when the inventory has remote hosts. */
function hostHealthTask(cfg: RuntimeConfig, allocator: GatewayAllocator, log: AllocatorLogger, probe: ApiServerOptions['hostProbe']): Periodic {
  const env = cfg.envName;
  const monitor = new HostHealthMonitor({
    pool: allocator.pgPool,
    schema: allocator.schema,
    envName: env,
    settings: cfg.api.hostHealth,
    logger: log,
    probe,
  });
  return new Periodic(
    'host-health',
    cfg.api.hostHealth.intervalSeconds * 1000,
    async () => {
      await monitor.runOnce();
    },
    (err) => log({ event: 'server.host_health_failed', env, ...errorFields(err) } as AllocatorLogEvent),
  );
}

/** The server's routes: /healthz, the gateway protocol (/gateway), the operator's (/operator), JSON 404 for the rest. */
function apiApp(cfg: RuntimeConfig, allocator: GatewayAllocator, log: AllocatorLogger): express.Express {
  const env = cfg.envName;
  const isOperator = operatorTokenMatcher(cfg.secrets.operatorToken);
  const gatewayRouter = createGatewayRouter<unknown>({
    allocator,
    authenticateUser: (req) => (isOperator(req.headers) ? { operator: true } : null),
    publicUrl: cfg.api.gatewayUrl,
    logger: log,
  });
  const app = express();
  app.disable('x-powered-by');
  app.set('trust proxy', 'loopback');
  app.get('/healthz', (_req: Request, res: Response) => {
    allocator.pgPool.query('SELECT 1').then(
      () => res.status(200).set('cache-control', 'no-store').json({ success: true, env, database: 'ok' }),
      () => res.status(503).set('cache-control', 'no-store').json({ success: false, code: 'DATABASE_FAILED', message: 'database unreachable', retryable: true }),
    );
  });
  app.use('/gateway', gatewayRouter);
  app.use('/operator', createOperatorRouter({ allocator, api: gatewayRouter.api, isOperator }));
  app.use((req: Request, res: Response) => {
    const { status, body } = toErrorResponse(new GatewayApiError('NOT_FOUND', `no endpoint ${req.method} ${req.path}`));
    res.status(status).json(body);
  });
  return app;
}

function listen(s: http.Server, port: number, host: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    s.once('error', reject);
    s.listen(port, host, () => {
      s.off('error', reject);
      resolve();
    });
  });
}

/** Stops accepting; requests in flight get up to graceMs, then their connections are cut. */
async function closeHttpServer(s: http.Server, graceMs: number): Promise<void> {
  const grace = setTimeout(() => s.closeAllConnections(), graceMs);
  s.closeIdleConnections();
  await new Promise<void>((r) => s.close(() => r()));
  clearTimeout(grace);
}

/** The periodic reconcile and reaper (not started); a failed run is logged and the next one still comes. */
function periodicTasks(cfg: RuntimeConfig, allocator: GatewayAllocator, log: AllocatorLogger): { reconcile: Periodic; reaper: Periodic } {
  const env = cfg.envName;
  const reconcile = new Periodic('reconcile', cfg.api.reconcileIntervalSeconds * 1000, () => runReconcile(allocator, log, env), (err) => log({ event: 'server.reconcile_failed', env, ...errorFields(err) } as AllocatorLogEvent));
  const silenceMs = cfg.api.reaper.silenceSeconds * 1000;
  const reaper = new Periodic(
    'reaper',
    cfg.api.reaper.intervalSeconds * 1000,
    async () => {
      const rep = await allocator.reapStale(silenceMs);
      if (rep.released.length > 0 || rep.errors.length > 0) log({ event: 'pool.reaped', env, released: rep.released, errors: rep.errors.length });
      for (const e of rep.errors) log({ event: 'pool.reap_failed', env, gateway: e.gateway, organizationId: e.organizationId, code: e.code, message: e.message });
    },
    (err) => log({ event: 'server.reaper_failed', env, ...errorFields(err) } as AllocatorLogEvent),
  );
  return { reconcile, reaper };
}

/** One reconcile pass; its problems are logged one per line (a failed pass is retried on the next tick). */
async function runReconcile(allocator: GatewayAllocator, log: AllocatorLogger, env: string): Promise<void> {
  try {
    const rep = await allocator.reconcile();
    for (const e of rep.errors) log({ event: 'pool.reconcile_error', env, gateway: e.gateway, organizationId: e.organizationId, code: e.code, message: e.message });
  } catch (err) {
    log({ event: 'server.reconcile_failed', env, ...errorFields(err) } as AllocatorLogEvent);
  }
}
