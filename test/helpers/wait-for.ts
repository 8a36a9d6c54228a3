/**
 * The one way integration tests wait: for an observable event (a state in
 * PostgreSQL, a file, a port, a process exit), polled within a bound, failing
 * with a message that names what did not happen. Never a fixed sleep.
 */
import { readFileSync } from 'fs';
import * as net from 'net';

/** Not there yet: the probe answers `undefined` or `false`. */
type NotYet = undefined | false;

/**
 * Polls `probe` every `intervalMs` until it answers something other than
 * `undefined`/`false`; a probe that throws counts as "not yet" and its last
 * error is part of the timeout message.
 */
export async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | NotYet> | T | NotYet, intervalMs = 50): Promise<{ value: Exclude<T, NotYet>; ms: number }> {
  const t0 = Date.now();
  let last: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined && v !== false) return { value: v as Exclude<T, NotYet>, ms: Date.now() - t0 };
    } catch (err) {
      last = err;
    }
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${last instanceof Error ? last.message : String(last)})` : ''}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Resolves with `event`, or fails after `timeoutMs` naming `what` did not happen. */
export async function within<T>(what: string, timeoutMs: number, event: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      event,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Lets every callback already queued (I/O handlers, nextTicks, immediates) run once. */
export function drainEventLoop(): Promise<void> {
  return new Promise((r) => setImmediate(() => setImmediate(r)));
}

/** True when no process `pid` runs any more (gone, or a zombie nobody reaped). */
export function processGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
  try {
    // A daemon (nginx) is reparented; in a container nobody may reap it.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

/** True when nothing accepts TCP connections on 127.0.0.1:`port`. */
export function portClosed(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('error', () => resolve(true));
  });
}
