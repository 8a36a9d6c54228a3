import { strict as assert } from 'assert';
import { GatewayStates as S, hostQuarantineSql, type GatewayState } from '../../runtime/gateway-states';
import { decideHostHealth, isRemoteGatewayHost, type HostGateway } from '../../runtime/host-health';

const gw = (name: string, host: string, state: GatewayState): HostGateway => ({ name, host, httpPort: 7100, state });

describe('host quarantine decision (runtime/host-health.ts decideHostHealth)', () => {
  const pool = [
    gw('gw-0', 'gw-pool-x-0', S.ready), // main host: by container name
    gw('gw-1', '10.0.0.2', S.ready),
    gw('gw-2', '10.0.0.2', S.allocated),
    gw('gw-3', '10.0.0.2', S.registered),
    gw('gw-4', '10.0.0.3', S.ready),
  ];

  it('watches remote hosts only (IPv4 inventory host), never the main host\'s container names', () => {
    assert.equal(isRemoteGatewayHost('10.0.0.2'), true);
    assert.equal(isRemoteGatewayHost('gw-pool-x-0'), false);
    const d = decideHostHealth(new Map(), pool, new Set(), 1);
    assert.deepEqual([...d.failures.keys()], ['10.0.0.2', '10.0.0.3']);
    assert.ok(!d.markUnreachable.includes('gw-0'), 'a silent main-host gateway is not touched');
  });

  it('a host is down only after N rounds in a row without any answer; then only its READY gateways move', () => {
    let failures = new Map<string, number>();
    for (let round = 1; round <= 2; round++) {
      const d = decideHostHealth(failures, pool, new Set(['gw-4']), 3);
      assert.deepEqual(d.markUnreachable, [], `round ${round}: below the threshold`);
      assert.deepEqual(d.hostsDown, []);
      failures = d.failures;
    }
    assert.equal(failures.get('10.0.0.2'), 2);
    assert.equal(failures.get('10.0.0.3'), 0);
    const d3 = decideHostHealth(failures, pool, new Set(['gw-4']), 3);
    assert.deepEqual(d3.markUnreachable, ['gw-1'], 'allocated (reaper) and registered gateways are left alone');
    assert.deepEqual(d3.hostsDown, ['10.0.0.2']);
    const d4 = decideHostHealth(d3.failures, pool, new Set(['gw-4']), 3);
    assert.deepEqual(d4.hostsDown, [], 'reported once');
    assert.deepEqual(d4.markUnreachable, ['gw-1'], 'still asked (idempotent: the SQL only moves ready rows)');
  });

  it('one answer in a round resets the count: a flapping host is never quarantined', () => {
    let failures = new Map<string, number>();
    for (const answered of [['gw-4'], ['gw-4'], ['gw-2', 'gw-4'], ['gw-4'], ['gw-4']]) {
      const d = decideHostHealth(failures, pool, new Set(answered), 3);
      assert.deepEqual(d.markUnreachable, []);
      failures = d.failures;
    }
    assert.equal(failures.get('10.0.0.2'), 2);
  });

  it('when the host answers again, its unreachable gateways that answered are ready again', () => {
    const away = [gw('gw-1', '10.0.0.2', S.unreachable), gw('gw-2', '10.0.0.2', S.unreachable), gw('gw-5', '10.0.0.2', S.allocated)];
    const d = decideHostHealth(new Map([['10.0.0.2', 7]]), away, new Set(['gw-1', 'gw-5']), 3);
    assert.deepEqual(d.markReachable, ['gw-1'], 'gw-2 did not answer: it stays out');
    assert.deepEqual(d.markUnreachable, []);
    assert.deepEqual(d.hostsBack, ['10.0.0.2']);
    assert.equal(d.failures.get('10.0.0.2'), 0);
    const still = decideHostHealth(new Map([['10.0.0.2', 7]]), away, new Set(), 3);
    assert.deepEqual(still.markReachable, [], 'no answer: nothing comes back');
    assert.equal(still.failures.get('10.0.0.2'), 8);
  });

  it('retired gateways are neither probed nor counted', () => {
    const d = decideHostHealth(new Map(), [gw('gw-9', '10.0.0.9', S.retired)], new Set(), 1);
    assert.deepEqual([...d.failures.keys()], []);
  });

  it('the statements move only from the transition\'s own state', () => {
    const t = { gateways: '"s".gateways', allocationSeq: '"s".allocation_seq', retiredTokens: '"s".retired_tokens' };
    assert.match(hostQuarantineSql(t, 'markUnreachable'), /SET state = 'unreachable'[\s\S]*AND state IN \('ready'\)/);
    assert.match(hostQuarantineSql(t, 'markReachable'), /SET state = 'ready'[\s\S]*AND state IN \('unreachable'\)/);
  });
});
