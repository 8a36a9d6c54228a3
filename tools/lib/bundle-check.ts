/**
 * Backend bundles must be React-free: a `require("react")` in app-gateway's main.js means a
 * frontend module leaked into the server build and would fail at run time ("Cannot find module").
 * Streams the file line by line (bundles have hundreds of thousands of lines) and reports every
 * offending line with its number, like the project's original validator.
 */
import * as fs from 'fs';
import * as readline from 'readline';

export interface BundleIssue {
  line: number;
  /** react or react-dom (sub-paths like react/jsx-runtime count as react). */
  module: string;
  /** The matched expression, e.g. require("react"). */
  match: string;
  /** The line, shortened around the match for long (minified) lines. */
  excerpt: string;
}

export interface BundleReport {
  file: string;
  lines: number;
  issues: BundleIssue[];
}

const Q = `["'\`]`;
const MOD = `(react|react-dom)(?:/[^"'\`\\s]*)?`;
/** require("react"), require('react-dom/client'), from "react", import "react", import("react") */
const PATTERNS: RegExp[] = [
  new RegExp(`\\brequire\\s*\\(\\s*${Q}${MOD}${Q}\\s*\\)`, 'g'),
  new RegExp(`\\bfrom\\s*${Q}${MOD}${Q}`, 'g'),
  new RegExp(`\\bimport\\s*${Q}${MOD}${Q}`, 'g'),
  new RegExp(`\\bimport\\s*\\(\\s*${Q}${MOD}${Q}\\s*\\)`, 'g'),
];

function excerptOf(line: string, index: number, length: number): string {
  const trimmed = line.trim();
  if (trimmed.length <= 160) return trimmed;
  const start = Math.max(0, index - 60);
  const end = Math.min(line.length, index + length + 60);
  return `${start > 0 ? '…' : ''}${line.slice(start, end).trim()}${end < line.length ? '…' : ''}`;
}

/** Finds React imports/requires in one line; exported for unit tests. */
export function findReactReferences(line: string): Array<{ module: string; match: string; index: number }> {
  const found: Array<{ module: string; match: string; index: number }> = [];
  for (const re of PATTERNS) {
    re.lastIndex = 0;
    for (let m = re.exec(line); m; m = re.exec(line)) {
      if (!found.some((f) => f.index === m!.index)) found.push({ module: m[1], match: m[0], index: m.index });
    }
  }
  return found.sort((a, b) => a.index - b.index);
}

export async function checkBundle(file: string): Promise<BundleReport> {
  const rl = readline.createInterface({ input: fs.createReadStream(file, { encoding: 'utf8' }), crlfDelay: Infinity });
  const issues: BundleIssue[] = [];
  let n = 0;
  for await (const line of rl) {
    n++;
    if (!line.includes('react')) continue;
    for (const ref of findReactReferences(line)) {
      issues.push({ line: n, module: ref.module, match: ref.match, excerpt: excerptOf(line, ref.index, ref.match.length) });
    }
  }
  return { file, lines: n, issues };
}

/** Human report in the style of the original validate-node-bundles.sh. */
export function formatBundleReport(report: BundleReport, displayName = report.file, maxLines = 50): string {
  if (report.issues.length === 0) return `✅ ${displayName}: React-free (${report.lines} lines)`;
  const out = [`❌ ${displayName}: Found ${report.issues.length} issue(s):`];
  const byModule = new Map<string, number>();
  for (const i of report.issues) byModule.set(i.module, (byModule.get(i.module) ?? 0) + 1);
  for (const [mod, count] of byModule) out.push(`  ⚠️  ${mod}: ${count} occurrence(s)`);
  for (const i of report.issues.slice(0, maxLines)) out.push(`    Line ${i.line}: ${i.excerpt}`);
  if (report.issues.length > maxLines) out.push(`    … and ${report.issues.length - maxLines} more`);
  out.push('❌ BUILD VALIDATION FAILED: React dependencies found in a backend bundle (use `import type`, keep hooks/components out of server entry points)');
  return out.join('\n');
}
