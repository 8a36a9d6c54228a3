/** The bench's parsing and report pieces that need no services: wrk's output, the targets table, the README block. */
import { strict as assert } from 'assert';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { targetsTable, updateReadme } from '../../bench/report';
import type { BenchResults } from '../../bench/results-types';
import { parseWrk } from '../../bench/routing';

const WRK_OUT = `Running 5s test @ https://127.0.0.1:29443/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.31ms    1.02ms  25.19ms   90.12%
    Req/Sec    14.03k     1.12k   15.80k    78.00%
  Latency Distribution
     50%  850.00us
     75%    2.50ms
     90%    3.01ms
     99%    1.02s
  69806 requests in 5.00s, 23.76MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 3
Requests/sec:  13955.31
Transfer/sec:      4.75MB
`;

describe('bench: wrk output and the report', () => {
  it('parses wrk --latency: requests/s, p50 and p99 in ms whatever the unit, errors', () => {
    const r = parseWrk(WRK_OUT);
    assert.equal(r.requestsPerS, 13955.31);
    assert.equal(r.requests, 69806);
    assert.equal(r.p50Ms, 0.85);
    assert.equal(r.p99Ms, 1020);
    assert.equal(r.errors, 6);
  });

  it('refuses wrk output without a latency distribution', () => {
    assert.throws(() => parseWrk(WRK_OUT.replace(/^\s+99%.*$/m, '')), /no 99% line/);
  });

  const results = {
    targets: [
      { id: 'b', row: 5, description: 'routing', target: '>= 95%', measured: '90%', pass: false },
      { id: 'a', row: 3, description: 'throughput', target: '>= 1,000/s', measured: '1,100/s', pass: true },
      { id: 'c', row: 6, description: 'cost', target: 'reported', measured: '16 PATCHes', pass: null },
    ],
  } as unknown as BenchResults;

  it('lists the targets by row: PASS, **FAIL**, and — for reported-only rows', () => {
    const lines = targetsTable(results).split('\n').slice(2);
    assert.deepEqual(lines, ['| 3 | throughput | >= 1,000/s | 1,100/s | PASS |', '| 5 | routing | >= 95% | 90% | **FAIL** |', '| 6 | cost | reported | 16 PATCHes | — |']);
  });

  it('rewrites only the block between its markers, and says when they are missing', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'bench-report-'));
    try {
      const file = path.join(dir, 'README.md');
      const r = { ...results, date: '2026-12-02T01:00:00.000Z', machine: { cores: 2, cpuModel: 'cpu', memoryGiB: 4, kernel: 'Linux', node: 'v20', nginx: '1.22', njs: '0.7', lua: '0.10', postgres: '15', powerdns: '4.7' } } as unknown as BenchResults;
      writeFileSync(file, 'before\n<!-- BEGIN bench-headline -->\nold\n<!-- END bench-headline -->\nafter\n');
      assert.equal(updateReadme(file, r, 'headline'), true);
      const text = readFileSync(file, 'utf8');
      assert.match(text, /^before\n<!-- BEGIN bench-headline -->\n/);
      assert.match(text, /\*\*1 of 2 targets met\*\*/);
      assert.match(text, /!\[[^\]]*\]\(bench\/results\/latest\.svg\)/);
      assert.match(text, /<!-- END bench-headline -->\nafter\n$/);
      assert.ok(!text.includes('\nold\n'));
      writeFileSync(file, 'no markers\n');
      assert.equal(updateReadme(file, r, 'headline'), false);
      assert.equal(readFileSync(file, 'utf8'), 'no markers\n');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
