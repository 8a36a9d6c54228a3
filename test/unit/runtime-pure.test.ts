import { strict as assert } from 'assert';
import { Batcher } from '../../runtime/batcher';
import { AllocatorError, definitelyNotApplied } from '../../runtime/errors';
import { configVersion, orgIdOfRouteFile, renderOrgsConf, renderRoute, routeFileName } from '../../runtime/nginx-config';
import { assertOrganizationId, validateInventory } from '../../runtime/validation';

describe('runtime pure logic', () => {
  const org = 'a3bb189e-8bf9-3888-9912-ace4e6543002';

  it('accepts only canonical lowercase UUIDs as organization ids', () => {
    assert.doesNotThrow(() => assertOrganizationId(org));
    for (const bad of [org.toUpperCase(), `{${org}}`, `${org}\n`, '', 'x'.repeat(10_000), 7, null, `${org.slice(0, 35)};`]) {
      assert.throws(() => assertOrganizationId(bad), (e: unknown) => e instanceof AllocatorError && e.code === 'INVALID_ORGANIZATION_ID');
    }
  });

  it('validates a whole inventory and lists every problem', () => {
    assert.deepEqual(validateInventory([{ name: 'gw-pool-dev-0', host: 'gw-pool-dev-0', httpPort: 7100, vpnPort: 49100 }]).length, 1);
    assert.throws(
      () => validateInventory([{ name: 'Bad', host: 'a b', httpPort: 0, vpnPort: 1 }]),
      (e: unknown) => e instanceof AllocatorError && e.code === 'INVALID_GATEWAY' && /name/.test(e.message) && /host/.test(e.message) && /httpPort/.test(e.message),
    );
  });

  it('renders one organization server whose regex escapes the domain', () => {
    const conf = renderOrgsConf({ confDir: '/etc/nginx/demiurge', domain: 'a.b-c.local', listen: '443 ssl', certPath: '/c', keyPath: '/k', statusListen: '127.0.0.1:8099' });
    assert.match(conf, /org-\[0-9a-f\]\{8\}.*\\\.a\\\.b-c\\\.local\$"/);
    assert.equal((conf.match(/^server \{/gm) ?? []).length, 2, 'one org server plus the loopback status server');
    // The route is one shared-dict get per request (no njs per request), in the org location.
    // It calls a function of the init block (LuaJIT compiles that one; the same code inline never is).
    assert.match(conf, /location \/ \{\n\s+#[^\n]*\n\s+set_by_lua_block \$demiurge_gateway \{ return demiurge\.route\(\) \}/);
    // The id is cut out of $host at its fixed place before the domain (no regex per request).
    assert.match(conf, /function demiurge\.route\(\)\n\s+local h = var\.host\n/);
    assert.match(conf, /local FLAT = false\n\s+local DOMAIN = "a\.b-c\.local"$/m);
    assert.doesNotMatch(conf, /js_set \$demiurge_gateway/);
    assert.match(conf, /^lua_shared_dict demiurge_routes 32m;$/m);
    assert.match(conf, /location = \/__demiurge\/routes \{\n\s+content_by_lua_block \{ demiurge\.lookup\(\) \}/);
    assert.match(conf, /location = \/__demiurge\/routes\/load \{\n\s+content_by_lua_block \{ demiurge\.load\(\) \}/);
    assert.match(conf, /proxy_set_header Upgrade \$http_upgrade;/);
  });

  it('route files round-trip their organization id and carry the ownership header', () => {
    assert.equal(orgIdOfRouteFile(routeFileName(org)), org);
    assert.equal(orgIdOfRouteFile('org-../../x.conf'), undefined);
    assert.match(renderRoute('dev-001', org, 'gw-pool-dev-001-0', '10.0.0.2', 7100), new RegExp(`^# owner=demiurge-allocator env=dev-001 org=${org} gateway=gw-pool-dev-001-0\\n${org} "10.0.0.2:7100";\\n$`));
  });

  it('the status server answers the base configuration version it was rendered with', () => {
    const o = { confDir: '/x', domain: 'd.local', listen: '443 ssl', certPath: '/c', keyPath: '/k', statusListen: '127.0.0.1:1' };
    assert.notEqual(configVersion(renderOrgsConf(o)), configVersion(renderOrgsConf({ ...o, certPath: '/c2' })));
    assert.match(renderOrgsConf(o, 'abc'), /local VERSION = "abc"/);
  });

  it('the route table: loaded from the files only into an empty zone, loads serialized, no eviction, no fill on a miss', () => {
    const o = { confDir: '/etc/nginx/demiurge', domain: 'd.local', listen: '443 ssl', certPath: '/c', keyPath: '/k', statusListen: '127.0.0.1:1' };
    const conf = renderOrgsConf(o, 'v1');
    const init = /init_by_lua_block \{\n([\s\S]+?)\n\}\n/.exec(conf)?.[1] ?? '';
    assert.ok(init, 'one init_by_lua_block');
    assert.match(init, /local ROUTES = "\/etc\/nginx\/demiurge\/routes\/"/);
    // A fresh start loads every file once, in ONE worker (init_worker: after the master bound its sockets), never
    // in the master; a HUP (zone kept, LOADED set) does not read them again.
    assert.match(conf, /init_worker_by_lua_block \{\n    demiurge\.start_worker\(\)\n\}/);
    const start = /function demiurge\.start_worker\(\)([\s\S]+?)\n    end\n/.exec(init)?.[1] ?? '';
    assert.match(start, /if routes:get\(LOADED\) or not routes:add\(LOADING, [^\n]+\n\s+return\n\s+end\n\s+load_all\(\)$/);
    assert.match(init, /local function load_all\(\)[\s\S]+opendir\(ROUTES\)[\s\S]+routes:set\(LOADED, true\)/);
    assert.doesNotMatch(init.replace(/function [\s\S]+?\n    end\n/g, ''), /load_all\(\)/, 'the init block itself (the master) loads nothing');
    // A load waits for the initial load, then holds the cross-worker lock around its reads and writes.
    const load = /function demiurge\.load\(\)([\s\S]+?)\n    end(?:\n|$)/.exec(init)?.[1] ?? '';
    assert.ok(load.indexOf('wait_loaded()') >= 0 && load.indexOf('wait_loaded()') < load.indexOf('routes:add(LOCK'));
    assert.ok(load.indexOf('routes:add(LOCK') < load.indexOf('read_route(id)') && load.indexOf('read_route(id)') < load.indexOf('routes:delete(LOCK)'));
    assert.doesNotMatch(init, /routes:set\(id/, 'entries use safe_set: a full table never evicts another route');
    // The request path reads the table only: a miss is never filled from a file.
    const location = /location \/ \{([\s\S]+?)\n    \}/.exec(conf)?.[1] ?? '';
    assert.doesNotMatch(location, /read_route|io\.open|load/);
    const route = /function demiurge\.route\(\)([\s\S]+?)\n    end/.exec(conf)?.[1] ?? '';
    assert.match(route, /get\(routes, sub\(h, at \+ 1, last\)\)/);
    assert.doesNotMatch(route, /read_route|io\.open|load|demiurge_org_id/);
    const flat = renderOrgsConf({ ...o, naming: 'flat' });
    assert.match(flat, /local FLAT = true$/m);
    assert.match(flat, /get\(routes, demiurge\.uuid_of\(compact\)\)/);
  });

  it('classifies failures that certainly changed nothing', () => {
    assert.equal(definitelyNotApplied(new AllocatorError('DNS_FAILED', 'x', { notApplied: true })), true);
    assert.equal(definitelyNotApplied(new AllocatorError('DNS_FAILED', 'timeout')), false);
    assert.equal(definitelyNotApplied(new Error('x')), false);
  });

  it('Batcher coalesces a burst into few flushes and shares a batch failure', async () => {
    const sizes: number[] = [];
    const b = new Batcher<number>(async (items) => {
      sizes.push(items.length);
      await new Promise((r) => setTimeout(r, 20));
      if (items.includes(-1)) throw new Error('boom');
    });
    await Promise.all(Array.from({ length: 100 }, (_, i) => b.submit(i)));
    assert.deepEqual(sizes, [100]);
    const first = b.submit(1);
    const failing = b.submit(-1);
    await assert.rejects(failing, /boom/);
    await assert.rejects(first, /boom/);
    await b.idle();
  });
});
