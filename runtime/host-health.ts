/**
 * Host quarantine: a remote gateway host that stops answering has its free
 * gateways taken out of allocation, and given back when it answers again.
 *
 * Every round probes the stage-2 endpoint (`GET /_gateway/nginx-health`,
 * answered by the gateway's nginx itself; any HTTP answer counts) of every
 * gateway on a remote host —
 * from the API server, i.e. from where stage 1 routes. A host counts as down
 * in a round when none of its gateways answered; after
 * `failuresBeforeUnreachable` such rounds in a row its `ready` gateways become
 * `unreachable` (never claimed). In the first round where the host answers,
 * every `unreachable` gateway of it that answered is `ready` again.
 *
 * What it never touches: gateways on the main host (the inventory names them
 * by container name; remote ones by the host's IPv4 address, stack/gateways.ts),
 * so the main host's organizations are unaffected; and gateways holding an
 * organization — an allocated gateway on a vanished host stops heartbeating and
 * the existing reaper releases it after `reaper.silenceSeconds`.
 *
 * Independent of GatewayAllocator: it needs the pg pool, the schema and the
 * statements of runtime/gateway-states.ts (whose `from` states are re-checked
 * in the UPDATE, so a claim racing a round wins and is left alone).
 */
import * as http from 'http';
import type { Pool } from 'pg';
import type { AllocatorLogger } from './allocator-types';
import { GatewayStates, hostQuarantineSql, stateSql, type GatewayState, type PoolTables } from './gateway-states';
import { quoteSchema } from './migrate';
import { isValidIpv4 } from './naming';

/** Path answered by the gateway image's stage-2 nginx without the app (images/gateway). */
export const STAGE2_HEALTH_PATH = '/_gateway/nginx-health';

export interface HostHealthSettings {
  /** Consecutive rounds without any answer from a host before its ready gateways become unreachable (≥ 1). */
  failuresBeforeUnreachable: number;
  /** Timeout of one probe, in milliseconds. */
  timeoutMs: number;
}

/** One gateway row as the monitor sees it. */
export interface HostGateway {
  name: string;
  host: string;
  httpPort: number;
  state: GatewayState;
}

export interface HostHealthDecision {
  /** Consecutive failed rounds per probed host, to carry into the next round (0: answered). */
  failures: Map<string, number>;
  /** ready → unreachable. */
  markUnreachable: string[];
  /** unreachable → ready. */
  markReachable: string[];
  /** Hosts that reached the threshold in this round (first time only: for the log). */
  hostsDown: string[];
  /** Hosts that answered after having been down (for the log). */
  hostsBack: string[];
}

/** True for the gateways the monitor watches: those on a remote Docker host (addressed by IPv4, not by container name). */
export function isRemoteGatewayHost(host: string): boolean {
  return isValidIpv4(host);
}

/**
 * The pure decision of one round. `previous` holds each host's consecutive failed rounds before
 * this one; `answered` the gateways whose probe succeeded in this round. Gateways on hosts that
 * are not remote, and retired ones, are ignored.
 */
export function decideHostHealth(
  previous: ReadonlyMap<string, number>,
  gateways: readonly HostGateway[],
  answered: ReadonlySet<string>,
  failuresBeforeUnreachable: number,
): HostHealthDecision {
  const byHost = new Map<string, HostGateway[]>();
  for (const g of gateways) {
    if (!isRemoteGatewayHost(g.host) || g.state === GatewayStates.retired) continue;
    const list = byHost.get(g.host) ?? [];
    list.push(g);
    byHost.set(g.host, list);
  }
  const d: HostHealthDecision = { failures: new Map(), markUnreachable: [], markReachable: [], hostsDown: [], hostsBack: [] };
  for (const [host, list] of [...byHost].sort(([a], [b]) => a.localeCompare(b))) {
    const before = previous.get(host) ?? 0;
    const up = list.some((g) => answered.has(g.name));
    const failures = up ? 0 : before + 1;
    d.failures.set(host, failures);
    if (up) {
      const back = list.filter((g) => g.state === GatewayStates.unreachable && answered.has(g.name)).map((g) => g.name);
      d.markReachable.push(...back);
      if (before >= failuresBeforeUnreachable || back.length > 0) d.hostsBack.push(host);
    } else if (failures >= failuresBeforeUnreachable) {
      d.markUnreachable.push(...list.filter((g) => g.state === GatewayStates.ready).map((g) => g.name));
      if (before < failuresBeforeUnreachable) d.hostsDown.push(host);
    }
  }
  d.markUnreachable.sort();
  d.markReachable.sort();
  return d;
}

/**
 * Probes a gateway's stage-2 endpoint: true on any HTTP answer within the timeout (the host and
 * the published port are reachable from here; a 503 of a gateway whose app is restarting still
 * proves the host is there), false on refusal, no route or timeout.
 */
export type GatewayProbe = (g: HostGateway, timeoutMs: number) => Promise<boolean>;

export const httpStage2Probe: GatewayProbe = (g, timeoutMs) =>
  new Promise((resolve) => {
    const req = http.get({ host: g.host, port: g.httpPort, path: STAGE2_HEALTH_PATH, timeout: timeoutMs, agent: false }, (res) => {
      res.resume();
      resolve(true);
    });
    req.on('timeout', () => req.destroy(new Error('probe timeout')));
    req.on('error', () => resolve(false));
  });

export interface HostHealthOptions {
  pool: Pool;
  /** Schema of the pool tables (the allocator's). */
  schema: string;
  envName: string;
  settings: HostHealthSettings;
  logger: AllocatorLogger;
  /** Default: HTTP GET of STAGE2_HEALTH_PATH. */
  probe?: GatewayProbe;
}

export interface HostHealthRound {
  probed: number;
  /** Gateways moved ready → unreachable in this round. */
  markedUnreachable: string[];
  /** Gateways moved unreachable → ready in this round. */
  markedReachable: string[];
  /** Consecutive failed rounds per remote host after this round. */
  failures: Record<string, number>;
}

/** One monitor per API server: keeps the per-host failure counts between rounds (in memory: a restart starts again at 0). */
export class HostHealthMonitor {
  private failures = new Map<string, number>();
  private readonly tables: PoolTables;
  private readonly probe: GatewayProbe;

  constructor(private readonly o: HostHealthOptions) {
    if (!Number.isInteger(o.settings.failuresBeforeUnreachable) || o.settings.failuresBeforeUnreachable < 1) {
      throw new Error(`failuresBeforeUnreachable must be a whole number ≥ 1, got ${o.settings.failuresBeforeUnreachable}`);
    }
    const q = quoteSchema(o.schema);
    this.tables = { gateways: `${q}.gateways`, allocationSeq: `${q}.allocation_seq`, retiredTokens: `${q}.retired_tokens` };
    this.probe = o.probe ?? httpStage2Probe;
  }

  /** One round: read, probe (in parallel), decide, apply, log the changes. */
  async runOnce(): Promise<HostHealthRound> {
    const rows = await this.o.pool.query<{ name: string; host: string; http_port: number; state: GatewayState }>(
      `SELECT name, host, http_port, state FROM ${this.tables.gateways} WHERE state <> ${stateSql(GatewayStates.retired)} ORDER BY name`,
    );
    const gateways: HostGateway[] = rows.rows.map((r) => ({ name: r.name, host: r.host, httpPort: r.http_port, state: r.state }));
    const watched = gateways.filter((g) => isRemoteGatewayHost(g.host));
    const results = await Promise.all(watched.map(async (g) => [g.name, await this.probe(g, this.o.settings.timeoutMs).catch(() => false)] as const));
    const answered = new Set(results.filter(([, ok]) => ok).map(([name]) => name));
    const d = decideHostHealth(this.failures, watched, answered, this.o.settings.failuresBeforeUnreachable);
    this.failures = d.failures;
    const moved = async (transition: 'markUnreachable' | 'markReachable', names: string[]): Promise<string[]> =>
      names.length === 0 ? [] : (await this.o.pool.query<{ name: string }>(hostQuarantineSql(this.tables, transition), [names])).rows.map((r) => r.name).sort();
    const markedUnreachable = await moved('markUnreachable', d.markUnreachable);
    const markedReachable = await moved('markReachable', d.markReachable);
    const env = this.o.envName;
    const hostOf = new Map(watched.map((g) => [g.name, g.host]));
    for (const host of d.hostsDown) {
      this.o.logger({ event: 'host.unreachable', env, host, rounds: d.failures.get(host), gateways: markedUnreachable.filter((n) => hostOf.get(n) === host) });
    }
    for (const host of d.hostsBack) {
      this.o.logger({ event: 'host.reachable', env, host, gateways: markedReachable.filter((n) => hostOf.get(n) === host) });
    }
    for (const name of markedUnreachable) this.o.logger({ event: 'gateway.unreachable', env, gateway: name, from: GatewayStates.ready, to: GatewayStates.unreachable });
    for (const name of markedReachable) this.o.logger({ event: 'gateway.reachable', env, gateway: name, from: GatewayStates.unreachable, to: GatewayStates.ready });
    return { probed: watched.length, markedUnreachable, markedReachable, failures: Object.fromEntries(d.failures) };
  }
}
