import type { AllocatorLogger } from './allocator-types';
import { GatewayStates } from './gateway-states';
import type { NginxRoutes } from './nginx-routes';
import type { GatewayRow, PoolStore } from './pool-store';
import type { BackgroundResult, OrgCertificateProvider, OrgCertificateState } from './tls/org-certificates';

/**
 * The certificate life cycle of allocations (nested naming with a provider):
 * obtained during an allocation, reused or repaired by a repeated allocate,
 * written when a background order completes, retried after its back-off.
 * Without a provider every answer is `none`.
 */
export class AllocationCertificates {
  /** Retries of failed background certificate orders, at their back-off time. */
  private readonly retries = new Map<string, NodeJS.Timeout>();
  private closed = false;
  private readonly unsubscribe?: () => void;

  constructor(
    readonly provider: OrgCertificateProvider | undefined,
    private readonly routes: NginxRoutes,
    private readonly store: PoolStore,
    private readonly envName: string,
    private readonly log: AllocatorLogger,
  ) {
    this.unsubscribe = provider?.onBackgroundResult((r) => this.onResult(r));
  }

  /**
   * During an allocation: the organization's certificate in place for nginx.
   * await issuers (dev CA) issue first; background ones (ACME) return pending
   * and write the file when the order completes (onResult).
   */
  async ensure(orgId: string): Promise<OrgCertificateState> {
    if (!this.provider) return 'none';
    const cert = await this.provider.obtain(orgId);
    if (!cert) return 'pending';
    await this.routes.setCertificate({ orgId, bundlePem: cert.bundlePem });
    return 'ready';
  }

  /** A repeated allocate: reuse, or repair the file, of an existing allocation (fenced on it). */
  async repair(row: GatewayRow): Promise<OrgCertificateState> {
    if (!this.provider) return 'none';
    const orgId = row.organizationId as string;
    const cert = await this.provider.obtain(orgId).catch((err: unknown) => {
      this.log({ event: 'certificate.failed', env: this.envName, organizationId: orgId, code: 'TLS_FAILED', message: (err as Error).message });
      return undefined;
    });
    if (!cert) return (await this.state(orgId)) === 'ready' ? 'ready' : 'pending';
    if (!(await this.routes.certificateFileMatches(orgId, cert.bundlePem))) {
      await this.routes.setCertificate({ orgId, bundlePem: cert.bundlePem, onlyIf: { kind: 'allocated', allocationId: row.allocationId as string } });
    }
    return 'ready';
  }

  async state(orgId: string): Promise<OrgCertificateState> {
    if (!this.provider) return 'none';
    return (await this.provider.current([orgId])).has(orgId) ? 'ready' : 'pending';
  }

  /** A background order finished: write the bundle if the organization is still allocated, or retry after its back-off. */
  onResult(result: BackgroundResult): void {
    if (this.closed) return;
    const orgId = result.kind === 'issued' ? result.certificate.organizationId : result.organizationId;
    void (async () => {
      const row = await this.store.findByOrganization(orgId);
      if (!row || row.state !== GatewayStates.allocated) return;
      if (result.kind === 'issued') {
        await this.routes.setCertificate({ orgId, bundlePem: result.certificate.bundlePem, onlyIf: { kind: 'allocated', allocationId: row.allocationId as string } });
        this.log({ event: 'certificate.ready', env: this.envName, gateway: row.name, organizationId: orgId, serial: result.certificate.serial });
        return;
      }
      const delay = Math.max(1_000, (result.retryAfter?.getTime() ?? Date.now() + 60_000) - Date.now());
      clearTimeout(this.retries.get(orgId));
      const timer = setTimeout(() => {
        this.retries.delete(orgId);
        if (this.closed) return;
        void this.store
          .findByOrganization(orgId)
          .then((fresh) => (fresh?.state === GatewayStates.allocated ? this.repair(fresh) : undefined))
          .catch(() => undefined);
      }, Math.min(delay, 2 ** 31 - 1));
      timer.unref();
      this.retries.set(orgId, timer);
    })().catch((err: unknown) => this.log({ event: 'certificate.write_failed', env: this.envName, organizationId: orgId, code: 'NGINX_FAILED', message: (err as Error).message }));
  }

  /** Stops listening for background results and cancels pending retries. */
  close(): void {
    this.closed = true;
    this.unsubscribe?.();
    for (const t of this.retries.values()) clearTimeout(t);
    this.retries.clear();
  }
}
