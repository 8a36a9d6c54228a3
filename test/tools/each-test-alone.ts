/**
 * Runs every test of the given mocha files alone (a `--grep` anchored on its
 * exact full title), and optionally each file with its tests in reverse order,
 * to show that no test depends on another having run before it.
 *
 *   node -r ts-node/register/transpile-only test/tools/each-test-alone.ts [--config .mocharc.integration.json] [--reverse] [--only-reverse] [--match TEXT] [files...]
 *
 * Files default to the config's spec. Exit 0 only if every run passed with
 * exactly the one test it selected (or, reversed, with all of the file's tests).
 */
import { spawnSync } from 'child_process';
import { mkdtempSync, readFileSync, rmSync } from 'fs';
import * as os from 'os';
import * as path from 'path';

const ROOT = path.resolve(__dirname, '..', '..');

interface MochaJson {
  stats: { tests: number; passes: number; failures: number; pending: number; duration: number };
  tests: Array<{ fullTitle: string; file?: string }>;
  failures: Array<{ fullTitle: string; err: { message?: string } }>;
}

interface Args {
  config: string;
  reverse: boolean;
  alone: boolean;
  match?: string;
  files: string[];
}

function parseArgs(argv: string[]): Args {
  const a: Args = { config: '.mocharc.integration.json', reverse: false, alone: true, files: [] };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i];
    if (v === '--config') a.config = argv[++i];
    else if (v === '--reverse') a.reverse = true;
    else if (v === '--only-reverse') [a.reverse, a.alone] = [true, false];
    else if (v === '--match') a.match = argv[++i];
    else if (v === '--help' || v === '-h') {
      console.log(readFileSync(__filename, 'utf8').split('*/')[0]);
      process.exit(0);
    } else a.files.push(v);
  }
  return a;
}

/** The config's options as command-line flags, without its spec (a positional file is added to the spec, never replaces it). */
function baseFlags(configFile: string): { flags: string[]; spec: string[] } {
  const cfg = JSON.parse(readFileSync(path.resolve(ROOT, configFile), 'utf8')) as Record<string, unknown>;
  const flags = ['--no-config'];
  for (const [k, v] of Object.entries(cfg)) {
    if (k === 'spec') continue;
    for (const one of Array.isArray(v) ? v : [v]) {
      if (one === true) flags.push(`--${k}`);
      else if (one !== false) flags.push(`--${k}`, String(one));
    }
  }
  return { flags, spec: (cfg.spec as string[] | undefined) ?? [] };
}

function specFiles(spec: string[]): string[] {
  // The integration and unit specs are one directory deep: `dir/**/*.test.ts`.
  const out: string[] = [];
  for (const s of spec) {
    const dir = s.split('/**')[0];
    const r = spawnSync('find', [dir, '-name', '*.test.ts'], { cwd: ROOT, encoding: 'utf8' });
    out.push(...r.stdout.split('\n').filter(Boolean).sort());
  }
  return out;
}

function runMocha(flags: string[], extra: string[], file: string, jsonFile: string): { code: number; json?: MochaJson; output: string; ms: number } {
  const t0 = Date.now();
  const r = spawnSync(process.execPath, [require.resolve('mocha/bin/mocha.js'), ...flags, '--reporter', 'json', '--reporter-option', `output=${jsonFile}`, ...extra, file], {
    cwd: ROOT,
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
    timeout: 30 * 60_000,
  });
  let json: MochaJson | undefined;
  try {
    json = JSON.parse(readFileSync(jsonFile, 'utf8')) as MochaJson;
  } catch {
    /* mocha died before writing its report */
  }
  rmSync(jsonFile, { force: true });
  return { code: r.status ?? 1, json, output: `${r.stdout}\n${r.stderr}`, ms: Date.now() - t0 };
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function main(): void {
  const args = parseArgs(process.argv.slice(2));
  const { flags, spec } = baseFlags(args.config);
  const files = args.files.length > 0 ? args.files : specFiles(spec);
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'each-test-alone-'));
  const results: Array<{ kind: string; file: string; title: string; ok: boolean; ms: number; note: string }> = [];
  let n = 0;
  for (const file of files) {
    const listed = runMocha(flags, ['--dry-run'], file, path.join(tmp, `list-${n++}.json`));
    if (!listed.json) {
      results.push({ kind: 'list', file, title: '(listing the tests)', ok: false, ms: listed.ms, note: listed.output.slice(-2000) });
      continue;
    }
    const titles = listed.json.tests.map((t) => t.fullTitle);
    if (args.alone) {
      for (const title of titles) {
        if (args.match !== undefined && !title.includes(args.match)) continue;
        const r = runMocha(flags, ['--grep', `^${escapeRegExp(title)}$`], file, path.join(tmp, `run-${n++}.json`));
        const st = r.json?.stats;
        const ok = r.code === 0 && st !== undefined && st.passes === 1 && st.failures === 0 && st.pending === 0;
        const note = ok ? '' : st ? `passes ${st.passes}, failures ${st.failures}, pending ${st.pending}: ${r.json?.failures.map((f) => `${f.fullTitle}: ${f.err.message ?? ''}`).join(' | ').slice(0, 1500)}` : r.output.slice(-2000);
        results.push({ kind: 'alone', file, title, ok, ms: r.ms, note });
        console.log(`${ok ? 'PASS' : 'FAIL'} alone ${(r.ms / 1000).toFixed(1)}s ${path.basename(file)} :: ${title}${ok ? '' : `\n     ${note}`}`);
      }
    }
    if (args.reverse) {
      const r = runMocha(flags, ['--require', path.join(ROOT, 'test/tools/reverse-order.ts')], file, path.join(tmp, `rev-${n++}.json`));
      const st = r.json?.stats;
      const ok = r.code === 0 && st !== undefined && st.failures === 0 && st.passes === titles.length;
      const note = ok ? '' : st ? `passes ${st.passes}/${titles.length}, failures ${st.failures}: ${r.json?.failures.map((f) => `${f.fullTitle}: ${f.err.message ?? ''}`).join(' | ').slice(0, 3000)}` : r.output.slice(-2000);
      results.push({ kind: 'reverse', file, title: `(all ${titles.length}, reversed)`, ok, ms: r.ms, note });
      console.log(`${ok ? 'PASS' : 'FAIL'} reversed ${(r.ms / 1000).toFixed(1)}s ${path.basename(file)} (${titles.length} tests)${ok ? '' : `\n     ${note}`}`);
    }
  }
  rmSync(tmp, { recursive: true, force: true });
  const failed = results.filter((r) => !r.ok);
  console.log(`\n${results.length - failed.length}/${results.length} runs passed${failed.length ? `; failed:\n${failed.map((f) => `  ${f.kind} ${path.basename(f.file)} :: ${f.title}`).join('\n')}` : ''}`);
  process.exit(failed.length ? 1 : 0);
}

main();
