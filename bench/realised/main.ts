/**
 * The realised-environment bench rows on their own (bench/run.ts runs this in a child under the e2e lock):
 *   flock /tmp/bench.lock flock /tmp/e2e.lock npx ts-node --transpile-only bench/realised/main.ts [--organizations N] [--out results.json]
 *     [--only-reload] [--reload-sizes 1,4,10] [--reload-repetitions 1]
 * Prints the report rows; with --out also writes the typed results (RealisedResults) as JSON.
 */
import { writeFileSync } from 'fs';
import { renderRealisedRows, runRealisedBench } from './realised';

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const opt = (name: string): string | undefined => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const organizations = opt('--organizations') ? Number(opt('--organizations')) : undefined;
  if (organizations !== undefined && !(Number.isInteger(organizations) && organizations > 0)) throw new Error('--organizations must be a positive whole number');
  const sizesArg = opt('--reload-sizes');
  const reloadSizes = sizesArg ? sizesArg.split(',').map(Number) : undefined;
  if (reloadSizes && !reloadSizes.every((n) => Number.isInteger(n) && n >= 1 && n <= 10)) throw new Error('--reload-sizes must be whole numbers 1..10, comma-separated');
  const repsArg = opt('--reload-repetitions');
  const reloadRepetitions = repsArg ? Number(repsArg) : undefined;
  if (reloadRepetitions !== undefined && !(Number.isInteger(reloadRepetitions) && reloadRepetitions > 0)) throw new Error('--reload-repetitions must be a positive whole number');
  const results = await runRealisedBench({
    quick: false,
    ...(organizations ? { organizations } : {}),
    ...(argv.includes('--only-reload') ? { onlyReload: true } : {}),
    ...(reloadSizes ? { reloadSizes } : {}),
    ...(reloadRepetitions ? { reloadRepetitions } : {}),
  });
  const out = opt('--out');
  if (out) writeFileSync(out, `${JSON.stringify(results, null, 2)}\n`);
  process.stdout.write(`${renderRealisedRows(results).join('\n')}\n`);
  for (const n of results.notes) process.stdout.write(`note: ${n}\n`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`realised bench failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
    process.exit(1);
  },
);
