import * as path from 'path';
import type { Pool } from 'pg';
import type { Guard } from './fenced-batch-writer';
import type { UserContainerNaming } from './naming';
import { CERTS_SUBDIR, ROUTES_SUBDIR } from './nginx-config';
import { BaseConfig } from './nginx-base-config';
import { CertFiles, type CertFileChange } from './nginx-cert-files';
import { RouteFiles, type OwnedRoute, type RouteChange } from './nginx-route-files';
import { Stage1Status } from './stage1-status';

export type { CertFileChange } from './nginx-cert-files';
export type { OwnedRoute, RouteChange } from './nginx-route-files';

export interface NginxOptions {
  /** Directory the allocator owns, included by the stage-1 nginx.conf's http block (`include <confDir>/*.conf`). */
  confDir: string;
  tls: { certPath: string; keyPath: string };
  /** `listen` parameters of the organization server; default `443 ssl`. */
  listen?: string;
  /** Validates the whole configuration; default `nginx -t -q`. */
  testCommand?: string[];
  /** Makes nginx load it; default `nginx -s reload`. */
  reloadCommand?: string[];
  /** Loopback address of the allocator's status server in nginx; default 127.0.0.1:8099. */
  statusListen?: string;
  /** Timeout of the test and reload commands; default 20 s. */
  commandTimeoutMs?: number;
  /** How long to wait for nginx to serve a route or a reloaded base configuration; default 15 s. */
  liveTimeoutMs?: number;
  /**
   * uid/gid the nginx workers run as (nginx.conf `user`). Only used with
   * per-organization certificates: their bundles hold private keys, so they
   * are mode 0600 and owned by the workers, which load them per handshake.
   * Default: read from /proc/<pid>/status of the worker that answers the
   * status server (allocator and nginx on one host, as in the dev container).
   */
  workerUser?: { uid: number; gid: number };
}

/** Optional features of the organization server, decided by the allocator's options. */
export interface Stage1Features {
  naming?: UserContainerNaming;
  /** Choose the certificate per handshake from `<confDir>/certs/` (nested naming with an OrgCertificates manager). */
  orgCertificates?: boolean;
}

/**
 * Keeps the stage-1 nginx: its base configuration (nginx-base-config.ts),
 * the organizations' route files (nginx-route-files.ts) and, with
 * per-organization certificates, their bundles (nginx-cert-files.ts), all
 * written under one config lock (nginx-lock.ts) and confirmed through nginx's
 * own workers (stage1-status.ts). Route and bundle writes are batched and
 * fenced like DNS records (fenced-batch-writer.ts).
 */
export class NginxRoutes {
  private readonly status: Stage1Status;
  private readonly base: BaseConfig;
  private readonly routes: RouteFiles;
  private readonly certs: CertFiles | undefined;
  /** Per-organization certificate bundles; undefined when the org server uses the base certificate only. */
  private readonly certDir: string | undefined;

  constructor(opts: NginxOptions, pool: Pool, envName: string, domain: string, guard: Guard, features: Stage1Features = {}) {
    const routesDir = path.join(opts.confDir, ROUTES_SUBDIR);
    this.certDir = features.orgCertificates ? path.join(opts.confDir, CERTS_SUBDIR) : undefined;
    const liveTimeoutMs = opts.liveTimeoutMs ?? 15_000;
    this.status = new Stage1Status(opts.statusListen ?? '127.0.0.1:8099', liveTimeoutMs);
    const render = {
      confDir: opts.confDir,
      domain,
      listen: opts.listen ?? '443 ssl',
      certPath: opts.tls.certPath,
      keyPath: opts.tls.keyPath,
      statusListen: this.status.listen,
      naming: features.naming,
      orgCertDir: this.certDir,
    };
    this.base = new BaseConfig(
      pool,
      { render, routesDir, testCommand: opts.testCommand ?? ['nginx', '-t', '-q'], reloadCommand: opts.reloadCommand ?? ['nginx', '-s', 'reload'], commandTimeoutMs: opts.commandTimeoutMs ?? 20_000 },
      this.status,
    );
    this.routes = new RouteFiles(pool, guard, opts.confDir, routesDir, envName, this.status);
    this.certs = this.certDir ? new CertFiles(pool, guard, opts.confDir, this.certDir, envName, this.status, opts.workerUser, liveTimeoutMs) : undefined;
  }

  get reloads(): number {
    return this.base.reloads;
  }

  get tests(): number {
    return this.base.tests;
  }

  /** Total ms spent writing routes and confirming them live (bench). */
  get routeMs(): number {
    return this.routes.appliedMs;
  }

  // ------------------------------------------------------------ routes

  /** Writes (or without a target, removes) an organization's route; an addition resolves once nginx serves it. */
  set(change: RouteChange): Promise<void> {
    return this.routes.submit(change);
  }

  /** Applies route changes now, as one batch (reconcile). */
  apply(changes: RouteChange[]): Promise<void> {
    return this.routes.apply(changes);
  }

  /** Route files this allocator owns for this environment. */
  listOwned(): Promise<OwnedRoute[]> {
    return this.routes.listOwned();
  }

  /** Removes the temp files of route and bundle writes whose writer died before renaming them; their names. */
  async removeAbandonedTempFiles(): Promise<string[]> {
    const [routes, certs] = await Promise.all([this.routes.removeAbandonedTempFiles(), this.certs ? this.certs.removeAbandonedTempFiles() : []]);
    return [...routes, ...certs];
  }

  // ------------------------------------------------------------ certificate bundles

  /** Writes (or with no bundle, removes) an organization's certificate bundle; a write resolves once nginx's workers can read it. */
  setCertificate(change: CertFileChange): Promise<void> {
    return this.certs ? this.certs.submit(change) : Promise.resolve();
  }

  /** Applies certificate changes now, as one batch (reconcile). */
  applyCertificates(changes: CertFileChange[]): Promise<void> {
    return this.certs ? this.certs.apply(changes) : Promise.resolve();
  }

  /** Certificate bundles this allocator owns for this environment, with their content. */
  listOwnedCertificates(): Promise<OwnedRoute[]> {
    return this.certs ? this.certs.listOwned() : Promise.resolve([]);
  }

  /** True when the organization's bundle file holds exactly this bundle (a repeated allocate need not rewrite it). */
  certificateFileMatches(orgId: string, bundlePem: string): Promise<boolean> {
    return this.certs ? this.certs.fileMatches(orgId, bundlePem) : Promise.resolve(true);
  }

  // ------------------------------------------------------------ base configuration

  /** See BaseConfig.ensure: writes, tests and reloads the base configuration if nginx does not run it; true if it did. */
  ensureBaseConfig(): Promise<boolean> {
    return this.base.ensure();
  }

  /** With per-org certificates: NGINX_FAILED if the workers cannot read the base certificate and key (see BaseConfig). */
  checkBaseCertificateReadable(): Promise<void> {
    return this.base.checkBaseCertificateReadable();
  }

  /** Resolves once no route or bundle batch is queued or being written. */
  idle(): Promise<void> {
    return Promise.all([this.routes.idle(), this.certs?.idle()]).then(() => undefined);
  }

  /** After idle(), when the allocator closes: the retired route files kept for reuse are unlinked. */
  close(): Promise<void> {
    return this.routes.clearSpares();
  }
}
