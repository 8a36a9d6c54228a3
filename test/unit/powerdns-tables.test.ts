import { strict as assert } from 'assert';
import type { Pool } from 'pg';
import { GatewayAllocator } from '../../runtime/allocator';
import { isAllocatorError } from '../../runtime/errors';
import { PowerDnsTables, WRITE_RECORDS_SQL, recordRowsOf, storedName } from '../../runtime/powerdns-tables';

const comment = { content: 'owner=demiurge-allocator env=dev org=o', account: 'demiurge-allocator' };

describe("PowerDNS's tables as the allocator writes them (runtime/powerdns-tables.ts)", () => {
  it('stores names as gpgsql does: lowercase, no trailing dot; refuses what it would not store as given', () => {
    assert.equal(storedName('org-1.example.test.'), 'org-1.example.test');
    assert.equal(storedName('*.org-1.example.test'), '*.org-1.example.test');
    assert.throws(() => storedName('Org-1.example.test.'), /lowercase/);
    assert.throws(() => storedName('.'), /lowercase/);
  });

  it('a REPLACE deletes then inserts the RRset with its comment; a DELETE only deletes; other types are refused', () => {
    const rows = recordRowsOf([
      { name: 'org-1.example.test.', type: 'A', ttl: 3, changetype: 'REPLACE', records: [{ content: '203.0.113.10', disabled: false }], comments: [comment] },
      { name: '*.org-1.example.test.', type: 'A', ttl: 3, changetype: 'REPLACE', records: [{ content: '203.0.113.10', disabled: false }], comments: [comment] },
      { name: 'org-2.example.test.', type: 'A', changetype: 'DELETE' },
    ]);
    assert.deepEqual(rows.names, ['org-1.example.test', '*.org-1.example.test', 'org-2.example.test']);
    assert.deepEqual(rows.records, {
      name: ['org-1.example.test', '*.org-1.example.test'],
      content: ['203.0.113.10', '203.0.113.10'],
      ttl: [3, 3],
      disabled: [false, false],
    });
    assert.deepEqual(rows.comments, { name: ['org-1.example.test', '*.org-1.example.test'], account: [comment.account, comment.account], comment: [comment.content, comment.content] });
    assert.throws(() => recordRowsOf([{ name: 'org-1.example.test.', type: 'TXT', ttl: 3, changetype: 'REPLACE', records: [] }]), /only A RRsets/);
    assert.throws(() => recordRowsOf([{ name: 'org-1.example.test.', type: 'A', changetype: 'REPLACE', records: [] }]), /needs a ttl/);
    assert.throws(
      () => recordRowsOf([{ name: 'org-1.example.test.', type: 'A', changetype: 'DELETE' }, { name: 'org-1.example.test', type: 'A', changetype: 'DELETE' }]),
      /appears twice/,
    );
  });

  it('the batch is ONE statement (one transaction, one round trip) that touches only A rows of the zone, and names what PowerDNS needs of a row', () => {
    assert.equal(WRITE_RECORDS_SQL.split(';').length, 1);
    assert.match(WRITE_RECORDS_SQL, /DELETE FROM records r USING zone WHERE r\.domain_id = zone\.id AND r\.type = 'A'/);
    assert.match(WRITE_RECORDS_SQL, /DELETE FROM comments c USING zone WHERE c\.domain_id = zone\.id AND c\.type = 'A'/);
    assert.match(WRITE_RECORDS_SQL, /INSERT INTO records \(domain_id, name, type, content, ttl, prio, disabled, ordername, auth\)\s+SELECT zone\.id, n, 'A', v, t, 0, d, NULL, true/);
  });

  it('a missing zone and a PostgreSQL error are DNS_FAILED, notApplied; a connection lost mid-statement is DNS_FAILED, maybe applied', async () => {
    const answers: Array<() => Promise<unknown>> = [
      async () => ({ rows: [{ zones: 0, inserted: 0 }] }),
      async () => Promise.reject(Object.assign(new Error('permission denied for table records'), { code: '42501' })),
      async () => Promise.reject(new Error('Connection terminated unexpectedly')),
    ];
    const pool = { query: () => (answers.shift() as () => Promise<unknown>)() } as unknown as Pool;
    const tables = new PowerDnsTables(pool, 'example.test.');
    const change = [{ name: 'org-1.example.test.', type: 'A', changetype: 'DELETE' as const }];
    for (const [re, notApplied] of [[/zone example\.test does not exist/, true], [/permission denied/, true], [/Connection terminated/, false]] as const) {
      await assert.rejects(tables.write(change), (e: unknown) => isAllocatorError(e, 'DNS_FAILED') && re.test(e.message) && e.details?.notApplied === notApplied);
    }
    assert.equal(tables.writes, 3);
    await tables.write([]);
    assert.equal(tables.writes, 3, 'an empty batch sends nothing');
  });

  it('the allocator refuses a powerdns.database that is neither connection options nor a pool (INVALID_CONFIG, before any connection)', () => {
    const base = {
      envName: 'dev',
      domain: 'example.test',
      publicIp: '127.0.0.1',
      pg: { connectionString: 'postgres://u:p@127.0.0.1:1/db' },
      nginx: { confDir: '/tmp/nowhere', tls: { certPath: '/tmp/c', keyPath: '/tmp/k' } },
    };
    assert.throws(
      () => new GatewayAllocator({ ...base, powerdns: { apiUrl: 'http://127.0.0.1:1', apiKey: 'k', zone: 'example.test', database: { connectionString: '' } } }),
      (e: unknown) => isAllocatorError(e, 'INVALID_CONFIG') && /powerdns\.database must be \{ connectionString, max\? \} or a pg\.Pool/.test(e.message),
    );
  });
});
