import { db } from './allocator-context';
import type { AllocatorLogger, ReconcileReport } from './allocator-types';
import type { DnsPublisher } from './dns-publisher';
import { asAllocatorError } from './errors';
import { GatewayStates, TRANSIENT_STATES } from './gateway-states';
import type { NginxRoutes } from './nginx-routes';
import type { GatewayRow, PoolStore } from './pool-store';
import { planReconcile, ReconcileChanges, ReconcileDesired, ReconcileObserved } from './reconcile-plan';
import type { OrgCertificateProvider } from './tls/org-certificates';

export interface ReconcilerDeps {
  store: PoolStore;
  dns: DnsPublisher;
  routes: NginxRoutes;
  certs?: OrgCertificateProvider;
  desired: ReconcileDesired;
  log: AllocatorLogger;
  /** The allocator's one recovery path (take over, undo, return to the pool); false when another process took the row first. */
  recover(row: GatewayRow, force: boolean): Promise<boolean>;
}

/**
 * One reconcile() pass: recover interrupted operations, observe the effects,
 * plan (reconcile-plan.ts, pure), apply. Never touches records or files it does not own.
 */
export class PoolReconciler {
  constructor(private readonly d: ReconcilerDeps) {}

  async run(force: boolean): Promise<ReconcileReport> {
    const report: ReconcileReport = {
      recovered: [],
      dnsRepaired: [],
      routesRepaired: [],
      dnsOrphansRemoved: [],
      routeOrphansRemoved: [],
      certificatesRepaired: [],
      certificateOrphansRemoved: [],
      tempFilesRemoved: [],
      certificatesIssued: [],
      certificatesStarted: [],
      inFlight: [],
      errors: [],
    };
    await this.recoverInterrupted(force, report);
    const plan = planReconcile(await this.observeEffects(report), this.d.desired);
    for (const [key, orgs] of Object.entries(plan.report) as Array<[keyof ReconcileChanges['report'], string[]]>) report[key].push(...orgs);
    const results = await Promise.allSettled([
      this.d.dns.apply(plan.dns),
      this.d.routes.apply(plan.routes),
      this.d.routes.applyCertificates(plan.certificates),
      this.d.routes.removeAbandonedTempFiles().then((names) => void report.tempFilesRemoved.push(...names)),
    ]);
    results.forEach((res, i) => {
      if (res.status === 'rejected') {
        const e = asAllocatorError(res.reason, (['DNS_FAILED', 'NGINX_FAILED', 'TLS_FAILED', 'NGINX_FAILED'] as const)[i], 'reconcile repair failed');
        report.errors.push({ code: e.code, message: e.message });
      }
    });
    this.d.log({
      event: 'pool.reconciled',
      env: this.d.desired.envName,
      recovered: report.recovered.length,
      dnsRepaired: report.dnsRepaired.length,
      routesRepaired: report.routesRepaired.length,
      dnsOrphansRemoved: report.dnsOrphansRemoved.length,
      routeOrphansRemoved: report.routeOrphansRemoved.length,
      certificatesRepaired: report.certificatesRepaired.length,
      certificateOrphansRemoved: report.certificateOrphansRemoved.length,
      tempFilesRemoved: report.tempFilesRemoved.length,
      certificatesIssued: report.certificatesIssued.length,
      certificatesStarted: report.certificatesStarted.length,
      errors: report.errors.length,
    });
    return report;
  }

  /** reconcile, step 1: transitional gateways whose owner is gone (lease expired, or all with `force`) are driven to ready. */
  private async recoverInterrupted(force: boolean, report: ReconcileReport): Promise<void> {
    for (const row of await db(() => this.d.store.list(), 'reconcile failed')) {
      if (!TRANSIENT_STATES.includes(row.state)) continue;
      if (!row.leaseExpired && !force) {
        report.inFlight.push(row.name);
        continue;
      }
      try {
        if (await this.d.recover(row, force)) report.recovered.push({ gateway: row.name, organizationId: row.organizationId as string, was: row.state });
      } catch (err) {
        const e = asAllocatorError(err, 'DATABASE_FAILED', 'recovery failed');
        report.errors.push({ gateway: row.name, organizationId: row.organizationId ?? undefined, code: e.code, message: e.message });
      }
    }
  }

  /**
   * reconcile, step 2: what the effects look like. Effects are listed BEFORE
   * the rows: anything an allocation published after this point belongs to a
   * row we will see, so it cannot be mistaken for an orphan. With
   * per-organization certificates, the allocated organizations' certificates
   * are first issued or renewed where missing or due (background orders for
   * ACME), then read; if that fails, no bundle is touched this round.
   */
  private async observeEffects(report: ReconcileReport): Promise<ReconcileObserved> {
    const [dns, routes, certFiles] = await Promise.all([this.d.dns.listOwned(), this.d.routes.listOwned(), this.d.routes.listOwnedCertificates()]).catch((err: unknown) => {
      throw asAllocatorError(err, 'DNS_FAILED', 'reconcile could not list owned records');
    });
    const rows = await db(() => this.d.store.list(), 'reconcile failed');
    if (!this.d.certs) return { rows, dns, routes, certFiles };
    try {
      await this.d.routes.checkBaseCertificateReadable();
      const allocated = rows.filter((r) => r.state === GatewayStates.allocated).map((r) => r.organizationId as string);
      const maintained = await this.d.certs.maintain(allocated);
      report.certificatesIssued.push(...maintained.issued);
      report.certificatesStarted.push(...maintained.started);
      for (const f of maintained.failed) report.errors.push({ organizationId: f.organizationId, code: 'TLS_FAILED', message: f.message });
      return { rows, dns, routes, certFiles, certificates: await this.d.certs.current(allocated) };
    } catch (err) {
      const e = asAllocatorError(err, 'TLS_FAILED', 'reconcile repair failed');
      report.errors.push({ code: e.code, message: e.message });
      return { rows, dns, routes, certFiles: [] };
    }
  }

}
