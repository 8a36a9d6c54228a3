/**
 * reconcile() decides here, without any I/O: from what was observed (pool
 * rows, the records, route files and certificate bundles this environment
 * owns, the organizations' current certificates) and what is wanted (the
 * environment's naming and rendering), the changes to apply and the report of
 * what they repair. The allocator observes, calls planReconcile, applies.
 */
import type { ReconcileReport } from './allocator-types';
import type { DnsAction, OwnedRecords } from './dns-publisher';
import { GatewayStates, type ActionCondition } from './gateway-states';
import { absolute, orgDnsNames, type UserContainerNaming } from './naming';
import { renderCertFile, renderRoute } from './nginx-config';
import type { CertFileChange, OwnedRoute, RouteChange } from './nginx-routes';

/** An A RRset owned by this environment (owner comment matched), as PowerDNS lists it. */
export interface OwnedRRset {
  name: string;
  ttl: number;
  records: Array<{ content: string; disabled: boolean }>;
}

/** The pool row fields the plan reads. */
export interface PlannedRow {
  name: string;
  host: string;
  httpPort: number;
  state: string;
  organizationId: string | null;
  allocationId: string | null;
}

export interface ReconcileObserved {
  /** Listed AFTER the effects: anything published after the effects were listed belongs to a row seen here. */
  rows: PlannedRow[];
  /** Owned A RRsets per organization. */
  dns: OwnedRecords[];
  routes: OwnedRoute[];
  certFiles: OwnedRoute[];
  /**
   * The current certificate of each allocated organization that has one;
   * undefined when the environment has no per-organization certificates
   * (then only orphaned bundles are removed).
   */
  certificates?: Map<string, { bundlePem: string }>;
}

export interface ReconcileDesired {
  envName: string;
  domain: string;
  publicIp: string;
  ttl: number;
  naming: UserContainerNaming;
}

export interface ReconcileChanges {
  dns: DnsAction[];
  routes: RouteChange[];
  certificates: CertFileChange[];
  /** The repair lists of ReconcileReport this plan fills in. */
  report: Pick<ReconcileReport, 'dnsRepaired' | 'routesRepaired' | 'dnsOrphansRemoved' | 'routeOrphansRemoved' | 'certificatesRepaired' | 'certificateOrphansRemoved'>;
}

/** True when an organization's owned records are exactly what the allocator publishes (names of the scheme, address, TTL). */
export function dnsRecordsCorrect(orgId: string, rrsets: OwnedRRset[], want: DnsWant): boolean {
  const wanted = new Set(orgDnsNames(orgId, want.domain, want.naming).map(absolute));
  // A TTL other than ours (e.g. records published before the short TTLs) is wrong too:
  // reconcile() re-publishes it, so a release disappears from caches as fast as promised.
  const contentOk = rrsets.every((rr) => rr.records.length === 1 && rr.records[0].content === want.publicIp && !rr.records[0].disabled && rr.ttl === want.ttl);
  return contentOk && rrsets.length === wanted.size && rrsets.every((rr) => wanted.has(rr.name));
}

type DnsWant = Pick<ReconcileDesired, 'domain' | 'naming' | 'publicIp' | 'ttl'>;

/**
 * The changes that bring the effects back into agreement with the rows:
 * allocated organizations get missing or wrong records, routes and bundles
 * (fenced on their allocation); organizations that hold no gateway lose what
 * this environment owns for them (fenced on still holding none).
 */
export function planReconcile(observed: ReconcileObserved, desired: ReconcileDesired): ReconcileChanges {
  const plan: ReconcileChanges = {
    dns: [],
    routes: [],
    certificates: [],
    report: { dnsRepaired: [], routesRepaired: [], dnsOrphansRemoved: [], routeOrphansRemoved: [], certificatesRepaired: [], certificateOrphansRemoved: [] },
  };
  const held = new Set(observed.rows.filter((r) => r.organizationId).map((r) => r.organizationId as string));
  const routeText = new Map(observed.routes.map((r) => [r.orgId, r.content]));
  const records = new Map(observed.dns.map((d) => [d.orgId, d.content]));
  for (const r of observed.rows) {
    if (r.state !== GatewayStates.allocated) continue;
    const orgId = r.organizationId as string;
    const onlyIf: ActionCondition = { kind: 'allocated', allocationId: r.allocationId as string };
    const rrsets = records.get(orgId);
    if (!rrsets || !dnsRecordsCorrect(orgId, rrsets, desired)) {
      plan.dns.push({ orgId, present: true, onlyIf });
      plan.report.dnsRepaired.push(orgId);
    }
    if (routeText.get(orgId) !== renderRoute(desired.envName, orgId, r.name, r.host, r.httpPort)) {
      plan.routes.push({ orgId, onlyIf, target: { gatewayName: r.name, host: r.host, port: r.httpPort } });
      plan.report.routesRepaired.push(orgId);
    }
  }
  for (const { orgId } of observed.dns) {
    if (held.has(orgId)) continue;
    plan.dns.push({ orgId, present: false, onlyIf: { kind: 'orphan' } });
    plan.report.dnsOrphansRemoved.push(orgId);
  }
  for (const r of observed.routes) {
    if (held.has(r.orgId)) continue;
    plan.routes.push({ orgId: r.orgId, onlyIf: { kind: 'orphan' } });
    plan.report.routeOrphansRemoved.push(r.orgId);
  }
  planCertificates(observed, held, desired.envName, plan);
  return plan;
}

/**
 * Bundles of organizations that hold no gateway go; with per-organization
 * certificates, those of allocated ones that are missing, differ from
 * PostgreSQL (renewed elsewhere) or are no longer valid (no current certificate) are rewritten or removed.
 */
function planCertificates(observed: ReconcileObserved, held: Set<string>, envName: string, plan: ReconcileChanges): void {
  for (const f of observed.certFiles) {
    if (held.has(f.orgId)) continue;
    plan.certificates.push({ orgId: f.orgId, onlyIf: { kind: 'orphan' } });
    plan.report.certificateOrphansRemoved.push(f.orgId);
  }
  const current = observed.certificates;
  if (!current) return;
  const certText = new Map(observed.certFiles.map((f) => [f.orgId, f.content]));
  for (const r of observed.rows) {
    if (r.state !== GatewayStates.allocated) continue;
    const orgId = r.organizationId as string;
    const cert = current.get(orgId);
    const want = cert ? renderCertFile(envName, orgId, cert.bundlePem) : undefined;
    if (certText.get(orgId) === want) continue;
    plan.certificates.push({ orgId, onlyIf: { kind: 'allocated', allocationId: r.allocationId as string }, bundlePem: cert?.bundlePem });
    plan.report.certificatesRepaired.push(orgId);
  }
}
