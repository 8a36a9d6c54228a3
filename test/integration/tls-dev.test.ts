/**
 * Acceptance 2 of issue #6, for real: PostgreSQL, PowerDNS and a stage-1 nginx
 * choosing the certificate per TLS handshake. After allocate() resolves,
 *
 *   curl --cacert <dev CA> --resolve uc-abc.org-<uuid>.<domain>:<port>:127.0.0.1 https://uc-abc.org-<uuid>.<domain>:<port>/
 *
 * verifies without -k (the per-organization certificate minted from the dev
 * CA) and reaches the organization's gateway. Also: reuse of the stored
 * certificate (same serial) after release, the key encrypted at rest, the
 * pending state of a background (ACME-like) issuer serving the base
 * certificate, back-off, reconcile repairs, and the flat naming switch.
 */
import { strict as assert } from 'assert';
import { execFile, execFileSync } from 'child_process';
import { randomBytes } from 'crypto';
import { chmodSync, chownSync, existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'fs';
import * as path from 'path';
import * as tls from 'tls';
import { Pool } from 'pg';
import { GatewayAllocator, GatewayAllocatorOptions, OrgCertificates, isAllocatorError, naming } from '../../runtime';
import { DevCaIssuer } from '../../runtime/tls/dev-ca-issuer';
import { decryptPrivateKey } from '../../runtime/tls/org-certificates';
import type { CertificateIssuer, IssuedCertificate } from '../../runtime/tls/types';
import { createZone, gatewayHost, randomOrg, startStandInGateways, suiteId, zoneRRsets } from '../helpers/fixtures';
import { freePorts } from '../helpers/ports';
import { TestServices, requireServices } from '../helpers/services';
import { waitFor } from '../helpers/wait-for';
import { Stage1Nginx, curlThroughStage1 } from '../helpers/stage1-nginx';
import { testAllocatorOptions } from '../helpers/allocator-settings';
import { removeZoneAndSchemas } from '../helpers/suite-setup';

interface Served {
  serial: string;
  sans: string[];
  authorized: boolean;
  error?: string;
}

/** The certificate nginx serves for an SNI name, and whether it verifies against the suite CA for that name. */
function served(nginx: Stage1Nginx, servername: string): Promise<Served> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port: nginx.httpsPort, servername, ca: readFileSync(nginx.caFile), rejectUnauthorized: false }, () => {
      const cert = socket.getPeerCertificate();
      const sans = (cert.subjectaltname ?? '').split(/,\s*/).filter((n) => n.startsWith('DNS:')).map((n) => n.slice(4));
      // Node's checkServerIdentity applies RFC 6125 like curl: the hostname must match a SAN.
      const identity = tls.checkServerIdentity(servername, cert);
      resolve({
        serial: cert.serialNumber.toLowerCase(),
        sans,
        authorized: socket.authorized && identity === undefined,
        error: socket.authorizationError ? String(socket.authorizationError) : identity?.message,
      });
      socket.end();
    });
    socket.on('error', reject);
  });
}

/** curl as in the acceptance criterion; resolves with curl's exit code (60: certificate does not verify). */
function curlExit(nginx: Stage1Nginx, hostname: string): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      'curl',
      ['-sS', '-o', '/dev/null', '--max-time', '5', '--cacert', nginx.caFile, '--resolve', `${hostname}:${nginx.httpsPort}:127.0.0.1`, `https://${hostname}:${nginx.httpsPort}/`],
      (err, _stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stderr }),
    );
  });
}

function baseSerial(nginx: Stage1Nginx): string {
  return execFileSync('openssl', ['x509', '-noout', '-serial', '-in', nginx.certFile]).toString().trim().replace(/^serial=/, '').toLowerCase();
}

function uidOf(user: string): { uid: number; gid: number } {
  return { uid: Number(execFileSync('id', ['-u', user]).toString()), gid: Number(execFileSync('id', ['-g', user]).toString()) };
}

function median(values: number[]): number {
  const v = [...values].sort((a, b) => a - b);
  return v[Math.floor(v.length / 2)];
}

/** An ACME-like issuer for the pending state: each order waits until the test lets it go, then mints from the dev CA. */
class GatedIssuer implements CertificateIssuer {
  readonly kind = 'acme' as const;
  calls = 0;
  failWith?: Error & { retryAfter?: Date };
  private gates: Array<() => void> = [];
  constructor(private readonly inner: DevCaIssuer) {}
  async issue(names: string[], opts?: { signal?: AbortSignal }): Promise<IssuedCertificate> {
    this.calls += 1;
    if (this.failWith) throw this.failWith;
    await new Promise<void>((resolve) => this.gates.push(resolve));
    return this.inner.issue(names, opts);
  }
  open(): void {
    this.gates.splice(0).forEach((g) => g());
  }
  get waiting(): number {
    return this.gates.length;
  }
}

describe('per-organization certificates, dev CA (real PostgreSQL, PowerDNS, nginx)', function () {
  this.timeout(180_000);
  let s: TestServices;
  let nginx: Stage1Nginx;
  let flatNginx: Stage1Nginx;
  let standIn: { port: number; close: () => Promise<void> };
  let domain: string;
  let devCa: DevCaIssuer;
  let pgAdmin: Pool;
  const schemas: string[] = [];
  const open: Array<{ close: () => Promise<void> }> = [];
  let envCounter = 0;

  before(async function () {
    s = requireServices(this);
    domain = `tls-${suiteId()}.test`;
    await createZone(s, domain);
    const [httpsPort, statusPort, flatHttpsPort, flatStatusPort] = await freePorts(4);
    nginx = new Stage1Nginx(domain, httpsPort, statusPort);
    nginx.start();
    // A second stage-1 nginx for the flat scheme (its base configuration differs).
    flatNginx = new Stage1Nginx(domain, flatHttpsPort, flatStatusPort);
    flatNginx.start();
    standIn = await startStandInGateways();
    devCa = new DevCaIssuer({ caroot: path.dirname(nginx.caFile) });
    pgAdmin = new Pool({ connectionString: s.pgUrl, max: 2 });
  });

  after(async () => {
    for (const o of open.reverse()) await o.close().catch(() => undefined);
    await standIn?.close();
    await devCa?.close();
    nginx?.destroy();
    flatNginx?.destroy();
    await removeZoneAndSchemas(s, domain, schemas);
    await pgAdmin?.end();
  });

  async function freshPool(
    n: number,
    opts: { certificates?: OrgCertificates; nginx?: Stage1Nginx; extra?: Partial<GatewayAllocatorOptions> } = {},
  ): Promise<{ allocator: GatewayAllocator; schema: string; env: string }> {
    envCounter += 1;
    const env = `tls${envCounter}`;
    const schema = `tls_${suiteId()}`;
    schemas.push(schema);
    const allocator = new GatewayAllocator({
      ...testAllocatorOptions(s, opts.nginx ?? nginx, { env, domain, schema }),
      certificates: opts.certificates,
      ...opts.extra,
    });
    open.push(allocator);
    await allocator.migrate();
    const inventory = Array.from({ length: n }, (_, i) => ({ name: `gw-pool-${env}-${i}`, host: gatewayHost(i), httpPort: standIn.port, vpnPort: 49100 + i }));
    await allocator.registerGateways(inventory);
    await allocator.markReady(inventory.map((g) => g.name));
    return { allocator, schema, env };
  }

  function devCertificates(key: Buffer = randomBytes(32)): OrgCertificates {
    const certs = new OrgCertificates({ issuer: devCa, encryptionKey: key, logger: null });
    open.push(certs);
    return certs;
  }

  const certFile = (org: string): string => path.join(nginx.confDir, 'certs', `org-${org}.pem`);

  /** With per-org certificates nginx loads the base pair in its workers (user nobody) per handshake: they must read the key. */
  function workersReadBaseKey(): void {
    const worker = uidOf('nobody');
    chownSync(nginx.keyFile, worker.uid, worker.gid);
  }

  beforeEach(() => {
    workersReadBaseKey();
  });

  it('mints a leaf from the dev CA in milliseconds', async () => {
    const org = randomOrg();
    const names = naming.orgCertificateNames(org, domain);
    const times: number[] = [];
    let last: IssuedCertificate | undefined;
    for (let i = 0; i < 15; i++) {
      const t = process.hrtime.bigint();
      last = await devCa.issue(names);
      times.push(Number(process.hrtime.bigint() - t) / 1e6);
    }
    const cert = last as IssuedCertificate;
    assert.deepEqual(cert.names, names);
    assert.match(cert.keyPem, /BEGIN PRIVATE KEY/);
    const text = execFileSync('openssl', ['x509', '-noout', '-text'], { input: cert.certPem }).toString();
    assert.match(text, /CA:FALSE/);
    assert.match(text, /ASN1 OID: prime256v1/);
    assert.match(text, new RegExp(`DNS:org-${org}\\.${domain.replace(/\./g, '\\.')}, DNS:\\*\\.org-${org}\\.`));
    execFileSync('openssl', ['verify', '-CAfile', nginx.caFile], { input: cert.certPem });
    console.log(`      dev-CA mint (openssl req -x509 -CA, EC P-256): median ${median(times).toFixed(1)} ms, min ${Math.min(...times).toFixed(1)} ms, max ${Math.max(...times).toFixed(1)} ms over ${times.length}`);
    assert.ok(median(times) < 500, `mint takes ${median(times)} ms`);
  });

  it('refuses to serve per-org certificates while the workers cannot read the base key (nginx loads it per handshake)', async () => {
    // Set-up: the base key as mkcert writes it, 0600 root; nginx's workers run as nobody.
    chownSync(nginx.keyFile, 0, 0);
    chmodSync(nginx.keyFile, 0o600);
    try {
      const { allocator } = await freshPool(1, { certificates: devCertificates() });
      await assert.rejects(allocator.allocate(randomOrg()), (e: unknown) => isAllocatorError(e, 'NGINX_FAILED') && /cannot read the base certificate/.test(e.message));
    } finally {
      workersReadBaseKey();
    }
  });

  describe('nested naming with the dev CA', () => {
    let allocator: GatewayAllocator;
    let certs: OrgCertificates;
    let schema: string;
    let env: string;
    let key: Buffer;

    before(async () => {
      key = randomBytes(32);
      certs = devCertificates(key);
      ({ allocator, schema, env } = await freshPool(4, { certificates: certs }));
    });

    it('acceptance 2: after allocate, curl --cacert <dev CA> https://uc-abc.org-<uuid>.<domain>/ verifies without -k and reaches the gateway', async () => {
      const org = randomOrg();
      const t = Date.now();
      const gw = await allocator.allocate(org);
      const allocMs = Date.now() - t;
      assert.equal(gw.certificate, 'ready');
      // Made the moment allocate resolved: certificate and route must both be live.
      const uc = await curlThroughStage1(nginx, `uc-abc.org-${org}.${domain}`, '/');
      assert.equal(uc.status, 200, uc.body);
      assert.equal(JSON.parse(uc.body).gatewayAddress, gw.host);
      assert.equal(JSON.parse(uc.body).host, `uc-abc.org-${org}.${domain}`);
      const apex = await curlThroughStage1(nginx, `org-${org}.${domain}`, '/');
      assert.equal(apex.status, 200, apex.body);
      assert.equal(JSON.parse(apex.body).gatewayAddress, gw.host);

      const leaf = await served(nginx, `uc-abc.org-${org}.${domain}`);
      assert.ok(leaf.authorized, leaf.error);
      assert.deepEqual(leaf.sans, [`org-${org}.${domain}`, `*.org-${org}.${domain}`]);
      assert.equal((await certs.status(org)).serial, leaf.serial);
      // Another organization's name still gets the base certificate.
      assert.equal((await served(nginx, `org-${randomOrg()}.${domain}`)).serial, baseSerial(nginx));

      const file = statSync(certFile(org));
      assert.equal(file.mode & 0o777, 0o600, 'the bundle holds a private key');
      assert.equal(file.uid, uidOf('nobody').uid, 'owned by the nginx worker user (detected through the status server)');
      console.log(`      allocate with a freshly minted certificate: ${allocMs} ms (issue ${(certs.issueMs / Math.max(1, certs.issuedCount)).toFixed(1)} ms avg)`);
    });

    it('reuses the stored certificate on later allocations (same serial), and a repeated allocate reports it ready', async () => {
      const org = randomOrg();
      const first = await allocator.allocate(org);
      const serial = (await served(nginx, `uc-x.org-${org}.${domain}`)).serial;
      const again = await allocator.allocate(org);
      assert.equal(again.created, false);
      assert.equal(again.certificate, 'ready');
      assert.equal((await allocator.getAllocation(org))?.certificate, 'ready');

      await allocator.release(org);
      assert.ok(!existsSync(certFile(org)), 'release removes the key file');
      const kept = await pgAdmin.query(`SELECT serial FROM "${schema}".org_certificates WHERE organization_id = $1`, [org]);
      assert.equal(kept.rows[0].serial, serial, 'and keeps the certificate in PostgreSQL');

      const issuedBefore = certs.issuedCount;
      const second = await allocator.allocate(org);
      assert.equal(second.created, true);
      assert.notEqual(second.allocationId, first.allocationId);
      assert.equal(second.certificate, 'ready');
      assert.equal(certs.issuedCount, issuedBefore, 'no new certificate was minted');
      const leaf = await served(nginx, `uc-x.org-${org}.${domain}`);
      assert.ok(leaf.authorized, leaf.error);
      assert.equal(leaf.serial, serial);
      await allocator.release(org);
    });

    it('keeps the private key encrypted at rest (AES-256-GCM, bound to the organization)', async () => {
      const org = randomOrg();
      await allocator.allocate(org);
      const { rows } = await pgAdmin.query(`SELECT organization_id::text AS org, cert_pem, key_encrypted FROM "${schema}".org_certificates WHERE organization_id = $1`, [org]);
      const blob: Buffer = rows[0].key_encrypted;
      assert.match(rows[0].cert_pem, /BEGIN CERTIFICATE/);
      assert.ok(!blob.toString('latin1').includes('PRIVATE KEY'), 'no PEM in the column');
      const bundle = readFileSync(certFile(org), 'utf8');
      const keyPem = /-----BEGIN PRIVATE KEY-----[\s\S]+?-----END PRIVATE KEY-----\n/.exec(bundle)?.[0] ?? '';
      const der = Buffer.from(keyPem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
      assert.ok(der.length > 100 && !blob.includes(der) && !blob.includes(Buffer.from(der.subarray(der.length - 40))), 'no DER of the key (nor its last 40 bytes) in the column either');
      assert.equal(decryptPrivateKey([key], org, blob).keyPem, keyPem, 'the configured key decrypts it');
      assert.throws(() => decryptPrivateKey([randomBytes(32)], org, blob), /not configured/);
      assert.throws(() => decryptPrivateKey([key], randomOrg(), blob), 'another organization cannot use the row');
      await allocator.release(org);
    });

    it('reconcile() rewrites a missing or altered bundle and removes bundles of organizations that hold no gateway', async () => {
      const org = randomOrg();
      await allocator.allocate(org);
      const good = readFileSync(certFile(org), 'utf8');
      rmSync(certFile(org));
      // Base certificate meanwhile: it covers org-<uuid> only.
      assert.equal((await curlExit(nginx, `uc-abc.org-${org}.${domain}`)).code, 60);
      const orphan = randomOrg();
      writeFileSync(path.join(nginx.confDir, 'certs', `org-${orphan}.pem`), `# owner=demiurge-allocator env=${env} org=${orphan}\n${good.split('\n').slice(1).join('\n')}`, { mode: 0o600 });
      const foreign = path.join(nginx.confDir, 'certs', `org-${randomOrg()}.pem`);
      writeFileSync(foreign, 'not ours\n', { mode: 0o600 });

      const report = await allocator.reconcile();
      assert.deepEqual(report.certificatesRepaired, [org]);
      assert.deepEqual(report.certificateOrphansRemoved, [orphan]);
      assert.deepEqual(report.errors, []);
      assert.equal(readFileSync(certFile(org), 'utf8'), good);
      assert.ok(!existsSync(path.join(nginx.confDir, 'certs', `org-${orphan}.pem`)));
      assert.ok(existsSync(foreign), 'a file without our owner line is never touched');
      rmSync(foreign);
      assert.equal((await curlExit(nginx, `uc-abc.org-${org}.${domain}`)).code, 0);
      assert.deepEqual((await allocator.reconcile()).certificatesRepaired, [], 'nothing left to repair');
      await allocator.release(org);
    });

    it('renews a certificate that is due (less than a third of its lifetime left) on the next allocation', async () => {
      const org = randomOrg();
      await allocator.allocate(org);
      const before = (await certs.status(org)).serial as string;
      await allocator.release(org);
      // Age it: 90-day certificate issued 70 days ago.
      await pgAdmin.query(`UPDATE "${schema}".org_certificates SET not_before = now() - interval '70 days', not_after = now() + interval '20 days' WHERE organization_id = $1`, [org]);
      const gw = await allocator.allocate(org);
      assert.equal(gw.certificate, 'ready');
      const after = await served(nginx, `org-${org}.${domain}`);
      assert.notEqual(after.serial, before);
      assert.equal((await certs.status(org)).serial, after.serial);
      await allocator.release(org);
    });

    it('measures the per-handshake cost of choosing the certificate per handshake', async () => {
      const org = randomOrg();
      await allocator.allocate(org);
      const pidFile = path.join(nginx.prefix, 'nginx.pid');
      const workers = execFileSync('pgrep', ['-P', readFileSync(pidFile, 'utf8').trim()]).toString().trim().split('\n');
      const cpuMs = (): number =>
        workers.reduce((sum, w) => {
          const f = readFileSync(`/proc/${w}/stat`, 'utf8').split(') ')[1].split(' ');
          return sum + ((Number(f[11]) + Number(f[12])) * 1000) / 100;
        }, 0);
      const handshake = (name: string): Promise<void> =>
        new Promise((resolve, reject) => {
          const sock = tls.connect({ host: '127.0.0.1', port: nginx.httpsPort, servername: name, ca: readFileSync(nginx.caFile) }, () => {
            sock.end();
            resolve();
          });
          sock.on('error', reject);
        });
      const measure = async (name: string): Promise<{ wall: number; cpu: number }> => {
        for (let i = 0; i < 10; i++) await handshake(name);
        const n = 200;
        const c0 = cpuMs();
        const t0 = process.hrtime.bigint();
        for (let i = 0; i < n; i++) await handshake(name);
        return { wall: Number(process.hrtime.bigint() - t0) / 1e6 / n, cpu: (cpuMs() - c0) / n };
      };
      const orgCert = await measure(`org-${org}.${domain}`);
      const base = await measure(`org-${randomOrg()}.${domain}`);
      console.log(
        `      full handshakes through the org server (certificate loaded per handshake): org EC cert ${orgCert.wall.toFixed(2)} ms wall / ${orgCert.cpu.toFixed(2)} ms nginx CPU, ` +
          `base RSA cert ${base.wall.toFixed(2)} ms / ${base.cpu.toFixed(2)} ms`,
      );
      await allocator.release(org);
    });
  });

  describe('background issuance (ACME-like, fake slow issuer)', () => {
    it('reports pending and serves the base certificate for org-<uuid> until the order completes, then the org certificate without a reload', async () => {
      const issuer = new GatedIssuer(devCa);
      const certs = new OrgCertificates({ issuer, encryptionKey: randomBytes(32), logger: null });
      open.push(certs);
      assert.equal(certs.issuance, 'background');
      const { allocator } = await freshPool(2, { certificates: certs });
      const org = randomOrg();
      const gw = await allocator.allocate(org);
      assert.equal(gw.certificate, 'pending');
      // Counted from here: the first allocation may have loaded the base configuration (if no earlier test did).
      const reloadsBefore = allocator.metrics().nginxReloads;
      await waitFor('the order to start', 10_000, async () => issuer.waiting === 1);
      const status = await certs.status(org);
      assert.equal(status.state, 'pending');
      assert.equal(status.issuing, true);

      // Pending: the base certificate, which covers org-<uuid>.<domain> (and routes), but not uc-….org-<uuid>.
      const apex = await served(nginx, `org-${org}.${domain}`);
      assert.equal(apex.serial, baseSerial(nginx));
      assert.ok(apex.authorized, apex.error);
      const res = await curlThroughStage1(nginx, `org-${org}.${domain}`, '/');
      assert.equal(JSON.parse(res.body).gatewayAddress, gw.host);
      assert.equal((await curlExit(nginx, `uc-abc.org-${org}.${domain}`)).code, 60, 'uc- names do not verify while pending');
      assert.equal((await allocator.allocate(org)).certificate, 'pending', 'a repeated allocate does not start a second order');
      assert.equal(issuer.calls, 1);

      issuer.open();
      await waitFor('the org certificate to be served', 10_000, async () => (await served(nginx, `uc-abc.org-${org}.${domain}`)).authorized);
      assert.equal((await curlExit(nginx, `uc-abc.org-${org}.${domain}`)).code, 0);
      assert.equal((await allocator.getAllocation(org))?.certificate, 'ready');
      assert.equal(allocator.metrics().nginxReloads, reloadsBefore, 'no reload');
      await allocator.release(org);
    });

    it('backs off after a failed order, honouring the retryAfter the issuer error carries', async () => {
      const issuer = new GatedIssuer(devCa);
      const certs = new OrgCertificates({ issuer, encryptionKey: randomBytes(32), logger: null, backoff: { initialMs: 60_000 } });
      open.push(certs);
      const { allocator } = await freshPool(1, { certificates: certs });
      const retryAfter = new Date(Date.now() + 3 * 3_600_000);
      issuer.failWith = Object.assign(new Error('urn:ietf:params:acme:error:rateLimited: too many certificates'), { retryAfter, kind: 'rateLimited' });
      const org = randomOrg();
      assert.equal((await allocator.allocate(org)).certificate, 'pending');
      await waitFor('the failure to be recorded', 10_000, async () => (await certs.status(org)).failures === 1);
      const st = await certs.status(org);
      assert.equal(st.rateLimited, true);
      assert.equal(st.retryAfter?.getTime(), retryAfter.getTime(), 'the later of our back-off and the server\'s time wins');
      assert.match(st.lastError ?? '', /rateLimited/);
      // Neither a repeated allocation nor reconcile() orders again before retryAfter.
      await allocator.allocate(org);
      const report = await allocator.reconcile();
      assert.deepEqual(report.certificatesStarted, []);
      await certs.idle();
      assert.equal(issuer.calls, 1);
      await allocator.release(org);
    });

    it('stops ordering NEW certificates when the budget is spent (renewals of stored names are not limited)', async () => {
      const issuer = new GatedIssuer(devCa);
      const certs = new OrgCertificates({ issuer, encryptionKey: randomBytes(32), logger: null, newCertificateBudget: { max: 1, windowMs: 3_600_000 } });
      open.push(certs);
      const { allocator } = await freshPool(2, { certificates: certs });
      const [a, b] = [randomOrg(), randomOrg()];
      await allocator.allocate(a);
      await waitFor('the first order', 10_000, async () => issuer.waiting === 1);
      issuer.open();
      await certs.idle();
      await allocator.allocate(b);
      await waitFor('the budget refusal', 10_000, async () => (await certs.status(b)).rateLimited);
      const st = await certs.status(b);
      assert.equal(st.state, 'pending');
      assert.match(st.lastError ?? '', /budget/);
      assert.ok((st.retryAfter?.getTime() ?? 0) > Date.now() + 50 * 60_000, 'retry when the window frees a slot');
      assert.equal(issuer.calls, 1);
      await allocator.release(a);
      await allocator.release(b);
    });
  });

  describe('flat naming (uc-<id>--org-<org>.<domain>, covered by the base wildcard)', () => {
    it('routes flat names to the gateway with the base certificate, publishes no per-org wildcard, needs no per-org certificate', async () => {
      const { allocator, env } = await freshPool(2, { nginx: flatNginx, extra: { userContainerNaming: 'flat' } });
      const org = randomOrg();
      const gw = await allocator.allocate(org);
      assert.equal(gw.certificate, 'none');

      for (const name of [`uc-abc--org-${org}.${domain}`, naming.userContainerFqdn(randomOrg(), org, domain, 'flat'), `org-${org}.${domain}`]) {
        const res = await curlThroughStage1(flatNginx, name, '/x');
        assert.equal(res.status, 200, `${name}: ${res.body}`);
        assert.equal(JSON.parse(res.body).gatewayAddress, gw.host, name);
        assert.equal(JSON.parse(res.body).host, name);
        assert.equal((await served(flatNginx, name)).serial, baseSerial(flatNginx), `${name} is served the base certificate`);
      }
      // Another organization's flat name: the base certificate, but no gateway.
      assert.equal((await curlThroughStage1(flatNginx, `uc-abc--org-${randomOrg()}.${domain}`, '/')).status, 404);

      const owned = (await zoneRRsets(s, domain)).filter((r) => r.comments.some((c) => c.content.includes(`env=${env} `))).map((r) => r.name);
      assert.deepEqual(owned, [`org-${org}.${domain}.`]);
      const conf = readFileSync(path.join(flatNginx.confDir, 'demiurge-orgs.conf'), 'utf8');
      assert.match(conf, /ssl_certificate \/.*cert\.pem;/, 'the base certificate is loaded at reload, not per handshake');
      assert.deepEqual((await allocator.reconcile()).dnsRepaired, [], 'one record is what flat naming wants');
      await allocator.release(org);
      assert.deepEqual((await zoneRRsets(s, domain)).filter((r) => r.comments.some((c) => c.content.includes(`env=${env} `))), []);
    });

    it('rejects certificates together with flat naming', () => {
      assert.throws(
        () =>
          new GatewayAllocator({
            envName: 'flatx',
            domain,
            publicIp: '127.0.0.1',
            pg: { connectionString: s.pgUrl },
            powerdns: { apiUrl: s.pdnsApiUrl, apiKey: s.pdnsApiKey, zone: domain },
            nginx: flatNginx.nginxOptions(),
            userContainerNaming: 'flat',
            certificates: new OrgCertificates({ issuer: devCa, encryptionKey: randomBytes(32) }),
          }),
        (e: unknown) => isAllocatorError(e, 'INVALID_CONFIG') && /flat/.test(e.message),
      );
    });
  });
});
