/**
 * Where an organization's cold start goes, from the logs' own timestamps (not guesses): the API
 * server's events (the dev container's log: gateway.claimed, gateway.allocated once DNS, route and
 * certificate are live, gateway.handshake_sent once the gateway accepted /collab/start,
 * gateway.configured, gateway.loaded) and the gateway app's (its /tmp/gateway.log:
 * app.collab_start_accepted, gateway.state → loading once /gateway/config answered, gateway.pulled,
 * gateway.state → serving once /gateway/ready(loaded) answered), with the probe's own times around
 * them. Every container runs on this host's clock. Each step: median and p90 over the organizations.
 */
import { run } from '../../test/e2e/helpers/docker';
import type { Deployment } from '../../test/e2e/realise/deployment';
import { percentile } from '../stats';
import type { ProbeTimes } from './probe';

export interface StepRow {
  step: string;
  p50: number;
  p90: number;
  /** Organizations whose logs had both ends of the step. */
  n: number;
}

export interface ColdStartProfile {
  label: string;
  steps: StepRow[];
  /** gateway_client.retry events of the gateway apps (any back-off on the path) and api.error events of the API, within the probes' window. */
  retries: number;
  apiErrors: number;
}

type Marks = Map<string, number>;

/** Events without an organization counted within [from, to] (ms since the epoch). */
function countEvents(text: string, event: string, from: number, to: number): number {
  let n = 0;
  for (const line of text.split('\n')) {
    if (!line.includes(event)) continue;
    const i = line.indexOf('{');
    try {
      const e = JSON.parse(line.slice(i)) as { event?: string; time?: string };
      const t = Date.parse(e.time ?? '');
      if (e.event === event && t >= from && t <= to) n += 1;
    } catch {
      // not a JSON line
    }
  }
  return n;
}

function parseLines(text: string, into: Map<string, Marks>, pick: (e: Record<string, unknown>) => string | undefined): void {
  for (const line of text.split('\n')) {
    const i = line.indexOf('{');
    if (i < 0) continue;
    let e: Record<string, unknown>;
    try {
      e = JSON.parse(line.slice(i)) as Record<string, unknown>;
    } catch {
      continue;
    }
    const org = (e.organizationId ?? e.organization_id) as string | undefined;
    const t = typeof e.time === 'string' ? Date.parse(e.time) : NaN;
    if (!org || !Number.isFinite(t)) continue;
    const mark = pick(e);
    if (!mark) continue;
    const marks = into.get(org) ?? new Map<string, number>();
    // The first occurrence after the probe's start (an organization is started once per probe).
    if (!marks.has(mark)) marks.set(mark, t);
    into.set(org, marks);
  }
}

const API_MARKS = new Set(['gateway.claimed', 'gateway.allocated', 'gateway.handshake_sent', 'gateway.configured', 'gateway.loaded']);

function appMark(e: Record<string, unknown>): string | undefined {
  if (e.event === 'app.collab_start_accepted') return 'app.accepted';
  if (e.event === 'gateway.pulled') return 'app.pulled';
  if (e.event === 'gateway.state' && (e.to === 'loading' || e.to === 'serving')) return `app.${String(e.to)}`;
  return undefined;
}

/** Reads the logs once the probes are done and returns the step breakdown of `probes`. */
export async function profileColdStarts(d: Deployment, label: string, probes: ProbeTimes[]): Promise<ColdStartProfile> {
  const since = Math.floor(Math.min(...probes.map((p) => p.sentAt)) / 1000) - 1;
  const marks = new Map<string, Marks>();
  const api = await run('docker', ['logs', '--since', String(since), d.outputs.devContainerName], { timeoutMs: 60_000 });
  const from = Math.min(...probes.map((p) => p.sentAt));
  const to = Math.max(...probes.map((p) => p.servingAt ?? p.startAnsweredAt));
  parseLines(`${api.stdout}\n${api.stderr}`, marks, (e) => (API_MARKS.has(String(e.event)) ? String(e.event) : undefined));
  const apiErrors = countEvents(`${api.stdout}\n${api.stderr}`, 'api.error', from, to);
  let retries = 0;
  await Promise.all(d.outputs.gatewayInventory.map(async (g) => {
    const r = await run('docker', ['exec', g.name, 'cat', '/tmp/gateway.log'], { timeoutMs: 60_000 });
    parseLines(r.stdout, marks, appMark);
    retries += countEvents(r.stdout, 'gateway_client.retry', from, to);
  }));
  const steps: Array<[string, string, string]> = [
    ['operator call sent → allocation claimed (TLS, route, /start checks, claim SQL)', 'probe.sent', 'gateway.claimed'],
    ['claimed → allocated (DNS, stage-1 route and certificate live)', 'gateway.claimed', 'gateway.allocated'],
    ['allocated → gateway app accepted /collab/start (handshake issued, delivered)', 'gateway.allocated', 'app.accepted'],
    ['accepted → /gateway/config answered (app loading)', 'app.accepted', 'app.loading'],
    ['loading → data pulled and loaded', 'app.loading', 'app.pulled'],
    ['pulled → /gateway/ready(loaded) answered (app serving)', 'app.pulled', 'app.serving'],
    ['app serving → probe has its first 200 naming it serving', 'app.serving', 'probe.serving'],
    ['(operator call answered, from sent)', 'probe.sent', 'probe.answered'],
    ['(total: sent → first 200 serving)', 'probe.sent', 'probe.serving'],
  ];
  const rows: StepRow[] = steps.map(([step, from, to]) => {
    const ds: number[] = [];
    for (const p of probes) {
      if (p.servingAt === null) continue;
      const m = new Map(marks.get(p.organizationId) ?? []);
      m.set('probe.sent', p.sentAt);
      m.set('probe.answered', p.startAnsweredAt);
      m.set('probe.serving', p.servingAt);
      const a = m.get(from);
      const b = m.get(to);
      if (a !== undefined && b !== undefined) ds.push(b - a);
    }
    ds.sort((x, y) => x - y);
    return { step, p50: percentile(ds, 50), p90: percentile(ds, 90), n: ds.length };
  });
  return { label, steps: rows, retries, apiErrors };
}

export function renderProfile(p: ColdStartProfile): string[] {
  return [`cold start profile (${p.label}; ${p.retries} gateway-client retries, ${p.apiErrors} API errors in the window), ms p50 / p90:`, ...p.steps.map((s) => `  ${s.step}: ${s.p50.toFixed(0)} / ${s.p90.toFixed(0)} (n=${s.n})`)];
}
