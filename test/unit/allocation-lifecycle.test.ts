import { strict as assert } from 'assert';
import { AllocationLifecycle, assertReleaseOptions } from '../../runtime/allocation-lifecycle';
import { OpenFlag, type AllocatorContext } from '../../runtime/allocator-context';
import { registrationTokenProblems } from '../../runtime/allocator-tokens';
import type { AllocatorLogEvent } from '../../runtime/allocator-types';
import { AllocatorError, isAllocatorError } from '../../runtime/errors';
import type { GatewayRow, PoolReturn } from '../../runtime/pool-store';
import { ALL_EFFECTS, appliedEffects, firstRejection, planUndo, undoFailure } from '../../runtime/undo-plan';

const org = 'a3bb189e-8bf9-3888-9912-ace4e6543002';
const notApplied = (code: 'DNS_FAILED' | 'NGINX_FAILED'): AllocatorError => new AllocatorError(code, `${code} refused`, { notApplied: true });
const fulfilled = <T>(value: T): PromiseFulfilledResult<T> => ({ status: 'fulfilled', value });
const rejected = (reason: unknown): PromiseRejectedResult => ({ status: 'rejected', reason });

describe('undo plan (runtime/undo-plan.ts: the decisions of the one undo path, no I/O)', () => {
  it('a rollback withdraws only what may have been applied, returns the gateway to ready and keeps its cause', () => {
    const cause = notApplied('NGINX_FAILED');
    const plan = planUndo({ kind: 'rollback', cause, applied: { dns: true, route: false, cert: false } });
    assert.deepEqual(plan, { applied: { dns: true, route: false, cert: false }, to: 'ready', what: 'rollback failed', cause, deferredEvent: 'gateway.rollback_deferred' });
  });

  it('a release withdraws everything, goes where it was asked (quarantine: registered) and has its failpoint between effects and return', () => {
    for (const to of ['ready', 'registered'] as PoolReturn[]) {
      assert.deepEqual(planUndo({ kind: 'release', to }), { applied: ALL_EFFECTS, to, what: 'release failed', deferredEvent: 'gateway.release_deferred', afterEffects: 'release.afterEffects' });
    }
  });

  it('a recovery withdraws everything, returns to ready and logs no deferred event (reconcile reports its errors)', () => {
    assert.deepEqual(planUndo({ kind: 'recovery' }), { applied: ALL_EFFECTS, to: 'ready', what: 'recovery failed' });
  });

  it('a failed rollback throws the undo failure, but records and logs the original cause', () => {
    const cause = notApplied('NGINX_FAILED');
    const f = undoFailure(planUndo({ kind: 'rollback', cause, applied: ALL_EFFECTS }), new Error('connection reset'));
    assert.equal(f.error.code, 'DATABASE_FAILED');
    assert.equal(f.error.message, 'rollback failed: connection reset');
    assert.equal(f.leaseError, 'NGINX_FAILED: NGINX_FAILED refused');
    assert.deepEqual(f.deferred, { event: 'gateway.rollback_deferred', code: 'NGINX_FAILED', message: 'undo failed, reconcile() will finish: rollback failed: connection reset' });
  });

  it('a failed release records and logs its own failure, a typed one as it is', () => {
    const dnsDown = new AllocatorError('DNS_FAILED', 'PowerDNS unreachable');
    const f = undoFailure(planUndo({ kind: 'release', to: 'ready' }), dnsDown);
    assert.equal(f.error, dnsDown);
    assert.equal(f.leaseError, 'DNS_FAILED: PowerDNS unreachable');
    assert.deepEqual(f.deferred, { event: 'gateway.release_deferred', code: 'DNS_FAILED', message: 'PowerDNS unreachable' });
    assert.equal(undoFailure(planUndo({ kind: 'recovery' }), new Error('x')).deferred, undefined);
  });

  it('an effect that certainly changed nothing needs no undo; a timeout (untyped) may have landed', () => {
    const ok = fulfilled(undefined);
    assert.deepEqual(appliedEffects(rejected(notApplied('DNS_FAILED')), ok, fulfilled('none'), false), { dns: false, route: true, cert: false });
    assert.deepEqual(appliedEffects(ok, rejected(notApplied('NGINX_FAILED')), fulfilled('ready'), true), { dns: true, route: false, cert: true });
    assert.deepEqual(appliedEffects(rejected(new Error('timeout')), rejected(new AllocatorError('NGINX_FAILED', 'timeout')), fulfilled('pending'), true), { dns: true, route: true, cert: false });
  });

  it('a certificate that failed may have been written only when a provider is configured', () => {
    const ok = fulfilled(undefined);
    assert.equal(appliedEffects(ok, ok, rejected(new Error('issuer down')), true).cert, true);
    assert.equal(appliedEffects(ok, ok, rejected(new Error('issuer down')), false).cert, false);
  });

  it('the first failure is reported in the effects order (DNS before nginx before certificates)', () => {
    const dns = rejected('dns');
    assert.equal(firstRejection([fulfilled(1), rejected('route'), rejected('cert')])?.reason, 'route');
    assert.equal(firstRejection([dns, rejected('route')]), dns);
    assert.equal(firstRejection([fulfilled(1), fulfilled(2)]), undefined);
  });
});

describe('input checks of release and registration tokens (before any side effect)', () => {
  it('release options: a fence must be a decimal id, a silence a non-negative number; either makes the release conditional', () => {
    assert.equal(assertReleaseOptions({}), false);
    assert.equal(assertReleaseOptions({ quarantine: true }), false);
    assert.equal(assertReleaseOptions({ allocationId: '42' }), true);
    assert.equal(assertReleaseOptions({ silentForMs: 0 }), true);
    assert.throws(() => assertReleaseOptions({ allocationId: '4x' }), (e: unknown) => isAllocatorError(e, 'INVALID_GATEWAY'));
    assert.throws(() => assertReleaseOptions({ silentForMs: -1 }), (e: unknown) => isAllocatorError(e, 'INVALID_CONFIG'));
    assert.throws(() => assertReleaseOptions({ silentForMs: Number.NaN }), (e: unknown) => isAllocatorError(e, 'INVALID_CONFIG'));
  });

  it('registration tokens: every bad name and every bad token is reported, good ones not', () => {
    assert.deepEqual(registrationTokenProblems({ 'gw-pool-dev-001-0': 'x'.repeat(16) }), []);
    assert.deepEqual(registrationTokenProblems({ 'Bad Name': 'x'.repeat(16), 'gw-pool-dev-001-1': 'short' }), [
      '"Bad Name" is not a gateway name',
      'token of gw-pool-dev-001-1 must be a string of 16..200 characters',
    ]);
  });
});

/** A context whose store and effect writers are recording fakes; `fail` makes one call reject. */
function fakeContext(fail: Partial<Record<string, unknown>> = {}) {
  const calls: string[] = [];
  const events: AllocatorLogEvent[] = [];
  const row = (over: Partial<GatewayRow> = {}): GatewayRow => ({
    name: 'gw-0',
    host: '10.1.0.1',
    httpPort: 7100,
    vpnPort: 7200,
    state: 'allocating',
    organizationId: org,
    allocationId: '41',
    stateSince: new Date(0),
    leaseExpiresAt: null,
    lastHeartbeatAt: null,
    lastError: null,
    leaseExpired: false,
    ...over,
  });
  const call = (name: string, value?: unknown) => (...args: unknown[]) => {
    calls.push(`${name} ${JSON.stringify(args)}`);
    return name in fail ? Promise.reject(fail[name]) : Promise.resolve(value);
  };
  const state = { current: undefined as GatewayRow | undefined };
  const ctx = {
    envName: 'dev',
    domain: 'dev.example.test',
    leaseMs: 30_000,
    waitTimeoutMs: 1_000,
    certs: undefined,
    failpoints: undefined,
    open: new OpenFlag(),
    log: (e: AllocatorLogEvent) => events.push(e),
    store: {
      findByOrganization: (...a: unknown[]) => call('findByOrganization', state.current)(...a),
      claim: call('claim', { kind: 'claimed', row: row() }),
      countReady: call('countReady', 0),
      markAllocated: call('markAllocated', true),
      beginRelease: call('beginRelease', row({ state: 'releasing' })),
      returnToPool: call('returnToPool', true),
      abandon: call('abandon'),
      takeOver: call('takeOver', row({ state: 'releasing' })),
    },
    dns: { publish: call('dns.publish'), withdraw: call('dns.withdraw') },
    routes: { set: call('routes.set'), setCertificate: call('routes.setCertificate'), ensureBaseConfig: call('routes.ensureBaseConfig') },
    certificates: { ensure: call('certificates.ensure', 'none'), repair: call('certificates.repair', 'none') },
  };
  return { lifecycle: new AllocationLifecycle(ctx as unknown as AllocatorContext), ctx, calls, events, state, row };
}

const named = (calls: string[]) => calls.map((c) => c.split(' ')[0]);
const eventsOf = (events: AllocatorLogEvent[]) => events.map((e) => e.event);

describe('allocation life cycle with fakes (runtime/allocation-lifecycle.ts: every failure after a claim ends in the one undo)', () => {
  it('a route that certainly failed is not withdrawn; DNS is, and the gateway returns to ready; the caller sees the route failure', async () => {
    const f = fakeContext({ 'routes.set': notApplied('NGINX_FAILED') });
    await assert.rejects(f.lifecycle.allocate(org), (e: unknown) => isAllocatorError(e, 'NGINX_FAILED'));
    const after = named(f.calls).slice(named(f.calls).indexOf('certificates.ensure') + 1);
    assert.deepEqual(after, ['dns.withdraw', 'returnToPool']);
    assert.match(f.calls.find((c) => c.startsWith('returnToPool')) as string, /"gw-0","41","ready"/);
    assert.deepEqual(eventsOf(f.events), ['gateway.claimed', 'gateway.rolled_back']);
  });

  it('a rollback whose undo fails too ends the lease with the original cause, logs it deferred, and the caller still sees the cause', async () => {
    const cause = notApplied('DNS_FAILED');
    const f = fakeContext({ 'dns.publish': cause, 'routes.set': new Error('disk full') });
    await assert.rejects(f.lifecycle.allocate(org), (e: unknown) => e === cause);
    const abandon = f.calls.filter((c) => c.startsWith('abandon'));
    assert.deepEqual(abandon, [`abandon ${JSON.stringify(['gw-0', '41', 'DNS_FAILED: DNS_FAILED refused'])}`]);
    assert.ok(!named(f.calls).includes('returnToPool'), 'a failed undo must leave the gateway to reconcile()');
    const deferred = f.events.find((e) => e.event === 'gateway.rollback_deferred');
    assert.equal(deferred?.code, 'DNS_FAILED');
    assert.ok(!eventsOf(f.events).includes('gateway.rolled_back'));
  });

  it('marking allocated that fails rolls back everything that was applied', async () => {
    const f = fakeContext({ markAllocated: new Error('connection reset') });
    await assert.rejects(f.lifecycle.allocate(org), (e: unknown) => isAllocatorError(e, 'DATABASE_FAILED') && /marking allocated failed/.test((e as Error).message));
    const after = named(f.calls).slice(named(f.calls).indexOf('markAllocated') + 1);
    assert.deepEqual(after, ['dns.withdraw', 'routes.set', 'returnToPool']);
  });

  it('a release whose return to the pool fails ends the lease with that failure and reports it', async () => {
    const f = fakeContext({ returnToPool: new Error('connection reset') });
    f.state.current = f.row({ state: 'allocated' });
    await assert.rejects(f.lifecycle.release(org), (e: unknown) => isAllocatorError(e, 'DATABASE_FAILED') && (e as Error).message === 'release failed: connection reset');
    assert.deepEqual(f.calls.filter((c) => c.startsWith('abandon')), [`abandon ${JSON.stringify(['gw-0', '41', 'DATABASE_FAILED: release failed: connection reset'])}`]);
    assert.equal(f.events.find((e) => e.event === 'gateway.release_deferred')?.message, 'release failed: connection reset');
  });

  it('a quarantining release withdraws DNS, route and certificate file and returns the gateway as registered', async () => {
    const f = fakeContext();
    f.state.current = f.row({ state: 'allocated' });
    assert.deepEqual(await f.lifecycle.release(org, { quarantine: true }), { name: 'gw-0', organizationId: org });
    const after = named(f.calls).slice(named(f.calls).indexOf('beginRelease') + 1);
    assert.deepEqual(after, ['dns.withdraw', 'routes.set', 'routes.setCertificate', 'returnToPool']);
    assert.match(f.calls.find((c) => c.startsWith('returnToPool')) as string, /"registered"/);
    assert.deepEqual(eventsOf(f.events), ['gateway.releasing', 'gateway.released']);
  });

  it('recover takes over and undoes through the same path; a row another process took first is left alone', async () => {
    const f = fakeContext();
    assert.equal(await f.lifecycle.recover(f.row({ leaseExpired: true }), false), true);
    assert.deepEqual(named(f.calls), ['takeOver', 'dns.withdraw', 'routes.set', 'routes.setCertificate', 'returnToPool']);
    assert.deepEqual(eventsOf(f.events), ['gateway.recovered']);
    const g = fakeContext();
    g.ctx.store.takeOver = () => Promise.resolve(undefined);
    assert.equal(await g.lifecycle.recover(g.row({ leaseExpired: true }), false), false);
    assert.deepEqual(g.calls, []);
  });

  it('a closed allocator refuses before any side effect', async () => {
    const f = fakeContext();
    f.ctx.open.close();
    await assert.rejects(f.lifecycle.allocate(org), (e: unknown) => isAllocatorError(e, 'CLOSED'));
    await assert.rejects(f.lifecycle.release(org), (e: unknown) => isAllocatorError(e, 'CLOSED'));
    assert.deepEqual(f.calls, []);
  });
});
