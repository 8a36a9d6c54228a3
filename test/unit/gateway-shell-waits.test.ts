/**
 * The gateway image's fork-free wait helpers (images/gateway/.../common.sh: now_ms, tick/past, nap,
 * read_first, alive_pid, glog, nginx_workers_of, wake_supervisor, post_event, rm_absent), run in bash as the image's scripts source them. The scripts' behaviour with
 * them (reload, supervisor) is covered by test/e2e/images.test.ts.
 */
import { strict as assert } from 'assert';
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const COMMON = path.resolve(__dirname, '..', '..', 'images', 'gateway', 'rootfs', 'usr', 'local', 'lib', 'demiurge-gateway', 'common.sh');

describe('gateway image: waits without a fork (common.sh)', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gw-waits-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  const sh = (script: string): string =>
    execFileSync('bash', ['-c', `RUN_DIR=${JSON.stringify(path.join(dir, 'run'))}; . ${JSON.stringify(COMMON)}; ${script}`], { encoding: 'utf8', timeout: 10_000 }).trim();

  it('now_ms and tick agree with the wall clock; past turns true at its deadline', () => {
    const [a, b, before, after] = sh('PATH=/nonexistent; a=$(now_ms); tick; echo "$a $NOW_MS"; d=$(( NOW_MS + 150 )); past "$d" && echo early || echo before; nap 0.2; past "$d" && echo after || echo late').split(/\s+/);
    assert.ok(Math.abs(Number(a) - Date.now()) < 2000, `now_ms ${a} is not the wall clock`);
    assert.ok(Number(b) >= Number(a) && Number(b) - Number(a) < 1000, `tick ${b} after now_ms ${a}`);
    assert.equal(before, 'before');
    assert.equal(after, 'after');
  });

  it('nap sleeps for its timeout in the shell itself (no sleep program: PATH is empty), fractions included', () => {
    const ms = Number(sh('t=$(now_ms); PATH=/nonexistent; nap 0.1; nap 0.1; echo $(( $(now_ms) - t ))'));
    assert.ok(ms >= 195 && ms < 1500, `two naps of 0.1 s took ${ms} ms`);
  });

  it('read_first reads a first line, with or without its newline, and "" for a missing file', () => {
    fs.writeFileSync(path.join(dir, 'a'), '8889 /opt/x\nsecond\n');
    fs.writeFileSync(path.join(dir, 'b'), '42');
    assert.equal(sh(`read_first v ${dir}/a; echo "[$v]"; read_first w ${dir}/b; echo "[$w]"; read_first z ${dir}/none; echo "[$z]"`), '[8889 /opt/x]\n[42]\n[]');
  });

  it('alive_pid: true for a running process, false for an ended one, an unknown pid or ""', () => {
    assert.equal(sh('alive_pid $$ && echo self; sleep 5 & p=$!; alive_pid $p && echo child; kill $p; wait $p 2>/dev/null; alive_pid $p || echo ended; alive_pid 4194999 || echo unknown; alive_pid "" || echo empty'), 'self\nchild\nended\nunknown\nempty');
  });

  it('workers_retired: true once every worker given is gone or retitled "shutting down"; false at its deadline while one still accepts', () => {
    const out = sh([
      '(exec -a "nginx: worker process" sleep 5) & busy=$!',
      '(exec -a "nginx: worker process is shutting down" sleep 5) & leaving=$!',
      'sleep 0.2 & gone=$!; wait $gone',
      'tick; workers_retired $(( NOW_MS + 2000 )) $leaving $gone && echo retired',
      'tick; t=$NOW_MS; workers_retired $(( t + 150 )) $leaving $busy && echo wrong || echo "still-accepting $(( $(now_ms) - t ))"',
      'kill $busy $leaving',
    ].join('; '));
    const [first, second] = out.split('\n');
    assert.equal(first, 'retired');
    const m = /^still-accepting (\d+)$/.exec(second);
    assert.ok(m, `a worker that still accepts should fail the wait, got ${second}`);
    assert.ok(Number(m[1]) >= 150 && Number(m[1]) < 2000, `the wait ended after ${m[1]} ms, not at its 150 ms deadline`);
  });

  it('glog stamps a line with the UTC time in milliseconds without a date process (PATH is empty)', () => {
    const before = Date.now();
    const line = sh('PATH=/nonexistent; GLOG_TAG=reload; glog hello world');
    const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) \[gateway:reload\] hello world$/.exec(line);
    assert.ok(m, `unexpected log line ${JSON.stringify(line)}`);
    const t = Date.parse(m[1]);
    assert.ok(t >= before - 1000 && t <= Date.now() + 1000, `stamp ${m[1]} is not now`);
  });

  it('nginx_workers_of lists the children of a process (the stage-2 master\'s workers), "" for no or a bad pid', () => {
    const out = sh([
      '(sleep 5 & a=$!; sleep 5 & b=$!; echo "$a $b" > "$RUN_DIR/kids"; wait) & parent=$!',
      'until [ -s "$RUN_DIR/kids" ]; do nap 0.01; done; read_first kids "$RUN_DIR/kids"',
      'nginx_workers_of $parent; got=$NGINX_WORKERS',
      'for k in $kids; do [[ " $got " == *" $k "* ]] || echo "missing $k"; done',
      'nginx_workers_of 4194999; echo "[$NGINX_WORKERS]"; nginx_workers_of ""; echo "[$NGINX_WORKERS]"; nginx_workers_of "1; x"; echo "[$NGINX_WORKERS]"',
      'kill $kids $parent 2>/dev/null; echo done',
    ].join('; '));
    assert.equal(out, '[]\n[]\n[]\ndone');
  });

  it('wake_supervisor ends a nap on the supervisor\'s FIFO at once; without the FIFO it does nothing', () => {
    const out = sh([
      'mkfifo "$SUPERVISOR_WAKE"; exec {w}<>"$SUPERVISOR_WAKE"',
      '(nap 0.1; wake_supervisor) & true',
      't=$(now_ms); read -r -t 5 -u $w line; echo "$line $(( $(now_ms) - t ))"',
      'rm -f "$SUPERVISOR_WAKE"; wake_supervisor && echo no-fifo-ok',
    ].join('; '));
    const [first, second] = out.split('\n');
    const m = /^wake (\d+)$/.exec(first);
    assert.ok(m, `the nap was not woken: ${first}`);
    assert.ok(Number(m[1]) >= 90 && Number(m[1]) < 2000, `woken after ${m[1]} ms, not once written (≈100 ms)`);
    assert.equal(second, 'no-fifo-ok');
  });

  it('post_event puts a line on the candidate-events FIFO for a reload holding it open, never blocks without one, does nothing without the FIFO', () => {
    const out = sh([
      'mkfifo "$CANDIDATE_EVENTS"',
      't=$(now_ms); post_event "dropped 1"; echo "unread $(( $(now_ms) - t ))"',
      'exec {r}<>"$CANDIDATE_EVENTS"',
      '(nap 0.1; post_event "started 42") & true',
      't=$(now_ms); read -r -t 5 -u $r line; echo "$line $(( $(now_ms) - t ))"',
      'read -r -t 0 -u $r && echo stale || echo empty',
      'exec {r}>&-; rm -f "$CANDIDATE_EVENTS"; post_event x && echo no-fifo-ok',
    ].join('; '));
    const [unread, got, queue, none] = out.split('\n');
    const u = /^unread (\d+)$/.exec(unread);
    assert.ok(u && Number(u[1]) < 1000, `post_event without a reader: ${unread}`);
    const m = /^started 42 (\d+)$/.exec(got);
    assert.ok(m, `the reader did not get the line: ${got}`);
    assert.ok(Number(m[1]) >= 90 && Number(m[1]) < 2000, `woken after ${m[1]} ms, not once written (≈100 ms)`);
    assert.equal(queue, 'empty', 'the line written while nobody held the FIFO open must be gone');
    assert.equal(none, 'no-fifo-ok');
  });

  it('rm_absent removes the files that exist and needs no rm when none does', () => {
    fs.writeFileSync(path.join(dir, 'a'), 'x');
    assert.equal(sh(`PATH=/nonexistent; rm_absent ${dir}/none ${dir}/none2 && echo fine`), 'fine');
    sh(`rm_absent ${dir}/none ${dir}/a`);
    assert.equal(fs.existsSync(path.join(dir, 'a')), false);
  });
});
