import { strict as assert } from 'assert';
import { AllocatorError, GatewayApiError, STATUS_OF, serializeSnapshot } from '../../runtime';
import { allocatorOptions, resolveSettings } from '../../runtime/cli/cli-config';
import { parseStackOutputs } from '../../runtime/cli/gateway-pool';
import { toErrorResponse } from '../../runtime/http/api-errors';

describe('API pure logic', () => {
  describe('serializeSnapshot', () => {
    const ok = { yjs_state: { p1: Buffer.from('hello').toString('base64') }, gateway_state: { a: [1, 2], b: { c: null } } };

    it('stores the fields in a fixed order, so the stored text does not depend on the client', () => {
      const reordered = { gateway_state: ok.gateway_state, yjs_state: ok.yjs_state };
      assert.equal(serializeSnapshot(reordered, 1 << 20).text, serializeSnapshot(ok, 1 << 20).text);
      assert.ok(serializeSnapshot(ok, 1 << 20).text.startsWith('{"yjs_state"'));
    });

    it('names the field that is wrong', () => {
      const bad: Array<[unknown, RegExp]> = [
        [null, /must be an object/],
        [[], /must be an object/],
        [{ yjs_state: {}, gateway_state: {}, x: 1 }, /unknown field\(s\) x/],
        [{ yjs_state: [], gateway_state: {} }, /yjs_state must be an object/],
        [{ yjs_state: { p: 'abc' }, gateway_state: {} }, /yjs_state\["p"\] must be a base64 string/],
        [{ yjs_state: { p: 'ab!=' }, gateway_state: {} }, /base64/],
        [{ yjs_state: {}, gateway_state: 'x' }, /gateway_state must be an object/],
      ];
      for (const [input, msg] of bad) {
        assert.throws(() => serializeSnapshot(input, 1 << 20), (e: unknown) => e instanceof AllocatorError && e.code === 'INVALID_SNAPSHOT' && msg.test(e.message));
      }
    });

    it('refuses a snapshot over the limit with PAYLOAD_TOO_LARGE and the sizes', () => {
      const big = { yjs_state: { p: Buffer.alloc(3000).toString('base64') }, gateway_state: {} };
      assert.throws(() => serializeSnapshot(big, 2048), (e: unknown) => e instanceof AllocatorError && e.code === 'PAYLOAD_TOO_LARGE' && e.details?.maxBytes === 2048);
    });
  });

  describe('error answers', () => {
    it('every code has a status; retryable codes are 409 or 5xx', () => {
      for (const [code, status] of Object.entries(STATUS_OF)) {
        const e = new GatewayApiError(code as keyof typeof STATUS_OF, 'x');
        assert.equal(e.status, status);
        if (e.retryable) assert.ok(status === 409 || status >= 500, code);
      }
    });

    it('hides low-level messages and unknown errors', () => {
      const db = toErrorResponse(new AllocatorError('DATABASE_FAILED', 'connect ECONNREFUSED postgres://u:secret@db/x'));
      assert.equal(db.status, 503);
      assert.ok(!JSON.stringify(db.body).includes('secret'));
      const unknown = toErrorResponse(new Error('TypeError at /srv/app/x.js:1'));
      assert.deepEqual(unknown.body, { success: false, code: 'INTERNAL', message: 'internal error', retryable: false });
      const typed = toErrorResponse(new AllocatorError('POOL_EXHAUSTED', 'no ready gateway'));
      assert.deepEqual([typed.status, typed.body.retryable], [503, true]);
    });
  });

  describe('CLI settings and stack outputs', () => {
    it('flags win over the environment, empty values are unset', () => {
      const s = resolveSettings({ domain: 'flag.test' }, { DOMAIN: 'env.test', ENV_NAME: 'dev', DATABASE_URL: '' });
      assert.deepEqual(s, { domain: 'flag.test', env: 'dev' });
    });

    it('names every missing setting with its flag and variable', () => {
      assert.throws(() => allocatorOptions({}, false), /--database-url \/ DATABASE_URL, --env \/ ENV_NAME, --domain \/ DOMAIN/);
      assert.throws(() => allocatorOptions({ 'database-url': 'postgres://x', env: 'dev', domain: 'd.test' }, true), /PDNS_API_URL.*PDNS_API_KEY.*NGINX_CONF_DIR/);
      assert.throws(() => allocatorOptions({ 'database-url': 'postgres://x', env: 'dev', domain: 'd.test', 'nginx-test-command': 'nginx -t' }, false), /JSON array/);
      const o = allocatorOptions({ 'database-url': 'postgres://x', env: 'dev', domain: 'd.test' }, false);
      assert.equal(o.powerdns.zone, 'd.test');
      assert.equal(o.publicIp, '127.0.0.1');
    });

    it('per-org certificates from the dev CA need the CAROOT and the at-rest key; bad values are named', () => {
      const base = { 'database-url': 'postgres://x', env: 'dev', domain: 'd.test', 'pdns-api-url': 'http://p', 'pdns-api-key': 'k', 'nginx-conf-dir': '/c', 'tls-cert': '/c.pem', 'tls-key': '/k.pem' } as const;
      assert.throws(() => allocatorOptions({ ...base, 'org-cert-issuer': 'dev-ca' }, true), /DEV_CAROOT.*ORG_CERT_KEY/);
      assert.throws(() => allocatorOptions({ ...base, 'org-cert-issuer': 'acme' }, true), /none or dev-ca/);
      assert.throws(() => allocatorOptions({ ...base, 'user-container-naming': 'deep' }, true), /nested or flat/);
      const o = allocatorOptions({ ...base, 'org-cert-issuer': 'dev-ca', 'dev-caroot': '/ca', 'org-cert-key': 'a'.repeat(64) }, true);
      assert.ok(o.certificates);
      assert.equal(allocatorOptions({ ...base, 'org-cert-issuer': 'dev-ca' }, false).certificates, undefined);
    });

    it('reads pulumi stack output --json, and says what is wrong with it', () => {
      const out = parseStackOutputs(JSON.stringify({ envName: 'dev', domain: 'd.test', gatewayInventory: [], gatewayRegistrationTokens: { 'gw-pool-dev-0': 't'.repeat(20) } }));
      assert.deepEqual(out.tokens, { 'gw-pool-dev-0': 't'.repeat(20) });
      assert.equal(parseStackOutputs(JSON.stringify({ gatewayInventory: [], gatewayRegistrationTokens: '[secret]' })).warnings.length, 1);
      assert.throws(() => parseStackOutputs('{'), /not JSON/);
      assert.throws(() => parseStackOutputs('{}'), /no gatewayInventory/);
      assert.throws(() => parseStackOutputs(JSON.stringify({ gatewayInventory: [], gatewayRegistrationTokens: { a: 1 } })), /map gateway names to strings/);
    });
  });
});
