import { strict as assert } from 'assert';
import { Periodic } from '../../runtime/server/periodic';

describe('Periodic (the API server timers)', () => {
  it('never overlaps itself, even with an interval shorter than a run; stop() waits for the run in progress', async () => {
    let active = 0;
    let maxActive = 0;
    let runs = 0;
    let third!: () => void;
    const reachedThird = new Promise<void>((r) => (third = r));
    const p = new Periodic('t', 1, async () => {
      active += 1;
      maxActive = Math.max(maxActive, active);
      runs += 1;
      if (runs === 3) third();
      await new Promise((r) => setTimeout(r, 15)); // the work of one pass
      active -= 1;
    }, (err) => assert.fail(String(err)));
    p.start();
    await reachedThird;
    assert.equal(active, 1, 'the third run is in progress');
    await p.stop();
    assert.equal(active, 0, 'stop() returned only after the run ended');
    assert.equal(maxActive, 1);
  });

  it('a failing run is reported and the next one still comes', async () => {
    const errors: unknown[] = [];
    let second!: () => void;
    const twice = new Promise<void>((r) => (second = r));
    const p = new Periodic('t', 1, () => Promise.reject(new Error('boom')), (err) => {
      errors.push(err);
      if (errors.length === 2) second();
    });
    p.start();
    await twice;
    await p.stop();
    assert.match(String(errors[0]), /boom/);
  });
});
