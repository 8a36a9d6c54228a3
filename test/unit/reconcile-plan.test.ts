import { strict as assert } from 'assert';
import { renderCertFile, renderRoute } from '../../runtime/nginx-config';
import { OwnedRRset, planReconcile, PlannedRow, ReconcileDesired, ReconcileObserved } from '../../runtime/reconcile-plan';

describe('reconcile plan (runtime/reconcile-plan.ts: observed + desired → changes, no I/O)', () => {
  const domain = 'dev.example.test';
  const nested: ReconcileDesired = { envName: 'dev', domain, publicIp: '10.0.0.5', ttl: 3, naming: 'nested' };
  const flat: ReconcileDesired = { ...nested, naming: 'flat' };
  const orgA = 'a3bb189e-8bf9-3888-9912-ace4e6543002';
  const orgB = 'b3bb189e-8bf9-3888-9912-ace4e6543002';
  const orgC = 'c3bb189e-8bf9-3888-9912-ace4e6543002';
  const rowA: PlannedRow = { name: 'gw-0', host: '10.1.0.1', httpPort: 7100, state: 'allocated', organizationId: orgA, allocationId: '41' };
  const rr = (name: string, over: Partial<OwnedRRset> = {}): OwnedRRset => ({ name: `${name}.`, ttl: 3, records: [{ content: '10.0.0.5', disabled: false }], ...over });
  const nestedRecords = (org: string): OwnedRRset[] => [rr(`org-${org}.${domain}`), rr(`*.org-${org}.${domain}`)];
  const owned = (orgId: string, content: OwnedRRset[]) => ({ orgId, content });
  const routeOf = (r: PlannedRow) => ({ orgId: r.organizationId as string, content: renderRoute('dev', r.organizationId as string, r.name, r.host, r.httpPort) });
  const inAgreement = (over: Partial<ReconcileObserved> = {}): ReconcileObserved => ({
    rows: [rowA],
    dns: [owned(orgA, nestedRecords(orgA))],
    routes: [routeOf(rowA)],
    certFiles: [],
    ...over,
  });
  const allocatedA = { kind: 'allocated', allocationId: '41' } as const;

  it('plans nothing when every effect is what the rows say', () => {
    const plan = planReconcile(inAgreement(), nested);
    assert.deepEqual([plan.dns, plan.routes, plan.certificates], [[], [], []]);
    assert.deepEqual(Object.values(plan.report).flat(), []);
  });

  it('removes the records, route and bundle of organizations that hold no gateway, fenced on still holding none', () => {
    const plan = planReconcile(
      inAgreement({
        dns: [owned(orgA, nestedRecords(orgA)), owned(orgB, nestedRecords(orgB))],
        routes: [routeOf(rowA), { orgId: orgC, content: 'x' }],
        certFiles: [{ orgId: orgB, content: 'y' }],
      }),
      nested,
    );
    assert.deepEqual(plan.dns, [{ orgId: orgB, present: false, onlyIf: { kind: 'orphan' } }]);
    assert.deepEqual(plan.routes, [{ orgId: orgC, onlyIf: { kind: 'orphan' } }]);
    assert.deepEqual(plan.certificates, [{ orgId: orgB, onlyIf: { kind: 'orphan' } }]);
    assert.deepEqual(plan.report.dnsOrphansRemoved, [orgB]);
    assert.deepEqual(plan.report.routeOrphansRemoved, [orgC]);
    assert.deepEqual(plan.report.certificateOrphansRemoved, [orgB]);
  });

  it('an organization held by a transitional gateway is not an orphan, and its effects are left to its owner', () => {
    const allocating: PlannedRow = { ...rowA, name: 'gw-1', state: 'allocating', organizationId: orgB, allocationId: '42' };
    const plan = planReconcile(inAgreement({ rows: [rowA, allocating], dns: [owned(orgA, nestedRecords(orgA)), owned(orgB, [])] }), nested);
    assert.deepEqual([plan.dns, plan.routes], [[], []]);
  });

  it('re-publishes missing or wrong records: address, TTL, disabled, a missing or extra name', () => {
    const wrong: Array<[string, OwnedRRset[] | undefined]> = [
      ['missing', undefined],
      ['other address', [rr(`org-${orgA}.${domain}`, { records: [{ content: '10.9.9.9', disabled: false }] }), rr(`*.org-${orgA}.${domain}`)]],
      ['old TTL', [rr(`org-${orgA}.${domain}`, { ttl: 300 }), rr(`*.org-${orgA}.${domain}`)]],
      ['disabled', [rr(`org-${orgA}.${domain}`, { records: [{ content: '10.0.0.5', disabled: true }] }), rr(`*.org-${orgA}.${domain}`)]],
      ['two addresses', [rr(`org-${orgA}.${domain}`, { records: [{ content: '10.0.0.5', disabled: false }, { content: '10.0.0.6', disabled: false }] }), rr(`*.org-${orgA}.${domain}`)]],
      ['wildcard missing', [rr(`org-${orgA}.${domain}`)]],
    ];
    for (const [why, records] of wrong) {
      const dns = records ? [owned(orgA, records)] : [];
      const plan = planReconcile(inAgreement({ dns }), nested);
      assert.deepEqual(plan.dns, [{ orgId: orgA, present: true, onlyIf: allocatedA }], why);
      assert.deepEqual(plan.report.dnsRepaired, [orgA], why);
    }
  });

  it('flat naming wants the org name only: a wildcard left from nested naming is repaired, one name is correct', () => {
    assert.deepEqual(planReconcile(inAgreement({ dns: [owned(orgA, [rr(`org-${orgA}.${domain}`)])] }), flat).dns, []);
    assert.deepEqual(planReconcile(inAgreement(), flat).report.dnsRepaired, [orgA], 'nested records under flat naming');
    assert.deepEqual(planReconcile(inAgreement({ dns: [owned(orgA, [rr(`org-${orgA}.${domain}`)])] }), nested).report.dnsRepaired, [orgA], 'flat records under nested naming');
  });

  it('rewrites a missing route or one with other content (the gateway moved), fenced on the allocation', () => {
    for (const routes of [[], [{ orgId: orgA, content: renderRoute('dev', orgA, 'gw-0', '10.1.0.1', 7999) }]]) {
      const plan = planReconcile(inAgreement({ routes }), nested);
      assert.deepEqual(plan.routes, [{ orgId: orgA, onlyIf: allocatedA, target: { gatewayName: 'gw-0', host: '10.1.0.1', port: 7100 } }]);
      assert.deepEqual(plan.report.routesRepaired, [orgA]);
    }
  });

  it('certificates: writes a missing or outdated bundle, removes one without a current certificate, keeps a matching one', () => {
    const pem = '-----BEGIN PRIVATE KEY-----\nk\n-----END PRIVATE KEY-----\n';
    const current = new Map([[orgA, { bundlePem: pem }]]);
    const good = { orgId: orgA, content: renderCertFile('dev', orgA, pem) };
    assert.deepEqual(planReconcile(inAgreement({ certFiles: [good], certificates: current }), nested).certificates, []);
    const missing = planReconcile(inAgreement({ certificates: current }), nested);
    assert.deepEqual(missing.certificates, [{ orgId: orgA, onlyIf: allocatedA, bundlePem: pem }]);
    assert.deepEqual(missing.report.certificatesRepaired, [orgA]);
    const renewed = planReconcile(inAgreement({ certFiles: [{ orgId: orgA, content: renderCertFile('dev', orgA, 'old') }], certificates: current }), nested);
    assert.deepEqual(renewed.certificates, [{ orgId: orgA, onlyIf: allocatedA, bundlePem: pem }]);
    const invalid = planReconcile(inAgreement({ certFiles: [good], certificates: new Map() }), nested);
    assert.deepEqual(invalid.certificates, [{ orgId: orgA, onlyIf: allocatedA, bundlePem: undefined }]);
    assert.deepEqual(invalid.report.certificatesRepaired, [orgA]);
  });

  it('without per-organization certificates only orphaned bundles go; held organizations keep theirs', () => {
    const plan = planReconcile(inAgreement({ certFiles: [{ orgId: orgA, content: 'a' }, { orgId: orgB, content: 'b' }] }), nested);
    assert.deepEqual(plan.certificates, [{ orgId: orgB, onlyIf: { kind: 'orphan' } }]);
    assert.deepEqual(plan.report.certificatesRepaired, []);
  });
});
