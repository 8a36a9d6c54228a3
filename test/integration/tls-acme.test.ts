/**
 * The production TLS path, for real: Pebble (Let's Encrypt's ACME test
 * server) validates DNS-01 by asking the test PowerDNS, our AcmeIssuer has
 * lego write the challenges through the PowerDNS API, and a real nginx serves
 * the results.
 *
 *  1. base certificate (<domain> + *.<domain>) and a per-organization one
 *     (org-<uuid>.<domain> + *.org-<uuid>.<domain>), both values of each
 *     `_acme-challenge` rrset present at once, challenge records gone
 *     afterwards, served by nginx and verified with `openssl s_client
 *     -verify_return_error` against Pebble's root;
 *  2. why not lego's own pdns provider: it deletes the whole rrset at clean-up;
 *  3. renewal of a short-lived base certificate (a second Pebble issuing
 *     60-second certificates) by the renewal CLI, nginx reloaded while an
 *     HTTPS request is in flight, which completes.
 */
import { strict as assert } from 'assert';
import { execFile, execFileSync, spawn } from 'child_process';
import { randomBytes } from 'crypto';
import { chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'fs';
import * as http from 'http';
import * as https from 'https';
import type { AddressInfo } from 'net';
import * as os from 'os';
import * as path from 'path';
import { Pool } from 'pg';
import { GatewayAllocator, OrgCertificates } from '../../runtime';
import { AcmeIssuer, isAcmeIssueError, type ChallengeEvent } from '../../runtime/tls/acme-issuer';
import { ChallengeDns } from '../../runtime/tls/dns-challenge';
import { certificateInfo } from '../../runtime/tls/pem';
import { renewBaseCertificate, renewalDue, readInstalled, servedFingerprint } from '../../runtime/tls/renew';
import type { CertificateIssuer, IssuedCertificate } from '../../runtime/tls/types';
import { createZone, deleteZone, dropSchema, gatewayHost, patchZone, randomOrg, startStandInGateways, suiteId, zoneRRsets } from '../helpers/fixtures';
import { Pebble, ensureDebianPackage } from '../helpers/pebble';
import { freePorts } from '../helpers/ports';
import { requireServices, type TestServices } from '../helpers/services';
import { Stage1Nginx } from '../helpers/stage1-nginx';
import { waitFor } from '../helpers/wait-for';
import { testAllocatorOptions } from '../helpers/allocator-settings';

/** The stage-1 nginx's HTTPS port, chosen in the suite's before hook. */
let httpsPort = 0;
const REPO = path.resolve(__dirname, '..', '..');

function sh(cmd: string, args: string[], input?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { timeout: 60_000, maxBuffer: 4 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? Number((err as { code: number }).code) : 1;
      resolve({ code, stdout, stderr });
    });
    child.stdin?.end(input ?? '');
  });
}

/** `openssl s_client` as a user would run it: SNI, full verification against a CA file, the leaf's SANs. */
async function sClient(servername: string, caFile: string): Promise<{ verified: boolean; sans: string[]; output: string }> {
  const r = await sh('openssl', ['s_client', '-connect', `127.0.0.1:${httpsPort}`, '-servername', servername, '-verify_return_error', '-verify_hostname', servername, '-CAfile', caFile, '-showcerts']);
  const leaf = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(r.stdout)?.[0];
  let sans: string[] = [];
  if (leaf !== undefined) {
    const x = await sh('openssl', ['x509', '-noout', '-ext', 'subjectAltName'], leaf);
    sans = [...x.stdout.matchAll(/DNS:([^,\s]+)/g)].map((m) => m[1]);
  }
  return { verified: r.code === 0 && /Verify return code: 0 \(ok\)/.test(r.stdout), sans, output: `${r.stdout}\n${r.stderr}` };
}

/** TXT values at a name, asked over DNS from the test PowerDNS (what Pebble sees). */
async function digTxt(port: number, name: string): Promise<string[]> {
  const r = await sh('dig', ['@127.0.0.1', '-p', String(port), '+short', '+tries=1', '+time=2', 'TXT', name]);
  return r.stdout.split('\n').map((l) => l.trim().replace(/^"(.*)"$/, '$1')).filter(Boolean);
}

/** uid (or with '-g' gid) of nginx's worker user in the test nginx. */
function nobodyUid(flag: '-u' | '-g' = '-u'): number {
  return Number(execFileSync('id', [flag, 'nobody']).toString());
}

/** Memoizes a set-up step: whichever test needs it first runs it, the others reuse its result. */
function once<T>(step: () => Promise<T>): () => Promise<T> {
  let done: Promise<T> | undefined;
  return () => (done ??= step());
}

/**
 * Wraps the ACME issuer so a test decides when an organization's order may
 * go to the CA: the pending state is then observed for as long as the test
 * needs, not for as long as Pebble happens to take.
 */
class HeldIssuer implements CertificateIssuer {
  readonly kind = 'acme' as const;
  private readonly gates = new Map<string, { open: Promise<void>; release: () => void; refuse: (err: Error) => void }>();
  constructor(private readonly inner: AcmeIssuer) {}
  private gate(name: string): { open: Promise<void>; release: () => void; refuse: (err: Error) => void } {
    let g = this.gates.get(name);
    if (g === undefined) {
      let release = (): void => undefined;
      let refuse = (_err: Error): void => undefined;
      const open = new Promise<void>((res, rej) => {
        release = res;
        refuse = rej;
      });
      open.catch(() => undefined);
      g = { open, release, refuse };
      this.gates.set(name, g);
    }
    return g;
  }
  async issue(names: string[], opts?: { signal?: AbortSignal }): Promise<IssuedCertificate> {
    await this.gate(names[0]).open;
    return this.inner.issue(names, opts);
  }
  /** Lets the order whose first name is `name` go to the CA. */
  release(name: string): void {
    this.gate(name).release();
  }
  /** Fails that order without contacting the CA. */
  refuse(name: string, err: Error): void {
    this.gate(name).refuse(err);
  }
}

async function challengeRRsets(s: TestServices, domain: string): Promise<string[]> {
  return (await zoneRRsets(s, domain)).filter((r) => r.type === 'TXT' || r.name.startsWith('_acme-challenge')).map((r) => `${r.name} ${r.type} ${r.records.map((x) => x.content).join(' ')}`);
}

describe('TLS via ACME DNS-01 (Pebble, real PowerDNS, real nginx)', function () {
  this.timeout(240_000);
  let s: TestServices;
  let domain: string;
  let pebble: Pebble;
  let shortPebble: Pebble;
  let nginx: Stage1Nginx;
  let work: string;
  let upstream: http.Server;
  let upstreamPort: number;
  /** Requests the slow upstream holds until released. */
  const held: Array<() => void> = [];
  const issuers: AcmeIssuer[] = [];
  type SeenEvent = ChallengeEvent & { visible: string[] };
  const timings: Record<string, number> = {};
  const schemas: string[] = [];
  const closers: Array<{ close: () => Promise<void> }> = [];
  let standIn: { port: number; close: () => Promise<void> };
  let pg: Pool;
  const pgQuery = async (sql: string, params: unknown[]): Promise<Array<Record<string, unknown>>> => (await pg.query(sql, params)).rows;

  before(async function () {
    s = requireServices(this);
    ensureDebianPackage('lego', 'lego');
    domain = `acme-${suiteId()}.test`;
    await createZone(s, domain);
    work = mkdtempSync(path.join(os.tmpdir(), 'demiurge-tls-acme-'));
    const t0 = Date.now();
    const [acmePort, managementPort, shortAcmePort, shortManagementPort] = await freePorts(4);
    pebble = new Pebble({ acmePort, managementPort, dnsServer: `127.0.0.1:${s.pdnsDnsPort}` });
    shortPebble = new Pebble({ acmePort: shortAcmePort, managementPort: shortManagementPort, dnsServer: `127.0.0.1:${s.pdnsDnsPort}`, certificateValidityPeriod: 60 });
    await Promise.all([pebble.start(), shortPebble.start()]);
    timings.pebbleStart = Date.now() - t0;
    upstream = http.createServer((req, res) => {
      const answer = (): void => {
        res.setHeader('content-type', 'text/plain');
        res.end(`upstream ${req.headers.host} ${req.url}\n`);
      };
      if (req.url?.startsWith('/slow')) held.push(answer);
      else answer();
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    upstreamPort = (upstream.address() as AddressInfo).port;
    let statusPort: number;
    [httpsPort, statusPort] = await freePorts(2);
    nginx = new Stage1Nginx(domain, httpsPort, statusPort);
    nginx.start(); // no server blocks yet: every step writes its sites and reloads
    standIn = await startStandInGateways();
    pg = new Pool({ connectionString: s.pgUrl, max: 2 });
  });

  after(async () => {
    for (const c of closers.reverse()) await c.close().catch(() => undefined);
    for (const i of issuers) await i.close();
    await standIn?.close();
    for (const schema of schemas) await dropSchema(s.pgUrl, schema).catch(() => undefined);
    await pg?.end();
    nginx?.destroy();
    await pebble?.destroy();
    await shortPebble?.destroy();
    for (const release of held) release();
    await new Promise<void>((r) => (upstream ? upstream.close(() => r()) : r()));
    if (s && domain) await deleteZone(s, domain);
    if (work) rmSync(work, { recursive: true, force: true });
    console.log(`      timings (ms): ${JSON.stringify(timings)}`);
  });

  /** An issuer on Pebble `p`; its challenge events (with what DNS answered at that moment) go to `events`. */
  function issuer(p: Pebble, stateDir: string, events: SeenEvent[] = []): AcmeIssuer {
    const i = new AcmeIssuer({
      directoryUrl: p.directoryUrl,
      email: 'ops@example.com',
      stateDir,
      dns: { apiUrl: s.pdnsApiUrl, apiKey: s.pdnsApiKey, zone: domain },
      resolvers: [`127.0.0.1:${s.pdnsDnsPort}`],
      caCertificatesFile: p.listenerCaFile,
      // After each TXT change: what does DNS (not just the API) answer right now?
      onChallenge: async (e) => {
        events.push({ ...e, visible: await digTxt(s.pdnsDnsPort, e.fqdn) });
      },
    });
    issuers.push(i);
    return i;
  }

  /** The base server (default for the port, so any *.<domain> SNI lands here) and optional per-org servers. */
  function writeSites(base: { cert: string; key: string }, orgs: Array<{ orgId: string; cert: string; key: string }> = []): void {
    const proxy = `location / { proxy_pass http://127.0.0.1:${upstreamPort}; proxy_set_header Host $host; proxy_read_timeout 60s; }`;
    const blocks = [
      `server {\n    listen 127.0.0.1:${httpsPort} ssl default_server;\n    server_name ${domain};\n    ssl_certificate ${base.cert};\n    ssl_certificate_key ${base.key};\n    ${proxy}\n}`,
      ...orgs.map(
        (o) =>
          `server {\n    listen 127.0.0.1:${httpsPort} ssl;\n    server_name org-${o.orgId}.${domain} *.org-${o.orgId}.${domain};\n    ssl_certificate ${o.cert};\n    ssl_certificate_key ${o.key};\n    ${proxy}\n}`,
      ),
    ];
    writeFileSync(path.join(nginx.sitesDir, 'tls-acme.conf'), `${blocks.join('\n')}\n`);
  }

  /** Reloads nginx and waits until new connections for `servername` get the certificate in `certFile`. */
  async function reloadServing(certFile: string, servername = domain): Promise<void> {
    const reload = nginx.nginxOptions().reloadCommand ?? [];
    const r = await sh(reload[0], reload.slice(1));
    assert.equal(r.code, 0, `nginx reload: ${r.stderr}`);
    const want = certificateInfo(readFileSync(certFile, 'utf8')).fingerprint256;
    await waitFor(`nginx to serve ${certFile} for ${servername} after the reload`, 15_000, async () => (await servedFingerprint({ host: '127.0.0.1', port: httpsPort, servername })) === want);
  }

  describe('acceptance 1: base and per-organization certificates through DNS-01', () => {
    /** The organization whose certificate is issued (tests 3 to 5); the pending test has its own. */
    const orgId = randomOrg();
    const schema = `tlsacme_${suiteId()}`;
    let heldIssuer: HeldIssuer;
    /** Challenge events of this describe's orders only (the base certificate and orgId's). */
    const events: SeenEvent[] = [];
    let allocator: GatewayAllocator;
    let certs: OrgCertificates;

    /** Set-up: the ACME base certificate, installed as the stage-1 base pair and served. */
    const baseServed = once(async (): Promise<IssuedCertificate> => {
      const acme = issuer(pebble, path.join(work, 'acme-state'), events);
      const t0 = Date.now();
      const base = await acme.issue([domain, `*.${domain}`]);
      timings.issueBase = Date.now() - t0;
      // The stage-1 base pair (the allocator's organization server falls back to it) is the ACME one.
      writeFileSync(nginx.certFile, base.certPem);
      writeFileSync(nginx.keyFile, base.keyPem, { mode: 0o600 });
      // With per-org certificates nginx loads certificates in the workers (user nobody), per handshake.
      chownSync(nginx.keyFile, nobodyUid(), nobodyUid('-g'));
      writeSites({ cert: nginx.certFile, key: nginx.keyFile });
      await reloadServing(nginx.certFile);
      return base;
    });

    /** Set-up: a pool of two gateways whose allocator orders per-organization certificates through a held ACME issuer. */
    const poolReady = once(async (): Promise<void> => {
      await baseServed();
      schemas.push(schema);
      heldIssuer = new HeldIssuer(issuer(pebble, path.join(work, 'acme-state'), events));
      certs = new OrgCertificates({ issuer: heldIssuer, encryptionKey: randomBytes(32), logger: null });
      closers.push(certs);
      allocator = new GatewayAllocator({ ...testAllocatorOptions(s, nginx, { env: 'tlsacme', domain, schema }), certificates: certs });
      closers.push(allocator);
      await allocator.migrate();
      const inventory = [0, 1].map((i) => ({ name: `gw-pool-tlsacme-${i}`, host: gatewayHost(i), httpPort: standIn.port, vpnPort: 49100 + i }));
      await allocator.registerGateways(inventory);
      await allocator.markReady(inventory.map((g) => g.name));
    });

    /** Set-up: `orgId` allocated, its certificate issued through DNS-01 and served. */
    const orgCertificateServed = once(async (): Promise<void> => {
      await poolReady();
      const t1 = Date.now();
      heldIssuer.release(`org-${orgId}.${domain}`);
      assert.equal((await allocator.allocate(orgId)).certificate, 'pending');
      await waitFor(`the certificate of org-${orgId} to be issued (DNS-01, Pebble)`, 120_000, async () => (await allocator.getAllocation(orgId))?.certificate === 'ready', 250).catch(async (err: Error) => {
        throw new Error(`${err.message}: ${JSON.stringify(await certs.status(orgId))}`);
      });
      timings.orgCertificateReady = Date.now() - t1;
      // The file is written under the allocator's lock; the first handshakes may still see the base certificate.
      for (const sni of [`org-${orgId}.${domain}`, `uc-abc.org-${orgId}.${domain}`]) {
        await waitFor(`nginx to serve the org certificate for ${sni}`, 10_000, async () => (await sClient(sni, pebble.rootFile)).verified, 250);
      }
    });

    it('issues <domain> + *.<domain> in one order and nginx serves it', async () => {
      const base = await baseServed();
      assert.deepEqual(certificateInfo(base.certPem).names.sort(), [`*.${domain}`, domain].sort());
      assert.ok(base.notAfter.getTime() > Date.now() + 30 * 86_400_000, 'a normal (long) certificate');
      assert.match(certificateInfo(base.certPem).issuer, /Pebble Intermediate CA/);
      for (const sni of [domain, `ganymede.${domain}`]) {
        const r = await sClient(sni, pebble.rootFile);
        assert.ok(r.verified, `${sni}: not verified:\n${r.output.slice(-1500)}`);
        assert.deepEqual(r.sans.sort(), [`*.${domain}`, domain].sort(), `${sni}: SANs`);
      }
      // A server the CA never signed fails verification: the check has teeth.
      assert.equal((await sClient(domain, shortPebble.rootFile)).verified, false);
    });

    it('allocating an organization orders its certificate in the background; meanwhile its route serves the base certificate and reports pending', async () => {
      await poolReady();
      assert.equal(certs.issuance, 'background');
      const pendingOrg = randomOrg();
      try {
        const gw = await allocator.allocate(pendingOrg);
        assert.equal(gw.certificate, 'pending');
        // Its order is held (HeldIssuer) until the end of this test: pending for as long as we look.
        assert.equal((await certs.status(pendingOrg)).state, 'pending');
        const apex = await sClient(`org-${pendingOrg}.${domain}`, pebble.rootFile);
        assert.ok(apex.verified, apex.output.slice(-1500));
        assert.deepEqual(apex.sans.sort(), [`*.${domain}`, domain].sort(), 'the base certificate covers org-<uuid>.<domain>');
        assert.equal((await sClient(`uc-abc.org-${pendingOrg}.${domain}`, pebble.rootFile)).verified, false, 'but not uc-….org-<uuid>.<domain>');
      } finally {
        heldIssuer.refuse(`org-${pendingOrg}.${domain}`, new Error('the test is over'));
        await certs.idle();
        await allocator.release(pendingOrg);
      }
    });

    it('once issued (DNS-01, Pebble), nginx serves org-<uuid> + *.org-<uuid>; openssl s_client verifies it against Pebble\'s root', async () => {
      await orgCertificateServed();
      const sans = [`org-${orgId}.${domain}`, `*.org-${orgId}.${domain}`].sort();
      for (const sni of [`org-${orgId}.${domain}`, `uc-abc.org-${orgId}.${domain}`]) {
        const r = await sClient(sni, pebble.rootFile);
        assert.ok(r.verified, `${sni}: not verified:\n${r.output.slice(-1500)}`);
        assert.deepEqual(r.sans.sort(), sans, `${sni}: SANs`);
      }
      const row = await pgQuery(`SELECT cert_pem, key_encrypted FROM "${schema}".org_certificates WHERE organization_id = $1`, [orgId]);
      assert.match(String(row[0].cert_pem), /BEGIN CERTIFICATE/);
      assert.ok(!(row[0].key_encrypted as Buffer).toString('latin1').includes('PRIVATE KEY'), 'the key is encrypted at rest');
    });

    it('each _acme-challenge rrset held both values (apex and wildcard) at once, visible over DNS', async () => {
      await baseServed();
      await orgCertificateServed();
      for (const name of [domain, `org-${orgId}.${domain}`]) {
        const fqdn = ChallengeDns.recordName(name);
        const presents = events.filter((e) => e.fqdn === fqdn && e.action === 'present');
        assert.equal(presents.length, 2, `${fqdn}: two challenges (apex + wildcard) presented`);
        const both = presents.map((p) => p.value);
        assert.notEqual(both[0], both[1]);
        assert.deepEqual([...presents[1].visible].sort(), [...both].sort(), `${fqdn}: DNS answered both values after the second present`);
        const cleanups = events.filter((e) => e.fqdn === fqdn && e.action === 'cleanup');
        assert.equal(cleanups.length, 2, `${fqdn}: both cleaned up`);
        assert.deepEqual(cleanups[1].visible, [], `${fqdn}: nothing left over DNS`);
      }
    });

    it('the challenge records are gone from PowerDNS (API)', async () => {
      await baseServed();
      await orgCertificateServed();
      assert.deepEqual(await challengeRRsets(s, domain), []);
    });
  });

  describe("why not lego's pdns provider", () => {
    it('lego 4.9.1 --dns pdns deletes the whole rrset at clean-up (a value another order needs is lost); ours removes only its own', async () => {
      const name = `cmp.${domain}`;
      const fqdn = ChallengeDns.recordName(name);
      const foreign = 'foreign-pending-value-of-another-order';
      const seed = (): Promise<void> =>
        patchZone(s, domain, [{ name: fqdn, type: 'TXT', ttl: 60, changetype: 'REPLACE', records: [{ content: `"${foreign}"`, disabled: false }] }]);

      await seed();
      const legoDir = path.join(work, 'lego-pdns');
      const r = await new Promise<{ code: number; out: string }>((resolve) => {
        const child = spawn(
          'lego',
          ['--accept-tos', '--email', 'ops@example.com', '--server', pebble.directoryUrl, '--path', legoDir, '--dns', 'pdns', '--dns.resolvers', `127.0.0.1:${s.pdnsDnsPort}`, '--dns.disable-cp', '--domains', name, 'run'],
          {
            env: {
              PATH: process.env.PATH,
              HOME: work,
              LEGO_CA_CERTIFICATES: pebble.listenerCaFile,
              PDNS_API_URL: s.pdnsApiUrl,
              PDNS_API_KEY: s.pdnsApiKey,
              PDNS_PROPAGATION_TIMEOUT: '60',
              PDNS_POLLING_INTERVAL: '1',
            },
          },
        );
        let out = '';
        child.stdout.on('data', (b: Buffer) => (out += b.toString()));
        child.stderr.on('data', (b: Buffer) => (out += b.toString()));
        child.on('close', (code) => resolve({ code: code ?? 1, out }));
      });
      assert.equal(r.code, 0, r.out);
      assert.deepEqual(await digTxt(s.pdnsDnsPort, fqdn), [], "lego's pdns clean-up removed the other order's value too");

      await seed();
      const acme = issuer(pebble, path.join(work, 'acme-state'));
      await acme.issue([name]);
      assert.deepEqual(await digTxt(s.pdnsDnsPort, fqdn), [foreign], 'our clean-up removed only our value');
      await patchZone(s, domain, [{ name: fqdn, type: 'TXT', changetype: 'DELETE' }]);
      assert.deepEqual(await challengeRRsets(s, domain), []);
    });
  });

  describe('failures back off', () => {
    it('a failed order sets retryAfter for its name set; the next call is refused without contacting the CA', async () => {
      // A name outside the zone: Pebble cannot find the TXT record (our endpoint refuses to write it).
      const acme = issuer(pebble, path.join(work, 'acme-state'));
      const names = [`nowhere-${suiteId()}.invalid`];
      await assert.rejects(acme.issue(names), (err: unknown) => isAcmeIssueError(err) && err.kind === 'failed' && err.retryAfter !== undefined && err.retryAfter.getTime() > Date.now());
      const t0 = Date.now();
      await assert.rejects(acme.issue(names), (err: unknown) => isAcmeIssueError(err) && err.kind === 'backoff');
      assert.ok(Date.now() - t0 < 100, 'refused at once');
      assert.equal(acme.backoff.state(names)?.failures, 1);
    });
  });

  describe('acceptance 3: a short-lived base certificate is renewed; nginx reloads without dropping an in-flight request', () => {
    let certPath: string;
    let keyPath: string;
    const policy = { renewBeforeMs: 1, renewBeforeFraction: 0.75 };

    function cliEnv(): NodeJS.ProcessEnv {
      return {
        PATH: process.env.PATH,
        HOME: work,
        DOMAIN: domain,
        TLS_ISSUER: 'acme',
        TLS_CERT_PATH: certPath,
        TLS_KEY_PATH: keyPath,
        // 60-second certificates: renew once less than 45 s are left.
        TLS_RENEW_BEFORE_DAYS: String(1 / 86_400_000),
        TLS_RENEW_BEFORE_FRACTION: '0.75',
        ACME_DIRECTORY: shortPebble.directoryUrl,
        ACME_EMAIL: 'ops@example.com',
        ACME_STATE_DIR: path.join(work, 'short-acme-state'),
        ACME_CA_CERTIFICATES: shortPebble.listenerCaFile,
        PDNS_API_URL: s.pdnsApiUrl,
        PDNS_API_KEY: s.pdnsApiKey,
        DNS_RESOLVERS: `127.0.0.1:${s.pdnsDnsPort}`,
        NGINX_TEST_COMMAND: JSON.stringify(nginx.nginxOptions().testCommand ?? []),
        NGINX_RELOAD_COMMAND: JSON.stringify(nginx.nginxOptions().reloadCommand ?? []),
        TLS_PROBE: `127.0.0.1:${httpsPort}`,
      };
    }

    function runCli(args: string[]): Promise<{ code: number; out: string }> {
      return new Promise((resolve) => {
        const child = spawn(process.execPath, ['-r', 'ts-node/register/transpile-only', path.join(REPO, 'runtime/cli/tls-renew.ts'), ...args], { cwd: REPO, env: cliEnv() });
        let out = '';
        child.stdout.on('data', (b: Buffer) => (out += b.toString()));
        child.stderr.on('data', (b: Buffer) => (out += b.toString()));
        child.on('close', (code) => resolve({ code: code ?? 1, out }));
      });
    }

    /** An HTTPS request through nginx that the upstream holds; resolves with the status, body and the certificate its connection saw. */
    function slowRequest(): Promise<{ status: number; body: string; fingerprint: string }> {
      return new Promise((resolve, reject) => {
        const req = https.request(
          { host: '127.0.0.1', port: httpsPort, path: '/slow', servername: domain, headers: { host: domain }, ca: readFileSync(shortPebble.rootFile), agent: false },
          (res) => {
            const fingerprint = (res.socket as import('tls').TLSSocket).getPeerCertificate().fingerprint256;
            let body = '';
            res.setEncoding('utf8');
            res.on('data', (c: string) => (body += c));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body, fingerprint }));
            res.on('error', reject);
          },
        );
        req.on('error', reject);
        req.end();
      });
    }

    /** Set-up: the base server serves a pair the renewal CLI installed (`once --force`) from the 60-second Pebble. */
    const firstInstalled = once(async (): Promise<void> => {
      const dir = path.join(work, 'short');
      mkdirSync(dir, { recursive: true });
      certPath = path.join(dir, 'fullchain.pem');
      keyPath = path.join(dir, 'privkey.pem');
      // Until the first certificate exists the base server needs some pair: the suite's mkcert one.
      writeFileSync(certPath, readFileSync(nginx.certFile));
      writeFileSync(keyPath, readFileSync(nginx.keyFile), { mode: 0o600 });
      writeSites({ cert: certPath, key: keyPath });
      await reloadServing(certPath);
      const t0 = Date.now();
      const r = await runCli(['once', '--force']);
      timings.cliFirstIssue = Date.now() - t0;
      assert.equal(r.code, 0, `set-up: tls-renew once --force: ${r.out}`);
    });

    it('the CLI issues the first certificate, then keeps it while it is fresh', async () => {
      await firstInstalled();
      const info = await readInstalled(certPath);
      assert.ok(info !== undefined && info !== 'unreadable');
      // Pebble: notAfter = notBefore + period - 1 s.
      const lifetime = (info.notAfter.getTime() - info.notBefore.getTime()) / 1000;
      assert.ok(lifetime >= 58 && lifetime <= 60, `Pebble issued a 60-second certificate (got ${lifetime} s)`);
      assert.equal(await servedFingerprint({ host: '127.0.0.1', port: httpsPort, servername: domain }), info.fingerprint256);
      let r = await runCli(['once']);
      assert.equal(r.code, 0, r.out);
      assert.match(r.out, /nothing to do/);
      r = await runCli(['check']);
      assert.equal(r.code, 0, r.out);
    });

    it('once due, the renewal replaces it and reloads nginx while a request is in flight; the request completes', async () => {
      await firstInstalled();
      // As in the dev container, where nginx's workers (not only root) read the base key: the owner must survive renewal.
      chownSync(keyPath, nobodyUid(), nobodyUid('-g'));
      const before = await readInstalled(certPath);
      assert.ok(before !== undefined && before !== 'unreadable');
      // The time that must pass is the policy's: a 60-second certificate is due once less than 45 s are left (real clock).
      await waitFor('the 60-second certificate to be due for renewal (less than 45 s left)', 60_000, () => renewalDue(before, [domain, `*.${domain}`], new Date(), policy) !== undefined, 250);

      const inFlight = slowRequest();
      await waitFor('the upstream to hold the in-flight request', 5000, () => held.length > 0, 20);
      assert.equal(held.length, 1, 'the upstream holds the request');

      const t0 = Date.now();
      const r = await runCli(['once']);
      timings.cliRenewal = Date.now() - t0;
      assert.equal(r.code, 0, r.out);
      assert.match(r.out, /renewed \(expiring\)/);
      const after = await readInstalled(certPath);
      assert.ok(after !== undefined && after !== 'unreadable');
      assert.notEqual(after.fingerprint256, before.fingerprint256);
      assert.ok(after.notAfter > before.notAfter);
      const keyStat = statSync(keyPath);
      assert.equal(keyStat.uid, nobodyUid(), 'the new key keeps the old key\'s owner');
      assert.equal(keyStat.mode & 0o777, 0o600);
      // The CLI confirmed by handshake; check again from here: new connections get the new certificate.
      assert.equal(await servedFingerprint({ host: '127.0.0.1', port: httpsPort, servername: domain }), after.fingerprint256);
      const v = await sClient(domain, shortPebble.rootFile);
      assert.ok(v.verified, v.output.slice(-1500));

      // The request that started before the reload is still open on an old worker; answer it now.
      held.shift()?.();
      const done = await inFlight;
      assert.equal(done.status, 200);
      assert.equal(done.body, `upstream ${domain} /slow\n`);
      assert.equal(done.fingerprint, before.fingerprint256, 'it was served on a connection made with the old certificate');
      assert.deepEqual(await challengeRRsets(s, domain), []);
    });

    it('a failing nginx -t keeps the previous pair installed', async () => {
      await firstInstalled();
      const before = await readInstalled(certPath);
      assert.ok(before !== undefined && before !== 'unreadable');
      const acme = issuer(shortPebble, path.join(work, 'short-acme-state'));
      await assert.rejects(
        renewBaseCertificate({
          issuer: acme,
          names: [domain, `*.${domain}`],
          certPath,
          keyPath,
          force: true,
          testCommand: ['false'],
          reloadCommand: nginx.nginxOptions().reloadCommand ?? [],
        }),
        /nginx -t rejected the new certificate \(previous pair restored\)/,
      );
      const still = await readInstalled(certPath);
      assert.ok(still !== undefined && still !== 'unreadable');
      assert.equal(still.fingerprint256, before.fingerprint256);
      assert.equal(await servedFingerprint({ host: '127.0.0.1', port: httpsPort, servername: domain }), before.fingerprint256);
    });
  });
});
