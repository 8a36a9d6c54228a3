/** Pure parts of the ACME path: back-off, Retry-After parsing, renewal decisions. */
import { strict as assert } from 'assert';
import { DEFAULT_BACKOFF, IssuanceBackoff, backoffDelay, nameSetKey, parseRetryAfter } from '../../runtime/tls/backoff';
import { ChallengeDns } from '../../runtime/tls/dns-challenge';
import { DAY_MS, renewalDue } from '../../runtime/tls/renew';
import type { CertificateInfo } from '../../runtime/tls/pem';

describe('ACME back-off (runtime/tls/backoff)', () => {
  const now = new Date('2026-01-10T12:00:00Z');

  it('name sets are keyed without order or case', () => {
    assert.equal(nameSetKey(['*.Example.test', 'example.test']), nameSetKey(['example.test', '*.example.test']));
    assert.notEqual(nameSetKey(['example.test']), nameSetKey(['example.test', '*.example.test']));
  });

  it('reads Retry-After headers and Let\'s Encrypt "retry after" details', () => {
    assert.equal(parseRetryAfter('120', now)?.toISOString(), '2026-01-10T12:02:00.000Z');
    assert.equal(parseRetryAfter('Sat, 10 Jan 2026 13:00:00 GMT', now)?.toISOString(), '2026-01-10T13:00:00.000Z');
    assert.equal(
      parseRetryAfter('urn:ietf:params:acme:error:rateLimited :: too many certificates (5) already issued for this exact set of domains in the last 168h0m0s, retry after 2026-01-11T17:47:44Z: see https://letsencrypt.org/docs/rate-limits/', now)?.toISOString(),
      '2026-01-11T17:47:44.000Z',
    );
    assert.equal(parseRetryAfter('too many new orders recently: retry after 2026-01-10 22:10:54 UTC', now)?.toISOString(), '2026-01-10T22:10:54.000Z');
    assert.equal(parseRetryAfter('acme: error: 403 :: urn:ietf:params:acme:error:unauthorized', now), undefined);
    assert.equal(parseRetryAfter(undefined, now), undefined);
  });

  it('grows exponentially up to the cap', () => {
    assert.equal(backoffDelay(1), 5 * 60_000);
    assert.equal(backoffDelay(2), 10 * 60_000);
    assert.equal(backoffDelay(4), 40 * 60_000);
    assert.equal(backoffDelay(30), DEFAULT_BACKOFF.maxMs);
  });

  it('blocks a failed name set until retryAfter; honours a later server time; success clears it', () => {
    let t = now.getTime();
    const b = new IssuanceBackoff(DEFAULT_BACKOFF, () => new Date(t));
    const names = ['example.test', '*.example.test'];
    assert.equal(b.blocked(names), undefined);
    const s1 = b.recordFailure(names, { message: 'unauthorized' });
    assert.equal(s1.retryAfter.getTime(), t + 5 * 60_000);
    assert.ok(b.blocked([...names].reverse()), 'same set in another order');
    assert.equal(b.blocked(['other.test']), undefined);
    t += 5 * 60_000 + 1;
    assert.equal(b.blocked(names), undefined);
    const s2 = b.recordFailure(names, { message: 'rateLimited', rateLimited: true });
    assert.equal(s2.failures, 2);
    assert.equal(s2.retryAfter.getTime(), t + DEFAULT_BACKOFF.rateLimitedMs, 'rate limited: at least an hour');
    const server = new Date(t + 7 * 86_400_000);
    const s3 = b.recordFailure(names, { message: 'rateLimited', rateLimited: true, retryAfter: server });
    assert.equal(s3.retryAfter.getTime(), server.getTime(), "the server's time wins when later");
    const s4 = b.recordFailure(names, { message: 'x', retryAfter: new Date(t + 1000) });
    assert.equal(s4.retryAfter.getTime(), t + backoffDelay(4), 'never sooner than our own back-off');
    b.recordSuccess(names);
    assert.equal(b.blocked(names), undefined);
    assert.equal(b.state(names), undefined);
  });
});

describe('challenge record names', () => {
  it('apex and wildcard share _acme-challenge.<name>', () => {
    assert.equal(ChallengeDns.recordName('example.test'), '_acme-challenge.example.test.');
    assert.equal(ChallengeDns.recordName('*.example.test'), '_acme-challenge.example.test.');
    assert.equal(ChallengeDns.recordName('*.org-1.example.test'), '_acme-challenge.org-1.example.test.');
  });

  it('refuses names outside the zone or not a challenge', async () => {
    const dns = new ChallengeDns({ apiUrl: 'http://127.0.0.1:9', apiKey: 'k', zone: 'example.test' });
    await assert.rejects(dns.present('_acme-challenge.other.test.', 'abc'), /not an _acme-challenge name in zone example\.test\./);
    await assert.rejects(dns.present('www.example.test.', 'abc'), /refusing/);
    await assert.rejects(dns.present('_acme-challenge.evilexample.test.', 'abc'), /refusing/);
  });
});

describe('renewal decision (runtime/tls/renew renewalDue)', () => {
  const names = ['example.test', '*.example.test'];
  const cert = (notBefore: string, notAfter: string, n = names): CertificateInfo => ({
    notBefore: new Date(notBefore),
    notAfter: new Date(notAfter),
    names: n,
    fingerprint256: 'AA',
    issuer: 'CN=x',
  });
  const now = new Date('2026-03-01T00:00:00Z');

  it('missing, unreadable, other names → renew', () => {
    assert.equal(renewalDue(undefined, names, now), 'missing');
    assert.equal(renewalDue('unreadable', names, now), 'unreadable');
    assert.equal(renewalDue(cert('2026-02-01', '2026-05-01', ['example.test']), names, now), 'names-changed');
  });

  it('30 days before expiry by default; names in any order', () => {
    assert.equal(renewalDue(cert('2026-02-01', '2026-05-01', [...names].reverse()), names, now), undefined);
    assert.equal(renewalDue(cert('2026-01-01', '2026-03-30', names), names, now), 'expiring');
    assert.equal(renewalDue(cert('2026-01-01', '2026-04-15', names), names, now, { renewBeforeMs: 60 * DAY_MS }), 'expiring');
  });

  it('a fraction of the lifetime (short-lived certificates)', () => {
    const short = cert('2026-03-01T00:00:00Z', '2026-03-01T00:01:00Z');
    const p = { renewBeforeMs: 1, renewBeforeFraction: 0.75 };
    assert.equal(renewalDue(short, names, new Date('2026-03-01T00:00:10Z'), p), undefined);
    assert.equal(renewalDue(short, names, new Date('2026-03-01T00:00:16Z'), p), 'expiring');
  });
});
