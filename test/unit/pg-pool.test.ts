/**
 * A caller's pg.Pool is recognised by its shape, not its class: a host on
 * another pg 8.x has its own Pool class, and an instanceof test used to swap
 * its pool silently for one pointed at the PG* defaults (issue 14).
 */
import { strict as assert } from 'assert';
import { Pool } from 'pg';
import { GatewayAllocator, type GatewayAllocatorOptions, OrgCertificates, isAllocatorError } from '../../runtime';
import { isPgPool, resolvePgPool } from '../../runtime/pg-pool';

/** A pool of "another pg": same methods, different class; records what the runtime asked of it. */
class ForeignPool {
  readonly calls: string[] = [];
  async query(): Promise<never> {
    this.calls.push('query');
    throw new Error('foreign pool: query');
  }
  async connect(): Promise<never> {
    this.calls.push('connect');
    throw new Error('foreign pool: connect');
  }
  async end(): Promise<void> {
    this.calls.push('end');
  }
  on(): this {
    return this;
  }
}

function options(pg: unknown): GatewayAllocatorOptions {
  return {
    envName: 'unit',
    domain: 'unit.test',
    publicIp: '127.0.0.1',
    pg: pg as GatewayAllocatorOptions['pg'],
    powerdns: { apiUrl: 'http://127.0.0.1:1', apiKey: 'k', zone: 'unit.test' },
    nginx: { confDir: '/nonexistent', tls: { certPath: '/c', keyPath: '/k' } },
    logger: null,
  };
}

describe('a caller\'s pg.Pool is duck-typed', () => {
  it('isPgPool accepts any object with query, connect and end functions, and nothing else', () => {
    assert.equal(isPgPool(new ForeignPool()), true);
    const real = new Pool({ connectionString: 'postgres://u@127.0.0.1:1/none' });
    assert.equal(isPgPool(real), true);
    void real.end();
    for (const bad of [null, undefined, 'postgres://u@h/db', 42, {}, { connectionString: 'postgres://x' }, { query() {}, connect() {} }, { query: 1, connect() {}, end() {} }]) {
      assert.equal(isPgPool(bad), false, JSON.stringify(bad));
    }
  });

  it('resolvePgPool returns the caller\'s pool itself, unowned; connection options give an owned pool', async () => {
    const foreign = new ForeignPool();
    const given = resolvePgPool(foreign, 5, 'x');
    assert.equal(given.pool, foreign as unknown as Pool);
    assert.equal(given.owned, false);
    const own = resolvePgPool({ connectionString: 'postgres://u@127.0.0.1:1/none', max: 2 }, 5, 'x');
    assert.equal(own.owned, true);
    assert.ok(own.pool instanceof Pool);
    await own.pool.end();
  });

  it('the allocator uses a pool of another class as given and leaves it open on close()', async () => {
    const foreign = new ForeignPool();
    const allocator = new GatewayAllocator(options(foreign));
    assert.equal(allocator.pgPool, foreign as unknown as Pool);
    await assert.rejects(allocator.migrate(), (e: unknown) => isAllocatorError(e, 'DATABASE_FAILED') && /foreign pool: connect/.test((e as Error).message));
    assert.ok(foreign.calls.includes('connect'), 'the allocator asked the caller\'s pool for a connection');
    await allocator.close();
    assert.ok(!foreign.calls.includes('end'), 'the caller owns its pool: close() does not end it');
  });

  it('OrgCertificates uses a pool of another class as given', async () => {
    const foreign = new ForeignPool();
    const certs = new OrgCertificates({
      issuer: { kind: 'dev-ca', issue: () => Promise.reject(new Error('unused')) },
      encryptionKey: Buffer.alloc(32, 7),
      pg: foreign as unknown as Pool,
      schema: 'unit_certs',
      domain: 'unit.test',
      logger: null,
    });
    await assert.rejects(certs.migrate(), /foreign pool: connect/);
    assert.ok(foreign.calls.includes('connect'));
  });

  it('pg that is neither connection options nor a pool is INVALID_CONFIG, before any connection', () => {
    for (const bad of ['postgres://u:secret@h/db', {}, { connectionString: '' }, { connectionString: 'postgres://h/db', max: 0 }, { query() {} }, null, undefined]) {
      assert.throws(
        () => new GatewayAllocator(options(bad)),
        (e: unknown) => isAllocatorError(e, 'INVALID_CONFIG') && /pg must be \{ connectionString, max\? \} or a pg\.Pool/.test((e as Error).message) && !(e as Error).message.includes('secret'),
        JSON.stringify(bad),
      );
    }
    assert.throws(
      () => new OrgCertificates({ issuer: { kind: 'dev-ca', issue: () => Promise.reject(new Error('unused')) }, encryptionKey: Buffer.alloc(32, 7), pg: 'postgres://h/db' as unknown as Pool }),
      (e: unknown) => isAllocatorError(e, 'INVALID_CONFIG'),
    );
  });
});
