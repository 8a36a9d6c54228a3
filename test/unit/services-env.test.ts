import { strict as assert } from 'assert';
import { mkdtempSync, rmSync, writeFileSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { readEnvFile, testServicesOf } from '../helpers/services-env';

describe('services env file (scripts/test-services.sh facts)', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'demiurge-services-env-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('reads KEY=value lines, the value being everything after the first =', () => {
    const file = path.join(dir, 'env');
    writeFileSync(
      file,
      'TEST_PG_URL=postgres://u:p@127.0.0.1:5433/db?x=1\nTEST_PDNS_API_URL=http://127.0.0.1:8181\n\nTEST_PDNS_API_KEY=k=ey\nTEST_PDNS_DNS_PORT=5354\nTEST_SERVICES_SCRIPT=/r/scripts/test-services.sh\nSERVICES_PROFILE=soak\n',
    );
    const env = readEnvFile(file);
    assert.equal(env.SERVICES_PROFILE, 'soak');
    assert.deepEqual(testServicesOf(env), {
      pgUrl: 'postgres://u:p@127.0.0.1:5433/db?x=1',
      pdnsApiUrl: 'http://127.0.0.1:8181',
      pdnsApiKey: 'k=ey',
      pdnsDnsPort: 5354,
      // An env file from before TEST_PDNS_DB_URL: the profile's pdns role and database on the same cluster.
      pdnsDbUrl: 'postgres://pdns_soak:p@127.0.0.1:5433/pdns_soak?x=1',
      servicesScript: '/r/scripts/test-services.sh',
    });
    assert.equal(testServicesOf({ ...env, TEST_PDNS_DB_URL: 'postgres://pdns_test:q@127.0.0.1:25432/pdns_test' }).pdnsDbUrl, 'postgres://pdns_test:q@127.0.0.1:25432/pdns_test');
  });

  it('a missing file fails with the caller\'s message', () => {
    assert.throws(() => readEnvFile(path.join(dir, 'nope'), 'run scripts/test-services.sh up first'), /^Error: run scripts\/test-services.sh up first$/);
  });
});
