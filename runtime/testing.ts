/**
 * Test-only hooks (package entry `./testing`): failpoints and the crash they
 * usually throw. Kept out of the main entry so a host cannot enable them by a
 * stray option.
 */
import { FAILPOINTS, type Failpoint, type Failpoints } from './failpoints';

export type { Failpoint, Failpoints };

/** Thrown by a failpoint to simulate a process crash: the allocator does no clean-up after it. */
export class SimulatedCrash extends Error {
  constructor(point: string) {
    super(`simulated crash at ${point}`);
    this.name = 'SimulatedCrash';
  }
}

/**
 * A copy of allocator options (complete or partial) with failpoints set:
 * `new GatewayAllocator(withFailpoints(options, { 'allocate.afterClaim': () => { throw new SimulatedCrash('allocate.afterClaim'); } }))`.
 * Anything a hook throws skips all clean-up, like a dead process.
 */
export function withFailpoints<T extends object>(options: T, hooks: Failpoints): T {
  return { ...options, [FAILPOINTS]: hooks };
}
