/**
 * Failpoints: hooks a test runs at points of allocate/release to stand in for
 * a process dying there. Not part of the public options: the only way to set
 * them is `withFailpoints` from the package's `./testing` entry
 * (runtime/testing.ts), so production code cannot reach them by accident.
 */
export type Failpoint = 'allocate.afterClaim' | 'allocate.afterEffects' | 'release.afterBegin' | 'release.afterEffects';

export type Failpoints = Partial<Record<Failpoint, () => void | Promise<void>>>;

/** Key under which `withFailpoints` stores the hooks on an options object (a symbol: JSON, logs and spreads of user config never carry it by name). */
export const FAILPOINTS: unique symbol = Symbol('demiurge.failpoints');

/** The hooks set on an options object, if any. */
export function failpointsOf(options: object): Failpoints | undefined {
  return (options as { [FAILPOINTS]?: Failpoints })[FAILPOINTS];
}
