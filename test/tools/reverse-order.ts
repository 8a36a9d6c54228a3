/**
 * Mocha root-hook plugin (`--require test/tools/reverse-order.ts`): runs every
 * describe's tests and child describes in reverse order, to show that no test
 * relies on one declared before it. Hooks keep their place. The runner reads
 * a suite's tests and children only when it reaches them, after the root
 * beforeAll, so reversing them here takes effect.
 */
import type { Suite } from 'mocha';

function reverse(suite: Suite): void {
  suite.tests.reverse();
  suite.suites.reverse();
  suite.suites.forEach(reverse);
}

export const mochaHooks = {
  beforeAll(this: Mocha.Context): void {
    const root = this.test?.parent;
    if (root) reverse(root);
  },
};
