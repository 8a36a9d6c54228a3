import { strict as assert } from 'assert';
import { execFileSync } from 'child_process';
import { readFileSync } from 'fs';
import * as path from 'path';
import { ENV_NAME_PATTERN, isValidEnvName } from '../../runtime/naming';

const COMMON_SH = path.resolve(__dirname, '..', '..', 'images/gateway/rootfs/usr/local/lib/demiurge-gateway/common.sh');

describe('gateway image: environment-name check (common.sh) equals runtime/naming.ts', () => {
  it('valid_env_name uses ENV_NAME_PATTERN verbatim', () => {
    const m = /^valid_env_name\(\) \{ \[\[ "\$1" =~ (\S+) \]\]; \}$/m.exec(readFileSync(COMMON_SH, 'utf8'));
    assert.ok(m, `no one-line valid_env_name() { [[ "$1" =~ <pattern> ]]; } in ${COMMON_SH}`);
    assert.equal(m[1], ENV_NAME_PATTERN);
  });

  it('bash accepts and refuses the same names as isValidEnvName', () => {
    const names = ['dev-001', 'a', 'prod', 'a'.repeat(32), 'a'.repeat(33), 'Dev', '1dev', '-dev', 'dev-', 'dev_1', 'dev.1', ''];
    // Only the function definition is evaluated: sourcing the whole file would create its run directory.
    const fn = /^valid_env_name\(\).*$/m.exec(readFileSync(COMMON_SH, 'utf8'))?.[0] ?? 'false';
    const script = `${fn}\nfor n in "$@"; do if valid_env_name "$n"; then echo yes; else echo no; fi; done`;
    const out = execFileSync('bash', ['-c', script, 'check', ...names], { encoding: 'utf8' }).trim().split('\n');
    assert.deepEqual(out, names.map((n) => (isValidEnvName(n) ? 'yes' : 'no')));
    assert.ok(out.includes('yes') && out.includes('no'), 'the sample has valid and invalid names');
  });
});
