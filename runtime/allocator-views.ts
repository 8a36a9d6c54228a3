/** The public shapes of a gateway row (Allocation, GatewayListing); pure. */
import type { Allocation, GatewayListing } from './allocator-types';
import { orgFqdn, orgWildcardFqdn } from './naming';
import type { GatewayRow } from './pool-store';
import type { OrgCertificateState } from './tls/org-certificates';

/** An allocated row as the caller sees it; `token` only for the call that created the allocation. */
export function toAllocation(row: GatewayRow, domain: string, token: string | null, created: boolean, certificate: OrgCertificateState): Allocation {
  const orgId = row.organizationId as string;
  return {
    name: row.name,
    host: row.host,
    httpPort: row.httpPort,
    vpnPort: row.vpnPort,
    organizationId: orgId,
    allocationId: row.allocationId as string,
    fqdn: orgFqdn(orgId, domain),
    wildcardFqdn: orgWildcardFqdn(orgId, domain),
    token,
    created,
    certificate,
  };
}

export function toListing(r: GatewayRow): GatewayListing {
  return {
    name: r.name,
    host: r.host,
    httpPort: r.httpPort,
    vpnPort: r.vpnPort,
    state: r.state,
    organizationId: r.organizationId,
    since: r.stateSince.toISOString(),
    lastHeartbeatAt: r.lastHeartbeatAt ? r.lastHeartbeatAt.toISOString() : null,
    leaseExpired: r.leaseExpired,
    lastError: r.lastError,
  };
}
