import { strict as assert } from 'assert';
import { EventEmitter } from 'events';
import { builtinModules } from 'module';
import * as path from 'path';
import { build } from 'esbuild';
import * as http from 'http';
import type { AddressInfo } from 'net';
import * as net from 'net';
import {
  AgentEvent,
  backoffDelay,
  DEFAULT_RETRY,
  GatewayAgent,
  GatewayClient,
  GatewayClientError,
  GatewayClientEvent,
  GatewayClientOptions,
  LoadedOrganization,
  ManualScheduler,
  OrgSnapshot,
  UnloadReason,
} from '../../runtime/gateway-client';
import { applyChange, emptyDocument, fromSnapshot, parseChange, toSnapshot } from '../../runtime/gateway-app/org-document';
import { DefaultApp } from '../../runtime/gateway-app/server';
import { loadSettings, parseListen } from '../../runtime/gateway-app/settings';
import { acceptEcho, acceptKey, encodeFrame, FrameDecoder, OPCODES, ProtocolError } from '../../runtime/gateway-app/websocket';
import { FakeApiFetch } from '../helpers/fake-api-fetch';

const REG = FakeApiFetch.registrationToken;
const ALLOC = FakeApiFetch.allocationToken;

function setup(extra: Partial<GatewayClientOptions> = {}): { api: FakeApiFetch; sched: ManualScheduler; client: GatewayClient; events: GatewayClientEvent[] } {
  const api = new FakeApiFetch();
  const sched = new ManualScheduler();
  const events: GatewayClientEvent[] = [];
  const client = new GatewayClient({
    baseUrl: 'http://api.test:6000/',
    gatewayId: api.gatewayId,
    registrationToken: REG,
    fetch: api.fetch,
    scheduler: sched,
    random: () => 0,
    timeoutMs: 1000,
    logger: (e) => events.push(e),
    ...extra,
  });
  return { api, sched, client, events };
}

/** Runs the scheduler's timers until `p` settles (no real time passes). */
async function drive<T>(sched: ManualScheduler, p: Promise<T>, maxTimers = 100): Promise<T> {
  let state: 'pending' | 'ok' | 'err' = 'pending';
  let value: T | undefined;
  let error: unknown;
  p.then(
    (v) => ((state = 'ok'), (value = v)),
    (e: unknown) => ((state = 'err'), (error = e)),
  );
  for (let i = 0; ; i += 1) {
    await sched.settle();
    if (state !== 'pending') break;
    if (sched.pending().length === 0) throw new Error('the call neither settled nor left a timer to run');
    if (i >= maxTimers) throw new Error(`not settled after ${maxTimers} timers`);
    await sched.next();
  }
  if (state === 'err') throw error;
  return value as T;
}

async function rejects(p: Promise<unknown>): Promise<GatewayClientError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof GatewayClientError, `expected a GatewayClientError, got ${String(err)}`);
    return err;
  }
  throw new Error('expected a rejection');
}

describe('gateway client: back-off', () => {
  it('grows exponentially to the cap; jitter takes away at most its fraction', () => {
    const seq = Array.from({ length: 8 }, (_, i) => backoffDelay(i, DEFAULT_RETRY, () => 0));
    assert.deepEqual(seq, [250, 500, 1000, 2000, 4000, 8000, 10000, 10000]);
    const jittered = Array.from({ length: 8 }, (_, i) => backoffDelay(i, DEFAULT_RETRY, () => 0.999999));
    assert.deepEqual(jittered, [125, 250, 500, 1000, 2000, 4000, 5000, 5000]);
    assert.equal(backoffDelay(2, { ...DEFAULT_RETRY, jitter: 0 }, () => 0.7), 1000);
  });
});

describe('gateway client: requests, retries, errors', () => {
  it('ready retries network errors and 5xx with the back-off sequence, then answers', async () => {
    const { api, sched, client, events } = setup();
    api.queue('/ready', { networkError: 'ECONNREFUSED' }, { status: 502, raw: '<html>bad gateway</html>' }, { status: 503, body: { success: false, code: 'DATABASE_FAILED', message: 'x', retryable: true } });
    const start = sched.now();
    const r = await drive(sched, client.ready());
    assert.deepEqual(r, { gatewayId: api.gatewayId, state: 'ready' });
    assert.equal(api.calls.length, 4);
    assert.deepEqual(events.filter((e) => e.event === 'gateway_client.retry').map((e) => [e.code, e.status, e.delay_ms]), [
      ['NETWORK_ERROR', 0, 250],
      ['HTTP_ERROR', 502, 500],
      ['DATABASE_FAILED', 503, 1000],
    ]);
    assert.equal(sched.now() - start, 1750, 'waited exactly the back-off delays');
  });

  it('honours Retry-After on 429 (capped by the policy)', async () => {
    const { api, sched, client, events } = setup();
    api.queue('/ready', { status: 429, raw: 'slow down', headers: { 'Retry-After': '3' } });
    await drive(sched, client.ready());
    assert.equal(events[0].delay_ms, 3000);
    assert.equal(api.calls.length, 2);
  });

  it('ready({ untilAnswered }) keeps trying past maxAttempts while the API is down', async () => {
    const { api, sched, client } = setup({ retry: { maxAttempts: 2 } });
    for (let i = 0; i < 12; i += 1) api.queue('/ready', { networkError: 'ECONNREFUSED' });
    await drive(sched, client.ready({ untilAnswered: true }));
    assert.equal(api.calls.length, 13);
    const failed = await rejects((api.queue('/ready', { networkError: 'ECONNREFUSED' }, { networkError: 'ECONNREFUSED' }), drive(sched, client.ready())));
    assert.equal(failed.code, 'NETWORK_ERROR');
    assert.equal(failed.attempts, 2);
  });

  it('non-retryable API errors fail fast with their code and status', async () => {
    const { api, sched, client } = setup();
    const wrong = new GatewayClient({ baseUrl: 'http://api.test:6000', gatewayId: api.gatewayId, registrationToken: 'wrong-token-0123456789', fetch: api.fetch, scheduler: sched });
    const e1 = await rejects(drive(sched, wrong.ready({ untilAnswered: true })));
    assert.deepEqual([e1.code, e1.status, e1.retryable, e1.attempts, e1.endpoint], ['UNAUTHENTICATED', 401, false, 1, '/gateway/ready']);
    api.queue('/ready', { status: 500, body: { success: false, code: 'INTERNAL', message: 'internal error', retryable: false } });
    const e2 = await rejects(drive(sched, client.ready()));
    assert.deepEqual([e2.code, e2.status, e2.attempts], ['INTERNAL', 500, 1]);
    api.queue('/ready', { status: 418, body: { success: false, code: 'TEAPOT', message: 'new code', retryable: false } });
    const e3 = await rejects(drive(sched, client.ready()));
    assert.deepEqual([e3.code, e3.apiCode, e3.status], ['HTTP_ERROR', 'TEAPOT', 418]);
    api.queue('/ready', { status: 200, raw: 'not json' });
    assert.equal((await rejects(drive(sched, client.ready()))).code, 'BAD_RESPONSE');
    assert.equal(sched.pending().length, 0, 'no retry timer left behind');
  });

  it('gives up after maxAttempts with the last error', async () => {
    const { api, sched, client } = setup();
    for (let i = 0; i < 6; i += 1) api.queue('/ready', { status: 503, body: { success: false, code: 'POOL_EXHAUSTED', message: 'x', retryable: true } });
    const err = await rejects(drive(sched, client.ready()));
    assert.deepEqual([err.code, err.retryable, err.attempts], ['POOL_EXHAUSTED', true, 5]);
    assert.equal(api.calls.length, 5);
  });

  it('times out a silent API and retries idempotent calls only', async () => {
    const { api, sched, client } = setup();
    api.queue('/ready', { hang: true });
    const start = sched.now();
    await drive(sched, client.ready());
    assert.equal(sched.now() - start, 1000 + 250, 'one timeout, one back-off');
    // /config uses its handshake up: a timeout (maybe consumed) is not repeated, a refused connection is.
    api.queue('/config', { hang: true });
    const t = await rejects(drive(sched, client.config(api.handshake)));
    assert.deepEqual([t.code, t.attempts], ['TIMEOUT', 1]);
    api.queue('/config', { networkError: 'ECONNREFUSED' });
    const s = await drive(sched, client.config(api.handshake));
    assert.equal(s.organizationId, api.organizationId);
    api.queue('/config', { networkError: 'ECONNRESET' });
    assert.equal((await rejects(drive(sched, client.config(api.handshake)))).attempts, 1);
  });

  it('an aborted call stops retrying', async () => {
    const { api, sched, client } = setup();
    api.queue('/ready', { networkError: 'ECONNREFUSED' }, { networkError: 'ECONNREFUSED' });
    const ac = new AbortController();
    const p = client.ready({ signal: ac.signal });
    await sched.settle();
    ac.abort();
    const err = await rejects(drive(sched, p));
    assert.equal(err.code, 'ABORTED');
    assert.equal(api.calls.length, 1);
  });

  it('validates its options before any request', () => {
    const api = new FakeApiFetch();
    const make = (o: Partial<GatewayClientOptions>) => () => new GatewayClient({ baseUrl: 'http://a:1', gatewayId: 'gw-0', registrationToken: REG, fetch: api.fetch, ...o });
    assert.throws(make({ baseUrl: 'ftp://a' }), /INVALID_ARGUMENT|http/);
    assert.throws(make({ baseUrl: 'http://user:pw@a:1' }), /credentials/);
    assert.throws(make({ gatewayId: 'GW_0' }), /gateway name/);
    assert.throws(make({ registrationToken: 'short' }), /registrationToken/);
    assert.equal(api.calls.length, 0);
  });
});

describe('gateway client: tokens', () => {
  it('sends the registration token to /ready only and the allocation token for the session', async () => {
    const { api, sched, client, events } = setup();
    await drive(sched, client.ready());
    const session = await drive(sched, client.config(api.handshake));
    assert.deepEqual(session.config, { organization_name: 'Acme' });
    await drive(sched, session.pull());
    await drive(sched, session.loaded());
    await drive(sched, session.push({ yjs_state: {}, gateway_state: { n: 1 } }));
    await drive(sched, session.heartbeat());
    assert.deepEqual((await drive(sched, session.stop())).released, true);
    assert.deepEqual(
      api.calls.map((c) => [c.path, c.token === REG ? 'registration' : c.token === ALLOC ? 'allocation' : String(c.token)]),
      [['/ready', 'registration'], ['/config', 'undefined'], ['/data/pull', 'allocation'], ['/ready', 'allocation'], ['/data/push', 'allocation'], ['/heartbeat', 'allocation'], ['/stop', 'allocation']],
    );
    assert.equal(api.calls[1].body.handshake_token, api.handshake, 'the handshake goes in the body, once');
    const visible = JSON.stringify([client, session, events, String(session), Object.keys(session)]);
    for (const secret of [REG, ALLOC]) assert.ok(!visible.includes(secret), 'a token is visible');
    assert.ok(session.ended);
    assert.equal((await rejects(session.heartbeat())).code, 'SESSION_ENDED');
  });

  it('TOKEN_REVOKED ends the session; error messages never carry the token', async () => {
    const { api, sched, client } = setup();
    const session = await drive(sched, client.config(api.handshake));
    api.allocationLive = false;
    const err = await rejects(drive(sched, session.push({ yjs_state: {}, gateway_state: {} })));
    assert.deepEqual([err.code, err.status, err.sessionEnded], ['TOKEN_REVOKED', 401, true]);
    assert.ok(!err.message.includes(ALLOC) && !(err.stack ?? '').includes(ALLOC));
    assert.ok(session.ended);
    assert.equal(api.calls.length, 2, 'not retried');
  });

  it('refuses a malformed handshake without calling the API', async () => {
    const { api, client } = setup();
    assert.equal((await rejects(client.config('bad token'))).code, 'INVALID_ARGUMENT');
    assert.equal(api.calls.length, 0);
  });
});

// ---------------------------------------------------------------- agent

interface Harness {
  api: FakeApiFetch;
  sched: ManualScheduler;
  agent: GatewayAgent;
  log: AgentEvent[];
  loads: LoadedOrganization[];
  unloads: UnloadReason[];
  signals: EventEmitter;
  exited: string[];
  data: { value: OrgSnapshot };
}

const IDLE = 10_000;

function agentSetup(): Harness {
  const { api, sched, client } = setup();
  const log: AgentEvent[] = [];
  const loads: LoadedOrganization[] = [];
  const unloads: UnloadReason[] = [];
  const signals = new EventEmitter();
  const exited: string[] = [];
  const data = { value: { yjs_state: {}, gateway_state: { n: 0 } } as OrgSnapshot };
  const agent = new GatewayAgent({
    client,
    hooks: {
      load: (o) => {
        loads.push(o);
        if (o.data) data.value = o.data;
      },
      snapshot: () => data.value,
      unload: (r) => {
        unloads.push(r);
      },
    },
    idleTimeoutMs: IDLE,
    pushIntervalMs: 3000,
    heartbeatIntervalMs: 2000,
    registrationRetryMs: 5000,
    signals,
    onSignalHandled: (s) => exited.push(s),
    logger: (e) => log.push(e),
  });
  return { api, sched, agent, log, loads, unloads, signals, exited, data };
}

async function serving(h: Harness): Promise<void> {
  await drive(h.sched, h.agent.start());
  assert.equal(h.agent.state, 'ready');
  h.agent.acceptHandshake({ handshake_token: h.api.handshake, organization_id: h.api.organizationId, gateway_id: h.api.gatewayId });
  await h.sched.settle();
  assert.equal(h.agent.state, 'serving');
  h.api.calls.length = 0;
}

function change(h: Harness, n: number): void {
  h.data.value = { yjs_state: {}, gateway_state: { n } };
  h.agent.markDirty();
}

describe('gateway agent: life cycle', () => {
  it('registers, takes an organization (config → pull → loaded) and logs each state change', async () => {
    const h = agentSetup();
    h.api.stored = { data: { yjs_state: {}, gateway_state: { n: 41 } }, timestamp: '2026-01-01T00:00:00.000Z', version: 3 };
    h.api.queue('/ready', { networkError: 'ECONNREFUSED' });
    await drive(h.sched, h.agent.start());
    h.agent.acceptHandshake({ handshake_token: h.api.handshake, organization_id: h.api.organizationId, gateway_id: h.api.gatewayId });
    await h.sched.settle();
    assert.deepEqual(h.api.paths(), ['/ready', '/ready', '/config', '/data/pull', '/ready']);
    assert.equal(h.agent.state, 'serving');
    assert.equal(h.agent.organizationId, h.api.organizationId);
    assert.deepEqual(h.loads.map((l) => [l.organizationId, l.version, l.config.organization_name]), [[h.api.organizationId, 3, 'Acme']]);
    assert.deepEqual(h.data.value.gateway_state, { n: 41 });
    assert.deepEqual(h.log.filter((e) => e.event === 'gateway.state').map((e) => `${e.from}->${e.to}`), ['registering->ready', 'ready->loading', 'loading->serving']);
    for (const secret of [REG, ALLOC, h.api.handshake]) assert.ok(!JSON.stringify(h.log).includes(secret), 'a token in the log');
  });

  it('validates /collab/start bodies before anything happens; a forged handshake changes nothing', async () => {
    const h = agentSetup();
    await serving(h);
    const refusal = (body: unknown): string => {
      try {
        h.agent.acceptHandshake(body);
      } catch (err) {
        return (err as GatewayClientError).code;
      }
      return 'accepted';
    };
    assert.equal(refusal([]), 'INVALID_ARGUMENT');
    assert.equal(refusal({ handshake_token: 'x', organization_id: h.api.organizationId }), 'INVALID_ARGUMENT');
    assert.equal(refusal({ handshake_token: h.api.handshake, organization_id: 'ORG' }), 'INVALID_ARGUMENT');
    assert.equal(refusal({ handshake_token: h.api.handshake, organization_id: h.api.organizationId, gateway_id: 'gw-other' }), 'FORBIDDEN');
    assert.equal(h.api.calls.length, 0);
    assert.equal(refusal({ handshake_token: 'forged-handshake-0123456789', organization_id: h.api.organizationId }), 'accepted');
    await h.sched.settle();
    assert.deepEqual(h.api.paths(), ['/config']);
    assert.equal(h.agent.state, 'serving');
    assert.equal(h.log.at(-1)?.code, 'HANDSHAKE_INVALID');
  });

  it('heartbeats every interval (≤ 30 s) and pushes periodically only what changed', async () => {
    const h = agentSetup();
    await serving(h);
    await h.sched.advance(2000);
    assert.deepEqual(h.api.paths(), ['/heartbeat']);
    await h.sched.advance(1000);
    assert.deepEqual(h.api.paths(), ['/heartbeat'], 'nothing changed: no push');
    change(h, 1);
    await h.sched.advance(3000);
    assert.deepEqual(h.api.paths().filter((p) => p === '/data/push'), ['/data/push']);
    assert.deepEqual(h.api.stored?.data, { yjs_state: {}, gateway_state: { n: 1 } });
    assert.equal(h.agent.status().dirty, false);
    assert.equal(h.agent.status().lastPush?.version, 1);
    assert.throws(() => new GatewayAgent({ client: h.agent.client, hooks: { load: () => undefined, snapshot: () => h.data.value, unload: () => undefined }, heartbeatIntervalMs: 31_000 }), /≤ 30000/);
  });

  it('idle timer: activity resets it; on expiry push → stop → ready again, for another organization without a restart', async () => {
    const h = agentSetup();
    await serving(h);
    change(h, 7);
    await h.sched.advance(IDLE - 1000);
    h.agent.activity();
    await h.sched.advance(5000);
    assert.equal(h.agent.state, 'serving', 'activity restarted the idle timer');
    h.api.calls.length = 0;
    change(h, 8);
    await h.sched.advance(IDLE);
    assert.equal(h.agent.state, 'ready');
    assert.deepEqual(h.api.paths().filter((p) => p !== '/heartbeat'), ['/data/push', '/stop', '/ready']);
    assert.equal(h.api.calls.at(-1)?.token, REG, 'back to the pool with the registration token');
    assert.deepEqual(h.api.stored?.data, { yjs_state: {}, gateway_state: { n: 8 } });
    assert.deepEqual(h.unloads, ['idle']);
    assert.equal(h.agent.organizationId, null);
    const calls = h.api.calls.length;
    await h.sched.advance(60_000);
    assert.equal(h.api.calls.length, calls, 'no timers of the old session are left');
    // The next organization (here: the same, allocated again) gets the pushed data.
    h.agent.acceptHandshake({ handshake_token: h.api.handshake, organization_id: h.api.organizationId });
    await h.sched.settle();
    assert.equal(h.agent.state, 'serving');
    assert.deepEqual(h.loads.at(-1)?.data, { yjs_state: {}, gateway_state: { n: 8 } });
  });

  it('a failing final push defers the stop (nothing is released unless its data is safe)', async () => {
    const h = agentSetup();
    await serving(h);
    await h.sched.advance(IDLE - 1);
    // Changed just before the idle timer fires (after the last periodic push).
    change(h, 2);
    for (let i = 0; i < 5; i += 1) h.api.queue('/data/push', { status: 503, body: { success: false, code: 'DATABASE_FAILED', message: 'x', retryable: true } });
    h.api.calls.length = 0;
    await drive(h.sched, new Promise<void>((resolve) => h.agent.onStateChange((_to, from) => from === 'stopping' && resolve())));
    assert.equal(h.agent.state, 'serving');
    assert.ok(!h.api.paths().includes('/stop'));
    assert.ok(h.log.some((e) => e.event === 'gateway.stop_deferred' && e.code === 'DATABASE_FAILED'));
  });

  it('TOKEN_REVOKED (the API released this gateway) ends the session and returns to ready', async () => {
    const h = agentSetup();
    await serving(h);
    h.api.allocationLive = false;
    await h.sched.advance(2000);
    assert.equal(h.agent.state, 'ready');
    assert.deepEqual(h.api.paths(), ['/heartbeat', '/ready']);
    assert.deepEqual(h.unloads, ['revoked']);
    assert.ok(h.log.some((e) => e.event === 'gateway.session_ended' && e.code === 'TOKEN_REVOKED'));
  });

  it('an organization that fails to load is given back (stop) and the gateway returns to the pool', async () => {
    const h = agentSetup();
    await drive(h.sched, h.agent.start());
    h.api.queue('/data/pull', { status: 400, body: { success: false, code: 'INVALID_REQUEST', message: 'x', retryable: false } });
    h.api.calls.length = 0;
    h.agent.acceptHandshake({ handshake_token: h.api.handshake, organization_id: h.api.organizationId });
    await h.sched.settle();
    assert.deepEqual(h.api.paths(), ['/config', '/data/pull', '/stop', '/ready']);
    assert.equal(h.agent.state, 'ready');
    assert.deepEqual(h.unloads, ['load_failed']);
  });

  it('a new hand-over of the same organization keeps unpushed changes (pushed with the new token) and reloads', async () => {
    const h = agentSetup();
    await serving(h);
    change(h, 9);
    h.agent.acceptHandshake({ handshake_token: h.api.handshake, organization_id: h.api.organizationId });
    await h.sched.settle();
    assert.deepEqual(h.api.paths(), ['/config', '/data/push', '/data/pull', '/ready']);
    assert.deepEqual(h.unloads, ['superseded']);
    assert.deepEqual(h.loads.at(-1)?.data, { yjs_state: {}, gateway_state: { n: 9 } });
    assert.equal(h.agent.state, 'serving');
  });

  it('a refused registration is asked again after registrationRetryMs', async () => {
    const h = agentSetup();
    h.api.queue('/ready', { status: 404, body: { success: false, code: 'UNKNOWN_GATEWAY', message: 'x', retryable: false } });
    const started = h.sched.now();
    await drive(h.sched, h.agent.start());
    assert.equal(h.agent.state, 'ready');
    assert.equal(h.sched.now() - started, 5000);
    assert.equal(h.log.find((e) => e.event === 'gateway.register_refused')?.code, 'UNKNOWN_GATEWAY');
  });

  it('SIGTERM: pushes what changed, stops, shuts down, then hands over to the app', async () => {
    const h = agentSetup();
    await serving(h);
    change(h, 5);
    h.signals.emit('SIGTERM');
    await h.sched.settle();
    assert.deepEqual(h.api.paths(), ['/data/push', '/stop']);
    assert.deepEqual(h.api.stored?.data, { yjs_state: {}, gateway_state: { n: 5 } });
    assert.equal(h.agent.state, 'shut_down');
    assert.deepEqual(h.exited, ['SIGTERM']);
    assert.deepEqual(h.unloads, ['shutdown']);
    assert.throws(() => h.agent.acceptHandshake({ handshake_token: h.api.handshake, organization_id: h.api.organizationId }), /shutting down/);
    await h.sched.advance(60_000);
    assert.deepEqual(h.api.paths(), ['/data/push', '/stop'], 'nothing after the shutdown');
    h.agent.dispose();
    assert.equal(h.signals.listenerCount('SIGTERM'), 0);
  });

  it('SIGTERM with an unreachable API gives up within the shutdown budget', async () => {
    const h = agentSetup();
    await serving(h);
    change(h, 6);
    for (let i = 0; i < 10; i += 1) h.api.queue('/data/push', { hang: true });
    const start = h.sched.now();
    h.signals.emit('SIGTERM');
    await drive(h.sched, new Promise<void>((r) => h.agent.onStateChange((to) => to === 'shut_down' && r())));
    assert.ok(h.sched.now() - start <= 6000, `took ${h.sched.now() - start} ms`);
    assert.ok(!h.api.paths().includes('/stop'), 'not released without its data');
    assert.deepEqual(h.exited, ['SIGTERM']);
  });
});

describe('gateway agent: hot reload hand-off', () => {
  /** A second agent (the reload's new process) against the same API and clock, not started. */
  function successor(h: Harness): { agent: GatewayAgent; loads: LoadedOrganization[]; log: AgentEvent[] } {
    const loads: LoadedOrganization[] = [];
    const log: AgentEvent[] = [];
    const client = new GatewayClient({ baseUrl: 'http://api.test:6000/', gatewayId: h.api.gatewayId, registrationToken: REG, fetch: h.api.fetch, scheduler: h.sched, random: () => 0, timeoutMs: 1000 });
    const agent = new GatewayAgent({
      client,
      hooks: { load: (o) => void loads.push(o), snapshot: () => loads[loads.length - 1]?.data ?? { yjs_state: {}, gateway_state: {} }, unload: () => undefined },
      idleTimeoutMs: IDLE,
      pushIntervalMs: 3000,
      heartbeatIntervalMs: 2000,
      logger: (e) => log.push(e),
    });
    return { agent, loads, log };
  }

  it('moves the session, the unpushed data and the idle clock to the new process without an API call; the old one sends nothing more', async () => {
    const h = agentSetup();
    await serving(h);
    change(h, 7);
    await h.sched.advance(4000);
    h.api.calls.length = 0;
    change(h, 8);
    const handOff = await h.agent.handOff();
    assert.equal(h.agent.state, 'stopping');
    assert.equal(handOff.organizationId, h.api.organizationId);
    assert.equal(handOff.gatewayToken, ALLOC);
    assert.equal(handOff.dirty, true);
    assert.deepEqual(handOff.data, { yjs_state: {}, gateway_state: { n: 8 } });
    assert.ok(handOff.quietMs >= 0 && handOff.quietMs <= IDLE);
    assert.throws(() => h.agent.acceptHandshake({ handshake_token: h.api.handshake, organization_id: h.api.organizationId }), /shutting down/);

    const next = successor(h);
    await next.agent.adopt(JSON.parse(JSON.stringify(handOff)));
    assert.equal(next.agent.state, 'serving');
    assert.equal(next.agent.organizationId, h.api.organizationId);
    assert.deepEqual(next.loads.map((l) => l.data), [{ yjs_state: {}, gateway_state: { n: 8 } }]);
    assert.deepEqual(h.api.paths(), [], 'adopting calls no API');

    // The old process: SIGTERM pushes nothing and releases nothing.
    h.signals.emit('SIGTERM');
    await h.sched.settle();
    assert.deepEqual(h.exited, ['SIGTERM']);
    // The new one: heartbeats and pushes the change it took over, with the allocation token.
    await h.sched.advance(3000);
    assert.ok(h.api.paths().includes('/heartbeat'), h.api.paths().join(','));
    assert.ok(h.api.paths().includes('/data/push'), h.api.paths().join(','));
    assert.ok(!h.api.paths().includes('/stop'));
    assert.deepEqual(h.api.stored?.data, { yjs_state: {}, gateway_state: { n: 8 } });
    h.agent.dispose();
    next.agent.dispose();
  });

  it('refuses a hand-off while a hand-over is pending (BUSY, ask again), and takes a hand-off back after a failed reload', async () => {
    const h = agentSetup();
    await drive(h.sched, h.agent.start());
    h.agent.acceptHandshake({ handshake_token: h.api.handshake, organization_id: h.api.organizationId, gateway_id: h.api.gatewayId });
    const busy = await rejects(h.agent.handOff());
    assert.equal(busy.code, 'BUSY');
    assert.equal(busy.retryable, true);
    await h.sched.settle();
    assert.equal(h.agent.state, 'serving');
    const handOff = await h.agent.handOff();
    await rejects(h.agent.handOff());
    // The new process failed: the old one takes its organization back and serves on.
    await h.agent.adopt(handOff);
    assert.equal(h.agent.state, 'serving');
    h.api.calls.length = 0;
    await h.sched.advance(2000);
    assert.deepEqual(h.api.paths(), ['/heartbeat']);
    // A started agent cannot adopt.
    const started = successor(h);
    await drive(h.sched, started.agent.start());
    assert.equal((await rejects(started.agent.adopt(handOff))).code, 'BUSY');
    h.agent.dispose();
  });

  it('a hand-off without an organization makes the new process register', async () => {
    const h = agentSetup();
    await drive(h.sched, h.agent.start());
    const handOff = await h.agent.handOff();
    assert.equal(handOff.organizationId, null);
    assert.equal(handOff.gatewayToken, null);
    const next = successor(h);
    h.api.calls.length = 0;
    await next.agent.adopt(handOff);
    await h.sched.settle();
    assert.equal(next.agent.state, 'ready');
    assert.deepEqual(h.api.paths(), ['/ready']);
  });
});

// ---------------------------------------------------------------- default app pieces

describe('gateway app: WebSocket codec and echo', () => {
  it('computes Sec-WebSocket-Accept as RFC 6455 §1.3 shows', () => {
    assert.equal(acceptKey('dGhlIHNhbXBsZSBub25jZQ=='), 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=');
  });

  it('round-trips masked frames of every length encoding, split anywhere', () => {
    const mask = Buffer.from([1, 2, 3, 4]);
    for (const len of [0, 1, 125, 126, 65535, 65536]) {
      const payload = Buffer.alloc(len, 'x');
      const frame = encodeFrame(OPCODES.binary, payload, { mask });
      const d = new FrameDecoder();
      const cut = Math.min(3, frame.length);
      const frames = [...d.push(frame.subarray(0, cut)), ...d.push(frame.subarray(cut))];
      assert.equal(frames.length, 1, `len ${len}`);
      assert.deepEqual([frames[0].opcode, frames[0].fin, frames[0].payload.equals(payload)], [OPCODES.binary, true, true]);
    }
    const two = Buffer.concat([encodeFrame(OPCODES.text, Buffer.from('a'), { mask }), encodeFrame(OPCODES.ping, Buffer.from('p'), { mask })]);
    assert.deepEqual(new FrameDecoder().push(two).map((f) => [f.opcode, f.payload.toString()]), [[1, 'a'], [9, 'p']]);
  });

  it('rejects unmasked client frames, oversized frames and fragmented control frames', () => {
    const code = (frame: Buffer): number => {
      try {
        new FrameDecoder().push(frame);
      } catch (err) {
        return (err as ProtocolError).closeCode;
      }
      return 0;
    };
    assert.equal(code(encodeFrame(OPCODES.text, Buffer.from('hi'))), 1002);
    const huge = Buffer.from([0x82, 0xff, 0, 0, 0, 0, 0x7f, 0, 0, 0]);
    assert.equal(code(huge), 1009);
    assert.equal(code(encodeFrame(OPCODES.ping, Buffer.from('x'), { fin: false, mask: Buffer.alloc(4) })), 1002);
  });

  it('echoes text (also fragmented), answers ping with pong and close with close, over a real socket', async () => {
    const server = http.createServer();
    server.on('upgrade', (req, socket, head: Buffer) => acceptEcho(req, socket, head));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    try {
      const sock = net.connect(port, '127.0.0.1');
      const received: Buffer[] = [];
      sock.on('data', (c: Buffer) => received.push(c));
      const closed = new Promise<void>((r) => sock.on('close', () => r()));
      const mask = Buffer.from([9, 8, 7, 6]);
      sock.write('GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n');
      sock.write(encodeFrame(OPCODES.text, Buffer.from('hel'), { fin: false, mask }));
      sock.write(encodeFrame(OPCODES.continuation, Buffer.from('lo'), { mask }));
      sock.write(encodeFrame(OPCODES.ping, Buffer.from('p1'), { mask }));
      const status = Buffer.alloc(2);
      status.writeUInt16BE(1000, 0);
      sock.write(encodeFrame(OPCODES.close, status, { mask }));
      await closed;
      const all = Buffer.concat(received);
      const headEnd = all.indexOf('\r\n\r\n');
      assert.match(all.subarray(0, headEnd).toString(), /^HTTP\/1\.1 101[\s\S]*Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK\+xOo=/);
      const frames = new FrameDecoder(false).push(all.subarray(headEnd + 4));
      assert.deepEqual(frames.map((f) => [f.opcode, f.opcode === OPCODES.close ? f.payload.readUInt16BE(0) : f.payload.toString()]), [
        [OPCODES.text, 'hello'],
        [OPCODES.pong, 'p1'],
        [OPCODES.close, 1000],
      ]);
    } finally {
      server.close();
    }
  });
});

describe('gateway app: settings and organization document', () => {
  const base = { GATEWAY_ID: 'gw-pool-dev-0', GATEWAY_TOKEN: REG, GANYMEDE_FQDN: 'ganymede.domain.local' };

  it('defaults: the seed idle rule, https://$GANYMEDE_FQDN, 127.0.0.1:8888', () => {
    const s = loadSettings(base);
    assert.deepEqual(
      [s.ganymedeUrl, s.idleTimeoutMs, s.pushIntervalMs, s.heartbeatIntervalMs, s.listenHost, s.listenPort],
      ['https://ganymede.domain.local', 300_000, 60_000, 20_000, '127.0.0.1', 8888],
    );
    const t = loadSettings({ ...base, GANYMEDE_URL: 'http://demiurge-dev-dev:6000/', GATEWAY_IDLE_TIMEOUT_MS: '2000', APP_LISTEN: '127.5.6.7:0' });
    assert.deepEqual([t.ganymedeUrl, t.idleTimeoutMs, t.listenHost, t.listenPort], ['http://demiurge-dev-dev:6000', 2000, '127.5.6.7', 0]);
    assert.deepEqual(parseListen(':9000'), { host: '127.0.0.1', port: 9000 });
  });

  it('refuses bad settings with the variable named and no secret shown', () => {
    assert.throws(() => loadSettings({ ...base, GATEWAY_ID: '' }), /GATEWAY_ID/);
    assert.throws(() => loadSettings({ ...base, GATEWAY_TOKEN: 'x' }), (e: Error) => /GATEWAY_TOKEN/.test(e.message) && !e.message.includes('x"'));
    assert.throws(() => loadSettings({ GATEWAY_ID: 'gw-0', GATEWAY_TOKEN: REG }), /GANYMEDE_URL/);
    assert.throws(() => loadSettings({ ...base, GATEWAY_HEARTBEAT_INTERVAL_MS: '45000' }), /GATEWAY_HEARTBEAT_INTERVAL_MS/);
    assert.throws(() => loadSettings({ ...base, GATEWAY_PUSH_INTERVAL_MS: '1e3' }), /whole number/);
    assert.throws(() => loadSettings({ ...base, APP_LISTEN: 'nope' }), /APP_LISTEN/);
  });

  it('the document round-trips through the API snapshot shape and validates changes', () => {
    const now = new Date('2026-01-01T00:00:00Z');
    const doc = applyChange(applyChange(emptyDocument(), { increment: 2 }, now), { note: 'hello' }, now);
    assert.deepEqual(fromSnapshot(toSnapshot(doc)), doc);
    assert.deepEqual(fromSnapshot(null), emptyDocument());
    assert.deepEqual(fromSnapshot({ yjs_state: {}, gateway_state: { default_app: { counter: 'x' } } }), emptyDocument());
    assert.deepEqual(parseChange({ increment: 1 }), { increment: 1 });
    assert.equal(typeof parseChange({ increment: 1.5 }), 'string');
    assert.equal(typeof parseChange({ note: '' }), 'string');
    assert.equal(typeof parseChange({ note: 'a', increment: 1 }), 'string');
  });
});

describe('gateway app: bundle', () => {
  it('bundles with esbuild into one file that needs nothing but Node built-ins', async () => {
    const r = await build({
      entryPoints: [path.resolve(__dirname, '..', '..', 'runtime/gateway-app/main.ts')],
      bundle: true,
      platform: 'node',
      target: 'node20',
      write: false,
      metafile: true,
      outfile: 'main.js',
      logLevel: 'silent',
    });
    assert.equal(r.outputFiles.length, 1);
    const imports = Object.values(r.metafile.outputs).flatMap((o) => o.imports.map((i) => i.path));
    assert.deepEqual(imports.filter((i) => !builtinModules.includes(i.replace(/^node:/, ''))), [], 'imports that are not Node built-ins');
    assert.deepEqual(Object.keys(r.metafile.inputs).filter((f) => f.includes('node_modules')), [], 'packages bundled into the gateway app');
  });
});

describe('gateway app: HTTP surface', () => {
  async function appServer(): Promise<{ h: Harness; app: DefaultApp; port: number; close: () => Promise<void> }> {
    const h = agentSetup();
    const app = new DefaultApp({ buildId: 'b-1', file: '/x', fields: { build_id: 'b-1' } }, () => h.sched.now());
    // The app's hooks, on the harness's agent and fake API.
    const agent = new GatewayAgent({ client: h.agent.client, hooks: app.hooks, idleTimeoutMs: IDLE, heartbeatIntervalMs: 2000, pushIntervalMs: 3000 });
    app.agent = agent;
    h.agent = agent;
    const server = http.createServer(app.handle);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return { h, app, port: (server.address() as AddressInfo).port, close: () => new Promise((r) => server.close(() => r())) };
  }

  function request(port: number, method: string, urlPath: string, body?: unknown): Promise<{ status: number; text: string }> {
    return new Promise((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port, method, path: urlPath, headers: { 'content-type': 'application/json' } }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      });
      req.on('error', reject);
      req.end(body === undefined ? undefined : JSON.stringify(body));
    });
  }

  it('without an organization: the page says so, data changes are refused, /healthz names the build', async () => {
    const { h, port, close } = await appServer();
    try {
      await drive(h.sched, h.agent.start());
      const page = await request(port, 'GET', '/');
      assert.equal(page.status, 200);
      assert.match(page.text, /id="org-none"/);
      assert.match(page.text, /id="build">b-1</);
      const change = await request(port, 'POST', '/_app/data', { increment: 1 });
      assert.deepEqual([change.status, JSON.parse(change.text).code], [409, 'NOT_SERVING']);
      const health = JSON.parse((await request(port, 'GET', '/healthz')).text) as Record<string, unknown>;
      assert.deepEqual([health.status, health.buildId, health.pid, health.state], ['ok', 'b-1', process.pid, 'ready']);
      assert.equal((await request(port, 'GET', '/collab/start')).status, 405);
      assert.equal((await request(port, 'GET', '/nope')).status, 404);
    } finally {
      await close();
    }
  });

  it('serving: changes mark the data dirty, requests count as activity, probes do not', async () => {
    const { h, app, port, close } = await appServer();
    try {
      await drive(h.sched, h.agent.start());
      assert.equal((await request(port, 'POST', '/collab/start', { handshake_token: h.api.handshake, organization_id: h.api.organizationId })).status, 202);
      await drive(h.sched, new Promise<void>((r) => (h.agent.state === 'serving' ? r() : h.agent.onStateChange((to) => to === 'serving' && r()))));
      const bad = await request(port, 'POST', '/_app/data', { increment: 'x' });
      assert.equal(bad.status, 400);
      assert.equal((await request(port, 'POST', '/_app/data', { note: '<b>hi</b>' })).status, 200);
      assert.equal(h.agent.status().dirty, true);
      assert.match((await request(port, 'GET', '/')).text, /&lt;b&gt;hi&lt;\/b&gt;/, 'notes are escaped');
      await h.sched.advance(IDLE - 100);
      await request(port, 'GET', '/');
      await h.sched.advance(200);
      assert.equal(h.agent.state, 'serving', 'GET / restarted the idle timer');
      await h.sched.advance(IDLE - 300);
      await request(port, 'GET', '/healthz');
      await request(port, 'GET', '/_app/status');
      await h.sched.advance(200);
      assert.equal(h.agent.state, 'ready', 'probes did not keep it alive');
      assert.equal(((h.api.stored?.data as OrgSnapshot).gateway_state.default_app as { notes: string[] }).notes[0], '<b>hi</b>');
      assert.equal(app.doc.notes.length, 0, 'unloaded');
    } finally {
      await close();
    }
  });
});
