import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import {
  CONFIG_KEYS,
  LETSENCRYPT_DIRECTORY,
  StackConfigError,
  parseStackConfig,
  type RawConfig,
  type StackConfig,
} from '../../stack/config';
import { gatewayInventory, planGateways } from '../../stack/gateways';
import { readStackYaml, parseStackYaml } from './helpers/stack-yaml';

const ROOT = path.resolve(__dirname, '..', '..');
const NS = 'demiurge:';

/** Stack file config with the namespace stripped, as loadStackConfig hands it to parseStackConfig. */
function stackRaw(stack: 'dev' | 'prod'): Record<string, string> {
  const { config } = readStackYaml(path.join(ROOT, `Pulumi.${stack}.yaml`));
  const raw: Record<string, string> = {};
  for (const [k, v] of Object.entries(config)) {
    assert.ok(k.startsWith(NS), `Pulumi.${stack}.yaml: key ${k} is outside the ${NS} namespace`);
    raw[k.slice(NS.length)] = v;
  }
  return raw;
}

const MINIMAL: RawConfig = { envName: 'dev-001', domain: 'demiurge.test', publicIp: '127.0.0.1' };

function expectInvalid(raw: RawConfig, key: string, contains?: RegExp): StackConfigError {
  let error: unknown;
  try {
    parseStackConfig(raw);
  } catch (err) {
    error = err;
  }
  assert.ok(error instanceof StackConfigError, `expected a StackConfigError for ${JSON.stringify(raw)}`);
  assert.ok(
    error.issues.some((i) => i.key === key && i.fullKey === `demiurge:${key}`),
    `expected an issue for demiurge:${key}, got:\n${error.message}`,
  );
  assert.match(error.message, new RegExp(`demiurge:${key}: `));
  assert.match(error.message, /Fix: /);
  if (contains) assert.match(error.message, contains);
  return error;
}

describe('stack config: parseStackConfig', () => {
  it('parses Pulumi.dev.yaml into the dev environment', () => {
    const cfg = parseStackConfig(stackRaw('dev'));
    const expected: StackConfig = {
      project: 'demiurge',
      envName: 'dev-001',
      domain: 'demiurge.test',
      publicIp: '127.0.0.1',
      gatewayPoolSize: 3,
      gatewayHttpPortBase: 7100,
      gatewayVpnPortBase: 49100,
      gatewayPortRangeSize: 100,
      gatewayHosts: [{ name: 'main', kind: 'main', poolSize: 3, firstIndex: 0 }],
      stage1HttpPort: 80,
      stage1HttpsPort: 443,
      dnsPort: 53,
      dnsBindIp: '127.0.0.1',
      dnsWildcard: false,
      userContainerNaming: 'nested',
      powerDnsApiHostPort: 8081,
      powerDnsAdminUrl: 'http://127.0.0.1:8081',
      tls: { mode: 'mkcert', renewBeforeDays: 30 },
      images: {
        dev: { kind: 'build', context: 'images/dev' },
        pdns: { kind: 'build', context: 'images/powerdns' },
        'build-server': { kind: 'build', context: 'images/build-server' },
        gateway: { kind: 'build', context: 'images/gateway' },
      },
      dockerHost: undefined,
      dockerSocketPath: '/var/run/docker.sock',
      retainDataVolumes: true,
      ganymede: 'embedded',
      gatewayIdleTimeoutSeconds: 300,
      gatewayPushIntervalSeconds: 60,
      hostHealthIntervalSeconds: 15,
    };
    assert.deepEqual(cfg, expected);
  });

  it('parses Pulumi.prod.yaml: two Docker hosts, indices continue across hosts, letsencrypt', () => {
    const cfg = parseStackConfig(stackRaw('prod'));
    assert.equal(cfg.envName, 'prod');
    assert.equal(cfg.gatewayPoolSize, 10);
    assert.deepEqual(cfg.gatewayHosts, [
      { name: 'main', kind: 'main', dockerHost: undefined, ip: undefined, poolSize: 4, firstIndex: 0 },
      { name: 'gw-b', kind: 'ssh', dockerHost: 'ssh://deploy@203.0.113.12', ip: '203.0.113.12', poolSize: 6, firstIndex: 4 },
    ]);
    assert.deepEqual(cfg.tls, {
      mode: 'letsencrypt',
      acmeEmail: 'admin@example.com',
      acmeDirectory: LETSENCRYPT_DIRECTORY,
      renewBeforeDays: 30,
    });
    assert.equal(cfg.dnsBindIp, '0.0.0.0');
    const inventory = gatewayInventory(planGateways(cfg));
    assert.deepEqual(inventory.slice(3, 5), [
      { name: 'gw-pool-prod-3', host: 'gw-pool-prod-3', httpPort: 7103, vpnPort: 49103 },
      { name: 'gw-pool-prod-4', host: '203.0.113.12', httpPort: 7104, vpnPort: 49104 },
    ]);
  });

  it('applies the documented defaults when only the required keys are set', () => {
    const cfg = parseStackConfig(MINIMAL);
    assert.equal(cfg.gatewayPoolSize, 3);
    assert.equal(cfg.gatewayHttpPortBase, 7100);
    assert.equal(cfg.gatewayVpnPortBase, 49100);
    assert.equal(cfg.gatewayPortRangeSize, 100);
    assert.equal(cfg.dnsPort, 53);
    assert.equal(cfg.dnsBindIp, '0.0.0.0');
    assert.equal(cfg.powerDnsApiHostPort, 8081);
    assert.equal(cfg.powerDnsAdminUrl, 'http://127.0.0.1:8081');
    assert.deepEqual(cfg.tls, { mode: 'none' });
    assert.equal(cfg.retainDataVolumes, true);
    assert.equal(cfg.dnsWildcard, false);
    assert.equal(cfg.userContainerNaming, 'nested');
  });

  it('flat user-container naming turns the *.<domain> DNS record on (and refuses it off)', () => {
    const flat = parseStackConfig({ ...MINIMAL, userContainerNaming: 'flat' });
    assert.equal(flat.userContainerNaming, 'flat');
    assert.equal(flat.dnsWildcard, true);
    expectInvalid({ ...MINIMAL, userContainerNaming: 'flat', dnsWildcard: 'false' }, 'dnsWildcard', /flat/);
    expectInvalid({ ...MINIMAL, userContainerNaming: 'per-org' }, 'userContainerNaming', /nested, flat/);
  });

  it('tlsRenewBeforeDays: default 30, 1-60', () => {
    assert.deepEqual(parseStackConfig({ ...MINIMAL, tlsMode: 'mkcert', tlsRenewBeforeDays: '20' }).tls, { mode: 'mkcert', renewBeforeDays: 20 });
    expectInvalid({ ...MINIMAL, tlsMode: 'mkcert', tlsRenewBeforeDays: '90' }, 'tlsRenewBeforeDays', /between 1 and 60/);
    expectInvalid({ ...MINIMAL, tlsMode: 'letsencrypt', acmeEmail: 'a@b.example', tlsRenewBeforeDays: 'soon' }, 'tlsRenewBeforeDays');
  });

  it('acmeCaCertificates (letsencrypt only) and gatewayExtraCaCertificates: PEM certificates only, normalised', () => {
    const pem = fs.readFileSync(path.join(ROOT, 'test', 'fixtures', 'pem', 'test-ca.pem'), 'utf8');
    const le = { ...MINIMAL, tlsMode: 'letsencrypt', acmeEmail: 'a@b.example' };
    const two = `\n${pem.trim()}\r\n\n${pem.trim()}  \n`;
    const cfg = parseStackConfig({ ...le, acmeCaCertificates: two, gatewayExtraCaCertificates: pem.trim() });
    assert.equal(cfg.tls.mode === 'letsencrypt' ? cfg.tls.acmeCaCertificates : '', `${pem.trim()}\n${pem.trim()}\n`);
    assert.equal(cfg.gatewayExtraCaCertificates, `${pem.trim()}\n`);
    // Unset: nothing (the system's CAs), no key in the typed config.
    const plain = parseStackConfig(le);
    assert.ok(plain.tls.mode === 'letsencrypt' && !('acmeCaCertificates' in plain.tls));
    assert.ok(!('gatewayExtraCaCertificates' in plain));
    // Not read outside letsencrypt (like the other ACME keys).
    assert.deepEqual(parseStackConfig({ ...MINIMAL, tlsMode: 'mkcert', acmeCaCertificates: 'junk' }).tls, { mode: 'mkcert', renewBeforeDays: 30 });
    const key = '-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n';
    const broken = pem.replace(/\n[A-Za-z0-9+/]{20}/, '\nAAAAAAAAAAAAAAAAAAAA');
    for (const bad of ['/etc/ssl/ca.pem', `${pem}${key}`, `note: ${pem}`, '-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----', broken]) {
      expectInvalid({ ...le, acmeCaCertificates: bad }, 'acmeCaCertificates', /one or more PEM certificates/);
      expectInvalid({ ...MINIMAL, gatewayExtraCaCertificates: bad }, 'gatewayExtraCaCertificates', /one or more PEM certificates/);
    }
  });

  it('defaults envName to the stack name (loadStackConfig passes it)', () => {
    const { envName, ...rest } = MINIMAL;
    assert.equal(envName, 'dev-001');
    assert.equal(parseStackConfig(rest, { defaultEnvName: 'staging' }).envName, 'staging');
  });

  it('powerDnsApiHostPort 0 keeps the API unpublished when powerDnsAdminUrl says how to reach it', () => {
    const cfg = parseStackConfig({ ...MINIMAL, powerDnsApiHostPort: '0', powerDnsAdminUrl: 'http://127.0.0.1:18081/' });
    assert.equal(cfg.powerDnsApiHostPort, 0);
    assert.equal(cfg.powerDnsAdminUrl, 'http://127.0.0.1:18081');
  });

  it('takes a prebuilt tag per image', () => {
    const cfg = parseStackConfig({ ...MINIMAL, gatewayImage: 'registry.example.com:5000/demiurge/gateway:1.4.2', devImage: 'demiurge/dev@sha256:' + 'a'.repeat(64) });
    assert.deepEqual(cfg.images.gateway, { kind: 'prebuilt', tag: 'registry.example.com:5000/demiurge/gateway:1.4.2' });
    assert.equal(cfg.images.dev.kind, 'prebuilt');
    assert.deepEqual(cfg.images.pdns, { kind: 'build', context: 'images/powerdns' });
  });

  it('gatewayHosts: firstIndex pins indices; ip is required for named SSH hosts', () => {
    const cfg = parseStackConfig({
      ...MINIMAL,
      gatewayHosts: JSON.stringify([
        { host: 'ssh://ops@gw1.example.com', ip: '198.51.100.7', poolSize: 2 },
        { host: 'ssh://ops@198.51.100.8:2222', poolSize: 2, firstIndex: 10 },
      ]),
    });
    assert.deepEqual(
      cfg.gatewayHosts.map((h) => [h.name, h.ip, h.firstIndex, h.poolSize]),
      [
        ['gw1-example-com', '198.51.100.7', 0, 2],
        ['198-51-100-8', '198.51.100.8', 10, 2],
      ],
    );
    assert.deepEqual(planGateways(cfg).map((g) => g.index), [0, 1, 10, 11]);
  });

  describe('rejects invalid configuration, naming the key and the fix', () => {
    it('pool larger than its port range', () => {
      expectInvalid({ ...MINIMAL, gatewayPoolSize: '101' }, 'gatewayPoolSize', /gatewayPortRangeSize/);
      expectInvalid({ ...MINIMAL, gatewayPoolSize: '11', gatewayPortRangeSize: '10' }, 'gatewayPoolSize');
    });
    it('HTTP and VPN ranges overlap', () => {
      expectInvalid({ ...MINIMAL, gatewayVpnPortBase: '7150' }, 'gatewayVpnPortBase', /overlaps the HTTP range 7100-7199/);
    });
    it('a range overlaps a fixed port (80, 443, DNS, PowerDNS API)', () => {
      expectInvalid({ ...MINIMAL, gatewayHttpPortBase: '8000' }, 'gatewayHttpPortBase', /contains port 8081/);
      expectInvalid({ ...MINIMAL, gatewayHttpPortBase: '400' }, 'gatewayHttpPortBase', /contains port 443/);
      expectInvalid({ ...MINIMAL, gatewayVpnPortBase: '20' }, 'gatewayVpnPortBase', /contains port 53/);
      expectInvalid({ ...MINIMAL, gatewayVpnPortBase: '5300', dnsPort: '5353' }, 'gatewayVpnPortBase', /contains port 5353/);
    });
    it('a range that ends above 65535', () => {
      expectInvalid({ ...MINIMAL, gatewayVpnPortBase: '65500' }, 'gatewayVpnPortBase', /above 65535/);
    });
    it('non-DNS-safe environment name', () => {
      for (const bad of ['Dev_001', 'dev.001', '-dev', '1dev', 'a'.repeat(40), 'dev-']) {
        expectInvalid({ ...MINIMAL, envName: bad }, 'envName');
      }
    });
    it('non-DNS-safe domain', () => {
      for (const bad of ['demiurge', 'Demiurge.Test', 'demiurge.test.', 'a..b', 'under_score.test', 'x.123']) {
        expectInvalid({ ...MINIMAL, domain: bad }, 'domain');
      }
      expectInvalid({ ...MINIMAL, domain: `${'a'.repeat(60)}.${'b'.repeat(60)}.${'c'.repeat(60)}.test` }, 'domain', /uc-<uuid>/);
    });
    it('unknown TLS mode', () => {
      expectInvalid({ ...MINIMAL, tlsMode: 'acme' }, 'tlsMode', /mkcert, letsencrypt, none/);
    });
    it('letsencrypt without (or with a malformed) ACME e-mail, or a non-https directory', () => {
      expectInvalid({ ...MINIMAL, tlsMode: 'letsencrypt' }, 'acmeEmail', /required when tlsMode is letsencrypt/);
      expectInvalid({ ...MINIMAL, tlsMode: 'letsencrypt', acmeEmail: 'admin' }, 'acmeEmail');
      expectInvalid({ ...MINIMAL, tlsMode: 'letsencrypt', acmeEmail: 'a@b.example', acmeDirectory: 'http://acme.test/dir' }, 'acmeDirectory');
    });
    it('bad public IP', () => {
      for (const bad of ['256.1.1.1', '10.0.0', '0.0.0.0', 'localhost', '::1', '01.2.3.4']) {
        expectInvalid({ ...MINIMAL, publicIp: bad }, 'publicIp');
      }
      expectInvalid({ ...MINIMAL, dnsBindIp: 'all' }, 'dnsBindIp');
    });
    it('missing required keys', () => {
      const err = expectInvalid({}, 'domain');
      assert.deepEqual(err.issues.map((i) => i.key).sort(), ['domain', 'envName', 'publicIp']);
    });
    it('bad ports', () => {
      expectInvalid({ ...MINIMAL, dnsPort: '70000' }, 'dnsPort', /between 1 and 65535/);
      expectInvalid({ ...MINIMAL, dnsPort: 'fifty-three' }, 'dnsPort');
      expectInvalid({ ...MINIMAL, gatewayHttpPortBase: '0' }, 'gatewayHttpPortBase');
      expectInvalid({ ...MINIMAL, powerDnsApiHostPort: '443' }, 'powerDnsApiHostPort');
      expectInvalid({ ...MINIMAL, dnsPort: '80' }, 'dnsPort');
      expectInvalid({ ...MINIMAL, stage1HttpsPort: '80' }, 'stage1HttpsPort', /must differ/);
      expectInvalid({ ...MINIMAL, stage1HttpPort: '0' }, 'stage1HttpPort');
    });
    it('moved stage-1 ports: the other ports must avoid the new ones, 80/443 become free', () => {
      const moved = { ...MINIMAL, stage1HttpPort: '62080', stage1HttpsPort: '62443' };
      expectInvalid({ ...moved, dnsPort: '62443' }, 'dnsPort');
      expectInvalid({ ...moved, powerDnsApiHostPort: '62080' }, 'powerDnsApiHostPort');
      expectInvalid({ ...moved, gatewayHttpPortBase: '62000' }, 'gatewayHttpPortBase', /contains port 62080, used by stage-1 HTTP \(demiurge:stage1HttpPort\)/);
      const cfg = parseStackConfig({ ...moved, gatewayHttpPortBase: '400', gatewayPortRangeSize: '10', gatewayPoolSize: '2' });
      assert.equal(cfg.stage1HttpPort, 62080);
      assert.equal(cfg.stage1HttpsPort, 62443);
      assert.equal(cfg.gatewayHttpPortBase, 400);
    });
    it('pool size 0, negative or not an integer', () => {
      expectInvalid({ ...MINIMAL, gatewayPoolSize: '0' }, 'gatewayPoolSize', /at least 1/);
      expectInvalid({ ...MINIMAL, gatewayPoolSize: '-2' }, 'gatewayPoolSize', /negative/);
      expectInvalid({ ...MINIMAL, gatewayPoolSize: '2.5' }, 'gatewayPoolSize', /whole number/);
      expectInvalid({ ...MINIMAL, gatewayPoolSize: 'three' }, 'gatewayPoolSize', /whole number/);
    });
    it('prod multi-host pool sizes that do not add up', () => {
      const hosts = JSON.stringify([
        { host: 'main', poolSize: 4 },
        { host: 'ssh://deploy@203.0.113.12', poolSize: 5 },
      ]);
      expectInvalid({ ...MINIMAL, gatewayPoolSize: '10', gatewayHosts: hosts }, 'gatewayPoolSize', /add up to 9/);
    });
    it('malformed gatewayHosts', () => {
      expectInvalid({ ...MINIMAL, gatewayHosts: '[{host:' }, 'gatewayHosts', /not valid JSON/);
      expectInvalid({ ...MINIMAL, gatewayHosts: '[]' }, 'gatewayHosts');
      expectInvalid({ ...MINIMAL, gatewayHosts: '[{"host":"tcp://10.0.0.2:2375","poolSize":1}]' }, 'gatewayHosts', /ssh:\/\//);
      expectInvalid({ ...MINIMAL, gatewayHosts: '[{"host":"ssh://ops@gw.example.com","poolSize":1}]' }, 'gatewayHosts', /ip is required/);
      expectInvalid({ ...MINIMAL, gatewayHosts: '[{"host":"main","poolSize":0}]' }, 'gatewayHosts', /poolSize/);
      expectInvalid(
        { ...MINIMAL, gatewayHosts: '[{"host":"main","poolSize":3},{"host":"ssh://a@10.0.0.2","poolSize":2,"firstIndex":1}]' },
        'gatewayHosts',
        /overlap/,
      );
      expectInvalid({ ...MINIMAL, gatewayHosts: '[{"host":"main","poolSize":1},{"host":"main","poolSize":1}]' }, 'gatewayHosts', /twice/);
      expectInvalid({ ...MINIMAL, gatewayHosts: '[{"host":"main","poolSize":1,"size":2}]' }, 'gatewayHosts', /unknown field/);
      expectInvalid({ ...MINIMAL, gatewayHosts: '[{"host":"ssh://a@10.0.0.2","poolSize":1,"firstIndex":100}]' }, 'gatewayHosts', /gatewayPortRangeSize/);
    });
    it('unknown (misspelled) keys', () => {
      expectInvalid({ ...MINIMAL, poolSize: '5' }, 'poolSize', /not a configuration key/);
    });
    it('bad image tags, Docker host, paths and booleans', () => {
      expectInvalid({ ...MINIMAL, gatewayImage: 'Not A Tag' }, 'gatewayImage');
      expectInvalid({ ...MINIMAL, dockerHost: 'docker.example.com' }, 'dockerHost');
      expectInvalid({ ...MINIMAL, dockerSocketPath: 'docker.sock' }, 'dockerSocketPath');
      expectInvalid({ ...MINIMAL, tlsMode: 'mkcert', tlsStateDir: '/srv/tls' }, 'tlsStateDir', /not a configuration key/);
      expectInvalid({ ...MINIMAL, retainDataVolumes: 'yes' }, 'retainDataVolumes', /true or false/);
      expectInvalid({ ...MINIMAL, ganymede: 'external' }, 'ganymede', /one of embedded, workspace/);
      expectInvalid({ ...MINIMAL, gatewayIdleTimeoutSeconds: '0' }, 'gatewayIdleTimeoutSeconds', /between 1 and 86400/);
      expectInvalid({ ...MINIMAL, gatewayPushIntervalSeconds: 'often' }, 'gatewayPushIntervalSeconds', /whole number/);
      expectInvalid({ ...MINIMAL, hostHealthIntervalSeconds: '0' }, 'hostHealthIntervalSeconds', /between 1 and 3600/);
      expectInvalid({ ...MINIMAL, dnsWildcard: '1' }, 'dnsWildcard');
      expectInvalid({ ...MINIMAL, powerDnsAdminUrl: 'ftp://x' }, 'powerDnsAdminUrl');
      expectInvalid({ ...MINIMAL, powerDnsApiHostPort: '0' }, 'powerDnsAdminUrl', /required when demiurge:powerDnsApiHostPort is 0/);
    });

    it('collects every problem, not just the first', () => {
      let err: unknown;
      try {
        parseStackConfig({
          envName: 'Bad_Name',
          domain: 'nodots',
          publicIp: '999.1.1.1',
          gatewayPoolSize: '0',
          tlsMode: 'letsencrypt',
          gatewayVpnPortBase: '7100',
        });
      } catch (e) {
        err = e;
      }
      assert.ok(err instanceof StackConfigError);
      const keys = new Set(err.issues.map((i) => i.key));
      for (const k of ['envName', 'domain', 'publicIp', 'gatewayPoolSize', 'acmeEmail', 'gatewayVpnPortBase']) {
        assert.ok(keys.has(k), `missing issue for ${k}:\n${err.message}`);
      }
      assert.match(err.message, /^Invalid stack configuration for project "demiurge" \(\d+ problems\); no resources were declared:/);
    });
  });
});

describe('stack files', () => {
  it('are flat config maps within the project namespace, without secure values', () => {
    for (const stack of ['dev', 'prod']) {
      const parsed = readStackYaml(path.join(ROOT, `Pulumi.${stack}.yaml`));
      assert.deepEqual(parsed.secureKeys, []);
      assert.ok(Object.keys(parsed.config).length > 5);
    }
  });

  it('the tiny YAML reader handles quoting, comments and secure values', () => {
    const parsed = parseStackYaml(
      [
        'encryptionsalt: v1:abc',
        'config:',
        '  # comment',
        '  demiurge:a: plain value # trailing',
        "  demiurge:b: '[{\"x\": 1}]'",
        '  demiurge:c: "7100"',
        '  demiurge:secret:',
        '    secure: v1:AAAA',
        "  demiurge:d: 'it''s'",
      ].join('\n'),
    );
    assert.deepEqual(parsed.config, { 'demiurge:a': 'plain value', 'demiurge:b': '[{"x": 1}]', 'demiurge:c': '7100', 'demiurge:d': "it's" });
    assert.deepEqual(parsed.secureKeys, ['demiurge:secret']);
  });

  it('Pulumi.yaml names the project demiurge, TypeScript, and a local file backend', () => {
    const text = fs.readFileSync(path.join(ROOT, 'Pulumi.yaml'), 'utf8');
    assert.match(text, /^name: demiurge$/m);
    assert.match(text, /^ {2}name: nodejs$/m);
    assert.match(text, /^ {4}typescript: true$/m);
    assert.match(text, /^ {2}url: file:\/\//m);
  });
});

describe('docs/deploying.md configuration reference', () => {
  it('documents exactly the keys of stack/config.ts with their defaults', () => {
    const readme = fs.readFileSync(path.join(ROOT, 'docs/deploying.md'), 'utf8');
    const section = /<!-- BEGIN pulumi -->([\s\S]*?)<!-- END pulumi -->/.exec(readme);
    assert.ok(section, 'docs/deploying.md has no pulumi section');
    const ref = /\n## Configuration reference([\s\S]*?)\n## /.exec(section[1]);
    assert.ok(ref, 'no "Configuration reference" subsection');
    const rows = new Map<string, string>();
    for (const line of ref[1].split('\n')) {
      const m = /^\| `demiurge:([A-Za-z0-9]+)` \| ([^|]*) \|/.exec(line);
      if (m) rows.set(m[1], m[2].trim());
    }
    assert.deepEqual([...rows.keys()].sort(), Object.keys(CONFIG_KEYS).sort());
    for (const [key, dflt] of Object.entries(CONFIG_KEYS)) {
      assert.ok(rows.get(key)?.includes(dflt), `docs/deploying.md default of ${key} should read ${dflt}, is ${rows.get(key)}`);
    }
  });
});
