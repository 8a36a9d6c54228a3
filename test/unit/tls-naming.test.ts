import { strict as assert } from 'assert';
import { randomBytes, randomUUID } from 'crypto';
import {
  MAX_DNS_LABEL,
  certificateNameCovers,
  compactId,
  orgCertificateNames,
  orgDnsNames,
  parseOrgHostname,
  userContainerFqdn,
  uuidOfCompactId,
} from '../../runtime/naming';
import { orgCertFileName, orgIdOfCertFile, renderOrgsConf, renderRoutesJs, type Stage1RenderOptions } from '../../runtime/nginx-config';
import { decryptPrivateKey, encryptPrivateKey, parseEncryptionKey } from '../../runtime/tls/org-certificates';
import { AllocatorError } from '../../runtime/errors';

const org = 'a3bb189e-8bf9-3888-9912-ace4e6543002';
const domain = 'dev.example.test';

describe('user-container naming (nested / flat) and per-org certificate names', () => {
  it('compactId is a 26-character base32 round trip of a UUID', () => {
    for (const id of [org, '00000000-0000-0000-0000-000000000000', 'ffffffff-ffff-ffff-ffff-ffffffffffff', ...Array.from({ length: 200 }, () => randomUUID())]) {
      const c = compactId(id);
      assert.match(c, /^[a-z2-7]{26}$/);
      assert.equal(uuidOfCompactId(c), id);
    }
    assert.throws(() => compactId(org.toUpperCase()), RangeError);
    // The last character carries 3 bits: a token with the 2 padding bits set is not canonical.
    assert.equal(uuidOfCompactId(`${compactId(org).slice(0, 25)}b`), undefined);
    assert.equal(uuidOfCompactId('short'), undefined);
  });

  it('nested names are uc-<id>.org-<uuid>.<domain>', () => {
    assert.equal(userContainerFqdn('abc', org, domain), `uc-abc.org-${org}.${domain}`);
    assert.equal(userContainerFqdn('abc', org, domain, 'nested'), `uc-abc.org-${org}.${domain}`);
  });

  it('flat names are one label (≤ 63 characters) even for two UUIDs', () => {
    const uc = randomUUID();
    // Two canonical UUIDs would need 81 characters in one label.
    assert.ok(`uc-${uc}--org-${org}`.length > MAX_DNS_LABEL);
    const name = userContainerFqdn(uc, org, domain, 'flat');
    assert.equal(name, `uc-${compactId(uc)}--org-${compactId(org)}.${domain}`);
    const label = name.split('.')[0];
    assert.ok(label.length <= MAX_DNS_LABEL, `${label.length}`);
    assert.equal(userContainerFqdn('abc', org, domain, 'flat'), `uc-abc--org-${compactId(org)}.${domain}`);
    assert.throws(() => userContainerFqdn('x'.repeat(40), org, domain, 'flat'), /DNS allows 63/);
    assert.throws(() => userContainerFqdn('a--b', org, domain, 'flat'), RangeError);
    assert.throws(() => userContainerFqdn('abc', 'nope', domain, 'flat'), RangeError);
  });

  it('parseOrgHostname reads every form back, and nothing else', () => {
    const uc = randomUUID();
    assert.deepEqual(parseOrgHostname(`org-${org}.${domain}`, domain), { orgId: org });
    assert.deepEqual(parseOrgHostname(`ORG-${org.toUpperCase()}.${domain}.`, domain), { orgId: org });
    assert.deepEqual(parseOrgHostname(`uc-abc.org-${org}.${domain}`, domain), { orgId: org, userContainerId: 'abc', naming: 'nested' });
    assert.deepEqual(parseOrgHostname(userContainerFqdn(uc, org, domain, 'flat'), domain), { orgId: org, userContainerId: uc, naming: 'flat' });
    assert.deepEqual(parseOrgHostname(`uc-abc--org-${org}.${domain}`, domain), { orgId: org, userContainerId: 'abc', naming: 'flat' });
    for (const bad of [
      `org-${org}.other.test`,
      `a.b.org-${org}.${domain}`,
      `x-abc.org-${org}.${domain}`,
      `uc-abc--org-${org.slice(1)}.${domain}`,
      `uc-abc--org-${compactId(org)}.sub.${domain}`,
      `org-${org}x.${domain}`,
      domain,
    ]) {
      assert.equal(parseOrgHostname(bad, domain), undefined, bad);
    }
  });

  it('only flat names are covered by the base wildcard; nested ones need the org certificate', () => {
    const base = [domain, `*.${domain}`];
    const covered = (names: string[], host: string): boolean => names.some((n) => certificateNameCovers(n, host));
    assert.ok(covered(base, `org-${org}.${domain}`));
    assert.ok(covered(base, userContainerFqdn(randomUUID(), org, domain, 'flat')));
    assert.ok(!covered(base, userContainerFqdn('abc', org, domain, 'nested')), 'a wildcard covers exactly one label');
    const orgCert = orgCertificateNames(org, domain);
    assert.deepEqual(orgCert, [`org-${org}.${domain}`, `*.org-${org}.${domain}`]);
    assert.ok(covered(orgCert, userContainerFqdn('abc', org, domain, 'nested')));
    assert.ok(!covered(orgCert, `a.uc-abc.org-${org}.${domain}`));
  });

  it('DNS: nested publishes the org wildcard, flat only the org name', () => {
    assert.deepEqual(orgDnsNames(org, domain), [`org-${org}.${domain}`, `*.org-${org}.${domain}`]);
    assert.deepEqual(orgDnsNames(org, domain, 'flat'), [`org-${org}.${domain}`]);
  });
});

describe('stage-1 rendering with per-org certificates and flat names', () => {
  const base: Stage1RenderOptions = { confDir: '/etc/nginx/demiurge', domain, listen: '443 ssl', certPath: '/tls/fullchain.pem', keyPath: '/tls/privkey.pem', statusListen: '127.0.0.1:8099' };

  /** The org server's server_name regex, as a JS RegExp (the constructs used are PCRE-compatible). */
  function serverNameRe(conf: string): RegExp {
    const m = /server_name "~([^"]+)";/.exec(conf);
    assert.ok(m);
    return new RegExp(m[1]);
  }

  it('without per-org certificates the base certificate stays static (loaded at reload)', () => {
    const conf = renderOrgsConf(base);
    assert.match(conf, /ssl_certificate \/tls\/fullchain\.pem;/);
    assert.match(conf, /ssl_certificate_key \/tls\/privkey\.pem;/);
    assert.doesNotMatch(conf, /tlsOrg/);
    assert.doesNotMatch(renderRoutesJs(base), /tlsOrg|CERTS/);
  });

  it('with per-org certificates, one js_set decides per handshake and both maps follow it', () => {
    const o = { ...base, orgCertDir: '/etc/nginx/demiurge/certs' };
    const conf = renderOrgsConf(o);
    assert.match(conf, /js_set \$demiurge_tls_org demiurge_routes\.tlsOrg;/);
    assert.match(conf, /map \$demiurge_tls_org \$demiurge_ssl_certificate \{\n\s+"" \/tls\/fullchain\.pem;\n\s+default \/etc\/nginx\/demiurge\/certs\/org-\$demiurge_tls_org\.pem;/);
    assert.match(conf, /map \$demiurge_tls_org \$demiurge_ssl_certificate_key \{\n\s+"" \/tls\/privkey\.pem;\n\s+default \/etc\/nginx\/demiurge\/certs\/org-\$demiurge_tls_org\.pem;/);
    assert.match(conf, /ssl_certificate \$demiurge_ssl_certificate;/);
    assert.match(conf, /ssl_certificate_key \$demiurge_ssl_certificate_key;/);
    const js = renderRoutesJs(o);
    assert.match(js, /function tlsOrg\(r\)/);
    assert.match(js, /export default \{ noGateway: noGateway, gatewayDown: gatewayDown, tlsOrg: tlsOrg \}/);
    // The status server (Lua) reports what the answering worker can read.
    assert.match(conf, /"base":' \.\. tostring\(readable\(BASE_CERT\) and readable\(BASE_KEY\)\) \.\. ',"pid":' \.\. ngx\.worker\.pid\(\)/);
    assert.match(conf, /local CERTS, BASE_CERT, BASE_KEY = "\/etc\/nginx\/demiurge\/certs\/", "\/tls\/fullchain\.pem", "\/tls\/privkey\.pem"/);
    assert.match(renderOrgsConf(base), /local CERTS, BASE_CERT, BASE_KEY = nil, nil, nil/);
    assert.notEqual(renderOrgsConf(base), conf);
  });

  it('certificate bundle files round-trip their organization id', () => {
    assert.equal(orgIdOfCertFile(orgCertFileName(org)), org);
    assert.equal(orgIdOfCertFile(`org-${org}.pem.tmp-1-x`), undefined);
    assert.equal(orgIdOfCertFile('org-../../x.pem'), undefined);
  });

  it('nested server_name accepts org and nested names only; flat adds uc-…--org-<uuid|compact>', () => {
    const nested = serverNameRe(renderOrgsConf(base));
    const flat = serverNameRe(renderOrgsConf({ ...base, naming: 'flat' }));
    const flatName = userContainerFqdn(randomUUID(), org, domain, 'flat');
    for (const re of [nested, flat]) {
      assert.ok(re.test(`org-${org}.${domain}`));
      assert.ok(re.test(`uc-abc.org-${org}.${domain}`));
      assert.ok(!re.test(`org-${org}.other.test`));
    }
    assert.ok(!nested.test(flatName));
    assert.ok(flat.test(flatName));
    assert.ok(flat.test(`uc-abc--org-${org}.${domain}`));
    assert.ok(!flat.test(`uc-abc--org-${compactId(org).slice(1)}.${domain}`));
    const map = /"~\^\[a-z0-9-\]\+--org-\(\?<demiurge_oid>([^"]+)\)\\\.dev/.exec(renderOrgsConf({ ...base, naming: 'flat' }));
    assert.ok(map, 'the flat map entry captures the org token');
  });

  it("njs's compact-id decoder agrees with naming.uuidOfCompactId", () => {
    const js = renderRoutesJs({ ...base, naming: 'flat' });
    const src = /var B32 = [^\n]+\nfunction uuidOf\(token\) \{[\s\S]+?\n\}\n/.exec(js)?.[0];
    assert.ok(src, 'decoder rendered');
    const uuidOf = new Function(`${src}; return uuidOf;`)() as (t: string) => string;
    for (let i = 0; i < 200; i++) {
      const id = randomUUID();
      assert.equal(uuidOf(compactId(id)), id);
    }
    assert.match(js, /if \(id\.length === 26\) id = uuidOf\(id\);/);
  });
});

describe('private keys at rest', () => {
  it('accepts 32-byte keys as Buffer, hex or base64(url), nothing else', () => {
    const k = randomBytes(32);
    assert.deepEqual(parseEncryptionKey(k), k);
    assert.deepEqual(parseEncryptionKey(k.toString('hex')), k);
    assert.deepEqual(parseEncryptionKey(k.toString('base64')), k);
    assert.deepEqual(parseEncryptionKey(k.toString('base64url')), k);
    for (const bad of ['', 'password', randomBytes(16).toString('hex'), randomBytes(31)]) {
      assert.throws(() => parseEncryptionKey(bad), (e: unknown) => e instanceof AllocatorError && e.code === 'INVALID_CONFIG');
    }
  });

  it('AES-256-GCM: round trip, key id picks the right key, organization bound, tampering detected', () => {
    const [k1, k2] = [randomBytes(32), randomBytes(32)];
    const pem = '-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n';
    const blob = encryptPrivateKey(k1, org, pem);
    assert.ok(!blob.toString('latin1').includes('PRIVATE KEY'));
    assert.deepEqual(decryptPrivateKey([k1], org, blob), { keyPem: pem, keyIndex: 0 });
    assert.deepEqual(decryptPrivateKey([k2, k1], org, blob), { keyPem: pem, keyIndex: 1 }, 'rotation: an older key still decrypts');
    assert.throws(() => decryptPrivateKey([k2], org, blob), /not configured/);
    assert.throws(() => decryptPrivateKey([k1], randomUUID(), blob));
    const tampered = Buffer.from(blob);
    tampered[tampered.length - 1] ^= 1;
    assert.throws(() => decryptPrivateKey([k1], org, tampered));
    assert.notDeepEqual(encryptPrivateKey(k1, org, pem), blob, 'a fresh nonce every time');
  });
});
