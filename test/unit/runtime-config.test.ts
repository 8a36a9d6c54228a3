import { strict as assert } from 'assert';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { inspect } from 'util';
import { GatewayAllocator } from '../../runtime/allocator';
import { allocatorOptionsFromConfig, databaseUrl, loadRuntimeConfig, runtimeConfigPath, type RuntimeConfig } from '../../runtime/config';
import { cliConfigPath, resolveSettings, settingsFromConfig } from '../../runtime/cli/cli-config';
import { AllocatorError } from '../../runtime/errors';
import { OrgCertificates } from '../../runtime/tls/org-certificates';

const OPERATOR = 'operator-token-0123456789abcdef';
const DB_PASSWORD = 'p@ss:w/rd secret';

function sampleConfig(): Record<string, unknown> {
  return {
    version: 1,
    envName: 'dev-001',
    domain: 'dev-001.example.test',
    publicIp: '203.0.113.10',
    schema: 'gateway_pool',
    database: { host: '127.0.0.1', port: 5432, database: 'ganymede', user: 'ganymede' },
    powerdns: { apiUrl: 'http://demiurge-dev-001-pdns:8081', zone: 'dev-001.example.test' },
    nginx: { confDir: '/etc/nginx/demiurge', tls: { certPath: '/etc/demiurge/tls/fullchain.pem', keyPath: '/etc/demiurge/tls/privkey.pem' } },
    userContainerNaming: 'nested',
    inventory: [{ name: 'gw-pool-dev-001-0', host: 'gw-pool-dev-001-0', httpPort: 7100, vpnPort: 49100 }],
    tls: { mode: 'mkcert', issuer: 'dev-ca', caroot: '/var/lib/demiurge/tls/ca' },
    api: {
      listen: '0.0.0.0:6000',
      publicUrl: 'https://ganymede.dev-001.example.test',
      gatewayUrl: 'http://demiurge-dev-001-dev:6000',
      reconcileIntervalSeconds: 60,
      reaper: { intervalSeconds: 30, silenceSeconds: 600 },
    },
    secretsFile: 'secrets.json',
  };
}

function sampleSecrets(): Record<string, unknown> {
  return {
    databasePassword: DB_PASSWORD,
    powerdnsApiKey: 'pdns-key-secret-value',
    operatorToken: OPERATOR,
    orgCertificateKey: Buffer.alloc(32, 7).toString('base64'),
    gatewayRegistrationTokens: { 'gw-pool-dev-001-0': 'registration-token-0123456789' },
  };
}

function invalidConfig(fn: () => Promise<unknown>): Promise<AllocatorError> {
  return fn().then(
    () => assert.fail('expected INVALID_CONFIG'),
    (e: unknown) => {
      assert.ok(e instanceof AllocatorError, String(e));
      assert.equal(e.code, 'INVALID_CONFIG');
      return e;
    },
  );
}

describe('runtime config file (runtime/config)', () => {
  let dir: string;
  let configFile: string;
  let secretsFile: string;

  function write(cfg: unknown, secrets: unknown = sampleSecrets(), mode = 0o600): void {
    writeFileSync(configFile, typeof cfg === 'string' ? cfg : JSON.stringify(cfg));
    writeFileSync(secretsFile, typeof secrets === 'string' ? secrets : JSON.stringify(secrets));
    chmodSync(secretsFile, mode);
  }

  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'demiurge-runtime-config-'));
    configFile = path.join(dir, 'config.json');
    secretsFile = path.join(dir, 'secrets.json');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('loads the contract sample: typed fields, secrets resolved next to the config, defaults filled', async () => {
    const cfg = sampleConfig();
    delete (cfg.api as Record<string, unknown>).reaper;
    delete cfg.schema;
    write(cfg);
    const c = await loadRuntimeConfig(configFile);
    assert.equal(c.envName, 'dev-001');
    assert.equal(c.schema, 'gateway_pool');
    assert.deepEqual(c.api.listen, { host: '0.0.0.0', port: 6000 });
    assert.deepEqual(c.api.reaper, { intervalSeconds: 30, silenceSeconds: 600 });
    assert.equal(c.secretsFile, secretsFile);
    assert.equal(c.configFile, configFile);
    assert.deepEqual(c.tls, { mode: 'mkcert', caroot: '/var/lib/demiurge/tls/ca' });
    assert.equal(c.secrets.operatorToken, OPERATOR);
    assert.equal(c.secrets.gatewayRegistrationTokens['gw-pool-dev-001-0'], 'registration-token-0123456789');
  });

  it('api.hostHealth: defaults 15 s / 3 rounds / 3000 ms when left out; each field checked', async () => {
    write(sampleConfig());
    assert.deepEqual((await loadRuntimeConfig(configFile)).api.hostHealth, { intervalSeconds: 15, failuresBeforeUnreachable: 3, timeoutMs: 3000 });
    const set = sampleConfig();
    (set.api as Record<string, unknown>).hostHealth = { intervalSeconds: 2, failuresBeforeUnreachable: 5 };
    write(set);
    assert.deepEqual((await loadRuntimeConfig(configFile)).api.hostHealth, { intervalSeconds: 2, failuresBeforeUnreachable: 5, timeoutMs: 3000 });
    const bad = sampleConfig();
    (bad.api as Record<string, unknown>).hostHealth = { intervalSeconds: 0, failuresBeforeUnreachable: 1.5, timeoutMs: -1, probe: 'x' };
    write(bad);
    const problems = ((await invalidConfig(() => loadRuntimeConfig(configFile))).details as { problems: string[] }).problems;
    for (const field of ['intervalSeconds', 'failuresBeforeUnreachable', 'timeoutMs', 'probe']) {
      assert.ok(problems.some((p) => p.startsWith(`api.hostHealth.${field}:`)), `no problem for api.hostHealth.${field}: ${problems.join(' | ')}`);
    }
  });

  it('never shows the secrets: JSON.stringify and util.inspect hide them', async () => {
    write(sampleConfig());
    const c = await loadRuntimeConfig(configFile);
    for (const shown of [JSON.stringify(c), inspect(c, { depth: 10, showHidden: false }), String(JSON.stringify(c.secrets))]) {
      for (const secret of [OPERATOR, DB_PASSWORD, 'pdns-key-secret-value', 'registration-token-0123456789']) assert.ok(!shown.includes(secret), `${secret} shown in ${shown}`);
    }
  });

  it('takes the path from the argument, then DEMIURGE_RUNTIME_CONFIG, then the default', () => {
    assert.equal(runtimeConfigPath('/x/c.json', { DEMIURGE_RUNTIME_CONFIG: '/y/c.json' }), '/x/c.json');
    assert.equal(runtimeConfigPath(undefined, { DEMIURGE_RUNTIME_CONFIG: '/y/c.json' }), '/y/c.json');
    assert.equal(runtimeConfigPath(undefined, {}), '/etc/demiurge/runtime/config.json');
  });

  it('collects every problem in one error, naming the file, the field and the fix', async () => {
    const cfg = sampleConfig();
    cfg.envName = 'Dev 001';
    cfg.publicIp = 'not-an-ip';
    (cfg.database as Record<string, unknown>).port = 70000;
    (cfg.api as Record<string, unknown>).listen = '6000';
    (cfg.nginx as Record<string, unknown>).confDir = 'relative/dir';
    cfg.tls = { mode: 'acme' };
    cfg.inventory = [{ name: 'Bad Name', host: 'x', httpPort: 0, vpnPort: 1 }];
    cfg.extraField = true;
    write(cfg);
    const e = await invalidConfig(() => loadRuntimeConfig(configFile));
    assert.ok(e.message.includes(configFile), e.message);
    const problems = (e.details as { problems: string[] }).problems;
    for (const field of ['envName', 'publicIp', 'database.port', 'api.listen', 'nginx.confDir', 'tls.mode', 'inventory', 'extraField']) {
      assert.ok(problems.some((p) => p.startsWith(`${field}:`)), `no problem for ${field}: ${problems.join(' | ')}`);
    }
    assert.match(e.message, /api\.listen: got "6000"; write host:port/);
  });

  it('requires the fields of the chosen TLS mode and refuses a mismatched issuer or fields of another mode', async () => {
    const cfg = sampleConfig();
    cfg.tls = { mode: 'letsencrypt', issuer: 'dev-ca', caroot: '/x' };
    write(cfg);
    const e = await invalidConfig(() => loadRuntimeConfig(configFile));
    for (const f of ['tls.issuer', 'tls.directoryUrl', 'tls.email', 'tls.stateDir', 'tls.resolvers', 'tls.caroot']) assert.match(e.message, new RegExp(`${f.replace('.', '\\.')}:`));
  });

  it("powerdns.database: PowerDNS's gpgsql database for the allocator's record writes, its password only in the secrets file", async () => {
    const PDNS_PASSWORD = 'pdns:p@ss/word';
    const cfg = sampleConfig();
    (cfg.powerdns as Record<string, unknown>).database = { host: '127.0.0.1', port: 5432, database: 'pdns', user: 'pdns' };
    write(cfg, { ...sampleSecrets(), powerdnsDatabasePassword: PDNS_PASSWORD });
    const c = await loadRuntimeConfig(configFile);
    assert.deepEqual(c.powerdns.database, { host: '127.0.0.1', port: 5432, database: 'pdns', user: 'pdns' });
    const pdns = allocatorOptionsFromConfig(c, { certificates: undefined }).powerdns;
    assert.deepEqual(pdns.database, { connectionString: `postgres://pdns:${encodeURIComponent(PDNS_PASSWORD)}@127.0.0.1:5432/pdns` });
    assert.equal(settingsFromConfig(c)['pdns-database-url'], `postgres://pdns:${encodeURIComponent(PDNS_PASSWORD)}@127.0.0.1:5432/pdns`);
    assert.ok(!inspect(c.powerdns).includes(PDNS_PASSWORD), 'the password is not part of the non-secret config');

    // Named database but no password: the secret is named, never a value.
    write(cfg, sampleSecrets());
    const missing = await invalidConfig(() => loadRuntimeConfig(configFile));
    assert.match(missing.message, /powerdnsDatabasePassword: missing; the password of PowerDNS's database role pdns/);
    // A database section without its fields.
    (cfg.powerdns as Record<string, unknown>).database = { host: '127.0.0.1', user: 'pdns' };
    write(cfg, { ...sampleSecrets(), powerdnsDatabasePassword: PDNS_PASSWORD });
    const partial = await invalidConfig(() => loadRuntimeConfig(configFile));
    assert.match(partial.message, /powerdns\.database\.database: missing; the database name \(pdns\)/);
    // No database: records go through the API, and a password left in the secrets file is refused (a stale secret).
    write(sampleConfig(), { ...sampleSecrets(), powerdnsDatabasePassword: PDNS_PASSWORD });
    const stale = await invalidConfig(() => loadRuntimeConfig(configFile));
    assert.match(stale.message, /powerdnsDatabasePassword/);
    assert.ok(!stale.message.includes(PDNS_PASSWORD));
    write(sampleConfig());
    const api = await loadRuntimeConfig(configFile);
    assert.equal(api.secrets.powerdnsDatabasePassword, null);
    assert.equal(allocatorOptionsFromConfig(api, { certificates: undefined }).powerdns.database, undefined);
  });

  it('refuses a secrets file readable by group or others, unless the test option allows it', async () => {
    write(sampleConfig(), sampleSecrets(), 0o644);
    const e = await invalidConfig(() => loadRuntimeConfig(configFile));
    assert.match(e.message, /readable by group or others \(mode 0644\); run `chmod 600/);
    const c = await loadRuntimeConfig(configFile, { allowInsecureSecretsFile: true });
    assert.equal(c.secrets.operatorToken, OPERATOR);
  });

  it('names missing or invalid secrets by field, never by value', async () => {
    const secrets = sampleSecrets();
    secrets.operatorToken = 'short secret!';
    delete secrets.powerdnsApiKey;
    secrets.orgCertificateKey = null;
    secrets.gatewayRegistrationTokens = {};
    write(sampleConfig(), secrets);
    const e = await invalidConfig(() => loadRuntimeConfig(configFile));
    assert.ok(e.message.includes(secretsFile));
    for (const f of ['operatorToken: invalid', 'powerdnsApiKey: missing', 'orgCertificateKey: missing', 'gatewayRegistrationTokens: no token for gw-pool-dev-001-0']) assert.ok(e.message.includes(f), `${f} in ${e.message}`);
    assert.ok(!e.message.includes('short secret!'));
    // TLS mode none needs no certificate key.
    const cfg = sampleConfig();
    cfg.tls = { mode: 'none' };
    write(cfg, { ...sampleSecrets(), orgCertificateKey: null });
    assert.equal((await loadRuntimeConfig(configFile)).secrets.orgCertificateKey, null);
  });

  it('missing files and malformed JSON are INVALID_CONFIG with the path; secrets JSON errors do not quote the text', async () => {
    const missing = await invalidConfig(() => loadRuntimeConfig(path.join(dir, 'nope.json')));
    assert.match(missing.message, /nope\.json: it does not exist; pass its path \(--config, DEMIURGE_RUNTIME_CONFIG\)/);
    write('{ not json');
    assert.match((await invalidConfig(() => loadRuntimeConfig(configFile))).message, /config\.json is not valid JSON/);
    write(sampleConfig(), '{"operatorToken": "leaked-secret-value",');
    const bad = await invalidConfig(() => loadRuntimeConfig(configFile));
    assert.match(bad.message, /secrets\.json is not valid JSON;/);
    assert.ok(!bad.message.includes('leaked-secret-value'));
  });

  it('allocatorOptionsFromConfig: database URL with an encoded password, PowerDNS key, nginx paths, dev-CA certificates', async () => {
    write(sampleConfig());
    const c: RuntimeConfig = await loadRuntimeConfig(configFile);
    const o = allocatorOptionsFromConfig(c, { logger: null });
    const url = new URL(databaseUrl(c));
    assert.equal(decodeURIComponent(url.password), DB_PASSWORD);
    assert.equal(url.pathname, '/ganymede');
    assert.deepEqual(o.powerdns, { apiUrl: 'http://demiurge-dev-001-pdns:8081', apiKey: 'pdns-key-secret-value', zone: 'dev-001.example.test' });
    assert.equal(o.nginx.confDir, '/etc/nginx/demiurge');
    assert.ok(o.certificates instanceof OrgCertificates);
    assert.equal(o.certificates.issuance, 'await');
    assert.equal(o.logger, null);
  });

  it('letsencrypt → background ACME certificates; none or flat naming → no certificates; fromConfig builds an allocator', async () => {
    const acme = sampleConfig();
    acme.tls = { mode: 'letsencrypt', directoryUrl: 'https://acme.example.test/dir', email: 'ops@example.test', stateDir: '/var/lib/demiurge/tls/acme', resolvers: ['demiurge-dev-001-pdns:53'] };
    write(acme);
    const o = allocatorOptionsFromConfig(await loadRuntimeConfig(configFile));
    assert.ok(o.certificates instanceof OrgCertificates);
    assert.equal(o.certificates.issuance, 'background');
    const flat = sampleConfig();
    flat.userContainerNaming = 'flat';
    write(flat);
    assert.equal(allocatorOptionsFromConfig(await loadRuntimeConfig(configFile)).certificates, undefined);
    const none = sampleConfig();
    none.tls = { mode: 'none' };
    write(none);
    const c = await loadRuntimeConfig(configFile);
    assert.equal(allocatorOptionsFromConfig(c).certificates, undefined);
    const a = GatewayAllocator.fromConfig(c, { logger: null });
    assert.equal(a.envName, 'dev-001');
    assert.equal(a.schema, 'gateway_pool');
    await a.close();
  });

  it('gateway-pool: --config, then DEMIURGE_RUNTIME_CONFIG, then the default path only if it exists; flags > env > file', async () => {
    write(sampleConfig());
    assert.equal(cliConfigPath('/a.json', { DEMIURGE_RUNTIME_CONFIG: '/b.json' }), '/a.json');
    assert.equal(cliConfigPath(undefined, { DEMIURGE_RUNTIME_CONFIG: '/b.json' }), '/b.json');
    assert.equal(cliConfigPath(undefined, {}, configFile), configFile);
    assert.equal(cliConfigPath(undefined, {}, path.join(dir, 'absent.json')), undefined);
    const file = settingsFromConfig(await loadRuntimeConfig(configFile));
    assert.equal(file.env, 'dev-001');
    assert.equal(file['org-cert-issuer'], 'dev-ca');
    assert.equal(file['dev-caroot'], '/var/lib/demiurge/tls/ca');
    assert.equal(decodeURIComponent(new URL(file['database-url'] as string).password), DB_PASSWORD);
    const merged = resolveSettings({ env: 'from-flag' }, { DOMAIN: 'env.example.test', PDNS_ZONE: '' }, file);
    assert.deepEqual([merged.env, merged.domain, merged.zone], ['from-flag', 'env.example.test', 'dev-001.example.test']);
  });
});
