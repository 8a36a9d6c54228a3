/** Step logging with timings, so a run prints where its time goes. */
const suiteStart = Date.now();

export function elapsed(): string {
  return `${((Date.now() - suiteStart) / 1000).toFixed(1)}s`;
}

export function note(message: string): void {
  process.stdout.write(`      [e2e +${elapsed()}] ${message}\n`);
}

export async function step<T>(name: string, fn: () => Promise<T>): Promise<T> {
  const t0 = Date.now();
  note(`▶ ${name}`);
  try {
    const v = await fn();
    note(`✔ ${name} (${Date.now() - t0} ms)`);
    return v;
  } catch (err) {
    note(`✘ ${name} failed after ${Date.now() - t0} ms`);
    throw err;
  }
}
