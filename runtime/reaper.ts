import { db, type AllocatorContext } from './allocator-context';
import type { GatewayListing, ReapReport, ReleaseOptions } from './allocator-types';
import { toListing } from './allocator-views';
import { AllocatorError, asAllocatorError, isAllocatorError } from './errors';
import { assertGatewayName } from './validation';

/** Retired tokens only serve to recognise a late second stop; a week is plenty. */
const RETIRED_TOKEN_KEEP_MS = 7 * 24 * 3600 * 1000;

export type Release = (organizationId: string, options: ReleaseOptions) => Promise<unknown>;

/**
 * Signs of life and their absence: heartbeats, the silent gateways, and the
 * reaper that releases them (through the lifecycle's release, fenced on the
 * allocation and re-checking the silence).
 */
export class Reaper {
  constructor(
    private readonly c: AllocatorContext,
    private readonly release: Release,
  ) {}

  async heartbeat(gatewayName: string): Promise<void> {
    this.c.open.assertOpen();
    assertGatewayName(gatewayName);
    if (!(await db(() => this.c.store.heartbeat(gatewayName), 'heartbeat failed'))) {
      throw new AllocatorError('NOT_ALLOCATED', `gateway ${gatewayName} is not allocated`, { gateway: gatewayName });
    }
  }

  async reapStale(maxSilenceMs: number): Promise<ReapReport> {
    this.c.open.assertOpen();
    if (!Number.isFinite(maxSilenceMs) || maxSilenceMs < 0) throw new AllocatorError('INVALID_CONFIG', 'maxSilenceMs must be a non-negative number');
    const report: ReapReport = { released: [], revived: [], errors: [] };
    const silent = await db(() => this.c.store.findSilent(maxSilenceMs), 'lookup failed');
    for (const row of silent) {
      const orgId = row.organizationId as string;
      try {
        await this.release(orgId, { allocationId: row.allocationId as string, silentForMs: maxSilenceMs });
        report.released.push({ gateway: row.name, organizationId: orgId, silentSince: (row.lastHeartbeatAt ?? row.stateSince).toISOString() });
        this.c.log({ event: 'gateway.reaped', env: this.c.envName, gateway: row.name, organizationId: orgId });
      } catch (err) {
        if (isAllocatorError(err, 'NOT_ALLOCATED')) {
          report.revived.push(row.name);
          continue;
        }
        const e = asAllocatorError(err, 'DATABASE_FAILED', 'reap failed');
        report.errors.push({ gateway: row.name, organizationId: orgId, code: e.code, message: e.message });
      }
    }
    // Housekeeping only: a failure here changes no answer, and the next reap retries.
    await this.c.store.tokens.forgetRetiredTokens(RETIRED_TOKEN_KEEP_MS).catch(() => undefined);
    return report;
  }

  async findSilent(maxSilenceMs: number): Promise<GatewayListing[]> {
    this.c.open.assertOpen();
    return (await db(() => this.c.store.findSilent(maxSilenceMs), 'lookup failed')).map(toListing);
  }
}
