/**
 * Code-shape audit (issue #19): lists the files over 400 lines, classes over
 * 250 lines and functions/methods over 60 lines in runtime/ (not dist/),
 * stack/ and components/, using the TypeScript compiler's parser (so a
 * function is what the compiler says it is, not a regex's guess).
 *
 * A line count is from the line of the node's first token (after its leading
 * comments) to the line of its last, inclusive: a doc comment never counts.
 *
 *   npx ts-node --transpile-only test/tools/function-lengths.ts [repo root]
 *
 * test/unit/code-shape.test.ts runs findShapeViolations() against its allow-list.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as ts from 'typescript';

export const LIMITS = { file: 400, class: 250, function: 60 } as const;
export type ShapeKind = keyof typeof LIMITS;

export interface ShapeViolation {
  kind: ShapeKind;
  /** Repository-relative, forward slashes. */
  file: string;
  /** `Class.method`, `outer/inner`, `<arrow>` for an anonymous function; the file name for kind `file`. */
  name: string;
  lines: number;
  /** 1-based line the node starts on (for the report only: it moves with every edit). */
  line: number;
}

/** The folders audited, and the ones below them that are not ours to shape. */
export const AUDITED_DIRS = ['runtime', 'stack', 'components'];
const SKIPPED_DIRS = new Set(['node_modules', 'dist']);

function sourceFiles(root: string, dir: string): string[] {
  const abs = path.join(root, dir);
  if (!fs.existsSync(abs)) return [];
  const out: string[] = [];
  for (const entry of fs.readdirSync(abs, { withFileTypes: true })) {
    const rel = `${dir}/${entry.name}`;
    if (entry.isDirectory()) {
      if (!SKIPPED_DIRS.has(entry.name)) out.push(...sourceFiles(root, rel));
    } else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) {
      out.push(rel);
    }
  }
  return out.sort();
}

function nodeName(node: ts.Node): string | undefined {
  const named = node as { name?: ts.Node };
  if (named.name && (ts.isIdentifier(named.name) || ts.isStringLiteral(named.name) || ts.isPrivateIdentifier(named.name))) return named.name.text;
  if (ts.isConstructorDeclaration(node)) return 'constructor';
  // `const f = () => …`, `{ f: () => … }`, `x.f = function () …`
  const parent = node.parent;
  if (parent && (ts.isVariableDeclaration(parent) || ts.isPropertyAssignment(parent) || ts.isPropertyDeclaration(parent)) && ts.isIdentifier(parent.name)) return parent.name.text;
  return undefined;
}

function isFunctionLike(node: ts.Node): boolean {
  return (
    ts.isFunctionDeclaration(node) ||
    ts.isMethodDeclaration(node) ||
    ts.isConstructorDeclaration(node) ||
    ts.isGetAccessorDeclaration(node) ||
    ts.isSetAccessorDeclaration(node) ||
    ts.isArrowFunction(node) ||
    ts.isFunctionExpression(node)
  );
}

/** Violations in one file's text (exported for the unit test of the tool itself). */
export function shapeViolationsOf(file: string, text: string): ShapeViolation[] {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.ES2022, true, ts.ScriptKind.TS);
  const out: ShapeViolation[] = [];
  const lineOf = (pos: number): number => sf.getLineAndCharacterOfPosition(pos).line + 1;
  const fileLines = text.split('\n').length - (text.endsWith('\n') ? 1 : 0);
  if (fileLines > LIMITS.file) out.push({ kind: 'file', file, name: path.basename(file), lines: fileLines, line: 1 });
  const visit = (node: ts.Node, scope: string[]): void => {
    let inner = scope;
    const isClass = ts.isClassDeclaration(node) || ts.isClassExpression(node);
    if (isClass || isFunctionLike(node)) {
      const own = nodeName(node) ?? (isClass ? '<class>' : ts.isArrowFunction(node) ? '<arrow>' : '<function>');
      const name = scope.length === 0 ? own : `${scope.join('/')}${ts.isClassLike(node.parent) ? '.' : '/'}${own}`;
      const start = lineOf(node.getStart(sf));
      const lines = lineOf(node.getEnd()) - start + 1;
      const kind: ShapeKind = isClass ? 'class' : 'function';
      if (lines > LIMITS[kind]) out.push({ kind, file, name, lines, line: start });
      inner = [name];
    }
    ts.forEachChild(node, (child) => visit(child, inner));
  };
  visit(sf, []);
  return out;
}

/** Every violation under the audited folders of `root`. */
export function findShapeViolations(root: string): ShapeViolation[] {
  return AUDITED_DIRS.flatMap((dir) => sourceFiles(root, dir)).flatMap((file) => shapeViolationsOf(file, fs.readFileSync(path.join(root, file), 'utf8')));
}

/** The allow-list's key of a violation: stable across edits that do not rename or move it. */
export function violationKey(v: Pick<ShapeViolation, 'kind' | 'file' | 'name'>): string {
  return `${v.kind} ${v.file} ${v.name}`;
}

if (require.main === module) {
  const root = path.resolve(process.argv[2] ?? path.join(__dirname, '..', '..'));
  const found = findShapeViolations(root);
  for (const v of found) process.stdout.write(`${v.kind.padEnd(8)} ${String(v.lines).padStart(4)} lines (limit ${LIMITS[v.kind]})  ${v.file}:${v.line}  ${v.name}\n`);
  process.stdout.write(`${found.length} over the limits (file ${LIMITS.file}, class ${LIMITS.class}, function ${LIMITS.function} lines)\n`);
}
