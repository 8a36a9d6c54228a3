import { strict as assert } from 'assert';
import { cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'fs';
import * as http from 'http';
import * as https from 'https';
import * as path from 'path';
import { GatewayAllocator } from '../../runtime';
import { testAllocatorOptions } from '../helpers/allocator-settings';
import { TestBrowser, screenshot } from '../helpers/browser';
import { DEV_PAGES_DIR, renderDevSites } from '../helpers/dev-sites';
import { createZone, gatewayHost, randomOrg, startStandInGateways } from '../helpers/fixtures';
import { freePort } from '../helpers/ports';
import { TestServices, requireServices } from '../helpers/services';
import { Stage1Nginx } from '../helpers/stage1-nginx';
import { requireTool } from '../helpers/tools';
import { suiteNames, removeZoneAndSchemas } from '../helpers/suite-setup';

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

const BROWSER_ACCEPT = 'text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8';

/**
 * What stage 1 answers itself, for names it cannot pass on: the allocator's
 * organization server (no gateway allocated; a gateway that does not answer)
 * and the dev image's own server blocks (apex without a frontend build;
 * ganymede.<domain> while the API server is down), through a real nginx with
 * the suite's certificate, then in a real browser (Debian's Chromium).
 */
describe('stage-1 pages: a name with nothing behind it gets a page a person understands (HTML, JSON), never a download', function () {
  this.timeout(120_000);
  let s: TestServices;
  let nginx: Stage1Nginx;
  let standIn: { port: number; close: () => Promise<void> };
  let allocator: GatewayAllocator;
  let domain: string;
  let schema: string;
  let env: string;
  let frontendRoot: string;
  /** An organization with a gateway that answers, one whose gateway's port is closed, one with none. */
  const orgLive = randomOrg();
  const orgDown = randomOrg();
  const orgNone = randomOrg();

  function get(hostname: string, accept: string, urlPath = '/'): Promise<Answer> {
    return new Promise((resolve, reject) => {
      const req = https.get(
        { host: '127.0.0.1', port: nginx.httpsPort, servername: hostname, headers: { host: hostname, accept }, path: urlPath, ca: readFileSync(nginx.caFile), agent: false },
        (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (body += c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
        },
      );
      req.on('error', reject);
    });
  }

  before(async function () {
    s = requireServices(this);
    ({ domain, schema, env } = suiteNames('pages'));
    await createZone(s, domain);
    nginx = new Stage1Nginx(domain, await freePort(), await freePort());
    // The dev image's blocks, with no frontend build and an API server that is not running.
    frontendRoot = path.join(nginx.prefix, 'frontend');
    mkdirSync(frontendRoot);
    const pagesDir = path.join(nginx.prefix, 'pages');
    cpSync(DEV_PAGES_DIR, pagesDir, { recursive: true });
    writeFileSync(
      path.join(nginx.sitesDir, 'demiurge-base.conf'),
      renderDevSites({
        domain,
        certPath: nginx.certFile,
        keyPath: nginx.keyFile,
        frontendRoot,
        ganymedeUpstream: `127.0.0.1:${await freePort()}`,
        pagesDir,
        httpPort: await freePort(),
        httpsPort: nginx.httpsPort,
      }),
    );
    nginx.start();
    standIn = await startStandInGateways();
    allocator = new GatewayAllocator(testAllocatorOptions(s, nginx, { env, domain, schema }));
    await allocator.migrate();
    const closedPort = await freePort();
    await allocator.registerGateways([
      { name: `gw-pool-${env}-0`, host: gatewayHost(0), httpPort: closedPort, vpnPort: 49100 },
      { name: `gw-pool-${env}-1`, host: gatewayHost(1), httpPort: standIn.port, vpnPort: 49101 },
    ]);
    await allocator.markReady(`gw-pool-${env}-0`);
    assert.equal((await allocator.allocate(orgDown)).name, `gw-pool-${env}-0`);
    await allocator.markReady(`gw-pool-${env}-1`);
    assert.equal((await allocator.allocate(orgLive)).name, `gw-pool-${env}-1`);
  });

  after(async () => {
    await allocator?.close();
    await standIn?.close();
    nginx?.destroy();
    await removeZoneAndSchemas(s, domain, schema);
  });

  const cases = (): Array<{ what: string; host: () => string; status: number; html: RegExp; code: string }> => [
    { what: 'an organization without a gateway', host: () => `org-${orgNone}.${domain}`, status: 404, html: /has no gateway right now[\s\S]*What to do/, code: 'NO_GATEWAY' },
    { what: "an organization whose gateway does not answer", host: () => `org-${orgDown}.${domain}`, status: 502, html: /gateway is not answering[\s\S]*What to do/, code: 'GATEWAY_UNREACHABLE' },
    { what: 'the apex without a frontend build', host: () => domain, status: 503, html: /No frontend build is deployed[\s\S]*index\.html[\s\S]*What to do/, code: 'NO_FRONTEND_BUILD' },
    { what: 'ganymede.<domain> while the API server is down', host: () => `ganymede.${domain}`, status: 502, html: /API server \(Ganymede\) is not answering[\s\S]*What to do/, code: 'API_UNAVAILABLE' },
  ];

  for (const c of cases()) {
    it(`${c.what}: ${c.status}, an HTML page (text/html; charset=utf-8, no-store), JSON for Accept: application/json`, async () => {
      const page = await get(c.host(), BROWSER_ACCEPT, '/some/deep/path?x=1');
      assert.equal(page.status, c.status, page.body);
      assert.equal(page.headers['content-type'], 'text/html; charset=utf-8');
      assert.equal(page.headers['cache-control'], 'no-store');
      assert.equal(page.headers['content-disposition'], undefined);
      assert.match(page.body, /^<!doctype html>/);
      assert.match(page.body, c.html);
      if (c.code === 'NO_GATEWAY' || c.code === 'GATEWAY_UNREACHABLE') assert.ok(page.body.includes(c.host().split('.')[0].slice(4)), 'the page names the organization');

      const json = await get(c.host(), 'application/json');
      assert.equal(json.status, c.status, json.body);
      assert.match(String(json.headers['content-type']), /^application\/json; charset=utf-8$/);
      assert.equal(json.headers['cache-control'], 'no-store');
      const body = JSON.parse(json.body) as Record<string, unknown>;
      assert.equal(body.success, false);
      assert.equal(body.code, c.code);
      assert.equal(typeof body.message, 'string');
      assert.equal(typeof body.what_to_do, 'string');
      // curl's default Accept (*/*) gets the page too.
      assert.equal((await get(c.host(), '*/*')).headers['content-type'], 'text/html; charset=utf-8');
    });
  }

  it("what is behind a name passes through untouched: the live organization's gateway, and the apex once a build is there", async () => {
    const live = await get(`org-${orgLive}.${domain}`, BROWSER_ACCEPT, '/healthz');
    assert.equal(live.status, 200);
    assert.equal(JSON.parse(live.body).gatewayAddress, gatewayHost(1));
    writeFileSync(path.join(frontendRoot, 'index.html'), '<!doctype html><title>app</title>the app\n');
    try {
      const apex = await get(domain, BROWSER_ACCEPT, '/projects/1');
      assert.deepEqual([apex.status, apex.body], [200, '<!doctype html><title>app</title>the app\n']);
    } finally {
      // Back to "no build" for the other tests, whatever their order.
      rmSync(path.join(frontendRoot, 'index.html'));
    }
  });

  describe('in a real browser that trusts the suite CA (NSS database, no certificate errors ignored)', () => {
    let browser: TestBrowser;

    before(async function () {
      requireTool(this, 'chromium', 'the browser checks of stage-1 pages');
      requireTool(this, 'certutil', 'a browser profile trusting the suite CA');
      browser = await TestBrowser.launch({ hostResolverRules: `MAP * 127.0.0.1:${nginx.httpsPort}`, caFile: nginx.caFile });
    });

    after(async () => {
      await browser?.close();
    });

    it('an organization without a gateway: the page renders over a trusted TLS connection', async () => {
      const { page, visit } = await browser.visit(`https://org-${orgNone}.${domain}/`);
      try {
        assert.equal(visit.error, undefined, `navigation failed (a TLS error means the CA was not trusted): ${visit.error}`);
        assert.deepEqual([visit.status, visit.contentType, visit.downloads], [404, 'text/html; charset=utf-8', []]);
        assert.match(visit.text, /What to do/);
        await screenshot(page, 'stage1-no_gateway-trusted-ca');
      } finally {
        await page.close();
      }
    });

    it('the same page in a browser without the CA fails on the certificate (the trust above is real)', async () => {
      const plain = await TestBrowser.launch({ hostResolverRules: `MAP * 127.0.0.1:${nginx.httpsPort}` });
      try {
        const { page, visit } = await plain.visit(`https://org-${orgNone}.${domain}/`);
        await page.close();
        assert.match(visit.error ?? '', /ERR_CERT_AUTHORITY_INVALID/, `expected an untrusted certificate, got ${JSON.stringify(visit)}`);
      } finally {
        await plain.close();
      }
    });
  });

  describe('in a real browser (Debian Chromium, headless)', () => {
    let browser: TestBrowser;

    before(async function () {
      requireTool(this, 'chromium', 'the browser checks of stage-1 pages');
      // Every name goes to the suite's nginx; its certificate is signed by the suite's own CA.
      browser = await TestBrowser.launch({ hostResolverRules: `MAP * 127.0.0.1:${nginx.httpsPort}`, ignoreCertificateErrors: true });
    });

    after(async () => {
      await browser?.close();
    });

    for (const c of cases()) {
      it(`${c.what}: renders as a page (no download), screenshot saved`, async () => {
        const { page, visit } = await browser.visit(`https://${c.host()}/`);
        try {
          assert.equal(visit.error, undefined, `navigation failed: ${visit.error}`);
          assert.deepEqual(visit.downloads, [], 'the browser started a download');
          assert.equal(visit.status, c.status);
          assert.equal(visit.contentType, 'text/html; charset=utf-8');
          assert.match(visit.title, /./);
          assert.match(visit.text, /What to do/);
          const file = await screenshot(page, `stage1-${c.code.toLowerCase()}`);
          console.log(`      ${c.what}: ${visit.status} "${visit.title}" → ${path.relative(process.cwd(), file)}`);
        } finally {
          await page.close();
        }
      });
    }
  });
});
