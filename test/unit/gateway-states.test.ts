import { strict as assert } from 'assert';
import {
  ALL_STATES,
  canTransition,
  conditionHolds,
  conditionsHolding,
  FREE_STATES,
  GatewayState,
  GatewayStates as S,
  holdsOrganization,
  stillHoldsSql,
  TRANSIENT_STATES,
  TRANSITIONS,
} from '../../runtime/gateway-states';

describe('gateway state machine (runtime/gateway-states.ts)', () => {
  it('names seven states, each once', () => {
    assert.deepEqual([...ALL_STATES].sort(), ['allocated', 'allocating', 'ready', 'registered', 'releasing', 'retired', 'unreachable']);
  });

  it('allows exactly the life-cycle edges and nothing else', () => {
    const allowed = new Set([
      'registered>ready',
      'ready>allocating',
      'allocating>allocated',
      'allocated>releasing',
      'allocating>ready', // rollback
      'allocating>registered', // rollback into quarantine
      'releasing>ready',
      'releasing>registered', // quarantined release
      'ready>retired',
      'registered>retired',
      'retired>registered',
      'ready>unreachable', // host quarantine (runtime/host-health.ts)
      'unreachable>ready',
      'unreachable>retired',
    ]);
    for (const from of ALL_STATES) {
      for (const to of ALL_STATES) {
        assert.equal(canTransition(from, to), allowed.has(`${from}>${to}`), `${from} → ${to}`);
      }
    }
  });

  it('never moves a held gateway straight back to ready, nor retires one', () => {
    assert.equal(canTransition(S.allocated, S.ready), false, 'an allocation ends through releasing');
    for (const held of ALL_STATES.filter(holdsOrganization)) assert.equal(canTransition(held, S.retired), false, held);
    assert.deepEqual(TRANSITIONS.retire.from, FREE_STATES);
    assert.deepEqual(TRANSITIONS.returnToPool.from, TRANSIENT_STATES);
  });

  it('every transition leaves from and arrives at known states', () => {
    for (const [name, t] of Object.entries(TRANSITIONS)) {
      assert.ok(t.from.length > 0 && t.to.length > 0, name);
      for (const st of [...t.from, ...t.to]) assert.ok(ALL_STATES.includes(st as GatewayState), `${name}: ${st}`);
    }
  });

  it('a condition holds only for the allocation it names, in the state it names', () => {
    const allocated = { state: S.allocated, allocationId: '7' };
    assert.equal(conditionHolds(allocated, { kind: 'allocated', allocationId: '7' }), true);
    assert.equal(conditionHolds(allocated, { kind: 'allocated', allocationId: '8' }), false, 'a newer allocation');
    assert.equal(conditionHolds(allocated, { kind: 'claim', allocationId: '7' }), false, 'no longer being claimed');
    assert.equal(conditionHolds({ state: S.allocating, allocationId: '7' }, { kind: 'claim', allocationId: '7' }), true);
    assert.equal(conditionHolds({ state: S.releasing, allocationId: '7' }, { kind: 'allocated', allocationId: '7' }), false);
    assert.equal(conditionHolds(undefined, { kind: 'orphan' }), true);
    assert.equal(conditionHolds(allocated, { kind: 'orphan' }), false);
    assert.equal(conditionHolds(undefined, { kind: 'allocated', allocationId: '7' }), false);
  });

  it('conditionsHolding reads the rows once and keeps the organizations whose condition holds', async () => {
    const calls: unknown[][] = [];
    const query = async (_sql: string, params: unknown[]) => {
      calls.push(params);
      return [
        { org: 'a', state: 'allocated', allocation_id: '1' },
        { org: 'b', state: 'allocating', allocation_id: '2' },
      ];
    };
    const holds = await conditionsHolding('t', query, [
      { orgId: 'a', onlyIf: { kind: 'allocated', allocationId: '1' } },
      { orgId: 'b', onlyIf: { kind: 'allocated', allocationId: '2' } },
      { orgId: 'c', onlyIf: { kind: 'orphan' } },
    ]);
    assert.deepEqual([...holds].sort(), ['a', 'c']);
    assert.deepEqual(calls, [[['a', 'b', 'c']]]);
  });

  it('renders the "still holds" predicate from the constants', () => {
    assert.equal(stillHoldsSql('g', 's.allocation_id'), "g.state = 'allocated' AND g.allocation_id = s.allocation_id");
  });
});
