import type { ChildProcess } from 'child_process';

/**
 * Signals a helper's child process and resolves once it has exited (at once
 * when it is gone already). With `killAfterMs`, a child still running then
 * gets SIGKILL, so a hung service cannot hold a suite's after-hook.
 */
export async function stopChild(child: ChildProcess | undefined, signal: NodeJS.Signals = 'SIGTERM', killAfterMs?: number): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  await new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
    child.kill(signal);
    if (killAfterMs !== undefined) setTimeout(() => child.kill('SIGKILL'), killAfterMs).unref();
  });
}
