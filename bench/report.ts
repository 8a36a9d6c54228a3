/** Renders bench results as a Markdown report, a hand-written SVG chart, and the README's results block. */
import { readFileSync, writeFileSync } from 'fs';
import type { BenchResults, OpFigures, StageRow } from './results-types';
import type { Spread } from './stats';

const MARKERS = {
  full: ['<!-- BEGIN bench-results -->', '<!-- END bench-results -->'],
  headline: ['<!-- BEGIN bench-headline -->', '<!-- END bench-headline -->'],
} as const;

function num(x: number, digits = 1): string {
  if (!Number.isFinite(x)) return '—';
  return x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** "median (min–max)" */
function sp(s: Spread, digits = 1): string {
  return `${num(s.median, digits)} <sub>(${num(s.min, digits)}–${num(s.max, digits)})</sub>`;
}

function ratio(x: number): string {
  if (!Number.isFinite(x)) return '—';
  return `${x >= 10 ? num(x, 0) : num(x, 1)}x`;
}

export function machineLine(r: BenchResults): string {
  const m = r.machine;
  return `${m.cores} cores (${m.cpuModel}), ${num(m.memoryGiB, 1)} GiB RAM, ${m.kernel}; Node.js ${m.node}, nginx ${m.nginx} with njs ${m.njs} and lua-nginx-module ${m.lua ?? 'unknown'}, PostgreSQL ${m.postgres}, PowerDNS ${m.powerdns}`;
}

function opRow(label: string, o: OpFigures, extra: string[]): string {
  return `| ${label} | ${o.opsPerRep} | ${sp(o.throughput, 0)} | ${sp(o.p50)} | ${sp(o.p95)} | ${sp(o.p99)} | ${sp(o.max)} | ${extra.join(' | ')} |`;
}

function verdict(pass: boolean | null): string {
  return pass === null ? '—' : pass ? 'PASS' : '**FAIL**';
}

/** Every target of issue #16, by row: target, measured, PASS/FAIL ("—": reported only). */
export function targetsTable(r: BenchResults): string {
  const rows = [...r.targets].sort((a, b) => a.row - b.row);
  return ['| row | | target | measured | |', '| --- | --- | --- | --- | --- |', ...rows.map((t) => `| ${t.row} | ${t.description} | ${t.target} | ${t.measured} | ${verdict(t.pass)} |`)].join('\n');
}

/** The report; `h` is the heading level of its sections (the README nests it one level deeper). */
export function renderMarkdown(r: BenchResults, h = '###'): string {
  const L: string[] = [];
  const c = r.config;
  const dnsWrites = r.dnsWrites === 'api' ? ', DNS by API PATCH (--dns-api)' : r.dnsWrites === 'tables' ? ", DNS written to PowerDNS's tables" : '';
  L.push(`${h} Results of ${r.date.slice(0, 16).replace('T', ' ')} UTC (${r.mode} run, ${num(r.durationS, 0)} s${dnsWrites})`);
  L.push('');
  L.push(`Machine: ${machineLine(r)}.`);
  L.push(`Every figure is the median of ${c.reps} repetitions, with <sub>(min–max)</sub>; latencies in ms, throughput in operations/s. Stage-1 nginx runs ${c.nginxWorkers} workers; the allocator uses a pg pool of ${c.pgPoolMax}.`);
  L.push('');
  L.push(`${h}# Targets`);
  L.push('');
  L.push(targetsTable(r));
  L.push('');
  for (const x of r.sections ?? []) {
    L.push(`${h}# ${x.title}`);
    L.push('');
    L.push(x.markdown.trimEnd());
    L.push('');
  }

  L.push(`${h}# 1. Allocate and release vs concurrency (pool of ${c.poolSize.toLocaleString('en-US')} gateways)`);
  L.push('');
  L.push("| concurrency | ops/rep | ops/s | p50 | p95 | p99 | max | vs the seed's algorithm (ops/s) |");
  L.push('| --- | --- | --- | --- | --- | --- | --- | --- |');
  L.push(opRow("seed's algorithm, allocate (sequential)", r.baseline.allocate, ['1x']));
  for (const x of r.concurrency) L.push(opRow(`**${x.concurrency}**, allocate`, x.allocate, [ratio(x.vsBaseline.allocateThroughput)]));
  L.push(opRow("seed's algorithm, release (sequential)", r.baseline.release, ['1x']));
  for (const x of r.concurrency) L.push(opRow(`**${x.concurrency}**, release`, x.release, [ratio(x.vsBaseline.releaseThroughput)]));
  L.push('');
  L.push(
    `Seed's algorithm: ${r.baseline.description}. It answered ${r.baseline.notLiveAtAnswer} of its ${r.baseline.allocations} allocations before nginx served the route (\`nginx -s reload\` returns before the new workers run); its routes went live a median ${num(r.baseline.untilLiveMs.median)} ms after the answer. ` +
      `The allocator: **${r.liveness.notLive} of ${r.liveness.checked}** allocations answered before their route was live (every allocation checked, see below).`,
  );
  L.push('');

  L.push(`${h}# 2. Scale: organizations already allocated (pool of ${c.scalePoolSize.toLocaleString('en-US')})`);
  L.push('');
  L.push(
    `| orgs allocated | allocate p50, sequential | allocate p95, sequential | release p50, sequential | allocate p99 at c=${c.scaleBurstConcurrency} (${c.scaleBurstOps}/rep) | vs the seed (p50) | \`nginx -s reload\` until new workers serve | until old workers gone | nginx RSS (MiB) | one-org PowerDNS PATCH, zone as created | same, SOA-EDIT-API on | same, PowerDNS defaults (+ rectify) |`,
  );
  L.push('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const x of r.scale) {
    L.push(
      `| **${x.orgs.toLocaleString('en-US')}** | ${sp(x.sequentialAllocate.p50)} | ${sp(x.sequentialAllocate.p95)} | ${sp(x.sequentialRelease.p50)} | ${sp(x.burstAllocate.p99)} | ${ratio(x.vsBaseline.allocateP50Speedup)} faster | ${sp(x.reload.untilNewServesMs, 0)} | ${sp(x.reload.untilOldGoneMs, 0)} | ${num(x.nginxRssMiB, 0)} | ${sp(x.dnsPatchMs.zoneSettings)} | ${sp(x.dnsPatchMs.soaEdit)} | ${sp(x.dnsPatchMs.pdnsDefaults)} |`,
    );
  }
  L.push('');
  L.push(`Sequential: ${c.scaleSequentialOps} allocations then their releases per repetition. Routes live in stage 1's shared-memory table (loaded from the route files), so a reload's cost does not depend on the number of organizations, and allocations never need one.`);
  L.push(`PowerDNS zone: ${c.zone}. The last three columns are a one-organization PATCH measured at that zone size as the zone is created, with SOA-EDIT-API switched back to \`DEFAULT\`, and with PowerDNS's defaults (SOA edit and API rectify on).`);
  L.push('');

  const rt = r.routing;
  L.push(`${h}# Stage-1 routing overhead (row 5)`);
  L.push('');
  L.push(`| | requests/s (c=${rt.connections}) | p99 at c=${rt.connections} (ms, queueing included) | worker CPU per request (µs) | p50, one connection (ms) | p99, one connection (ms) | errors |`);
  L.push('| --- | --- | --- | --- | --- | --- | --- |');
  L.push(`| stage 1 (TLS, regex server_name, shared-dict route lookup per request) | ${sp(rt.stage1.requestsPerS, 0)} | ${sp(rt.stage1.saturatedP99Ms, 2)} | ${sp(rt.stage1.workerCpuUsPerRequest, 1)} | ${sp(rt.stage1.p50Ms, 3)} | ${sp(rt.stage1.p99Ms, 3)} | ${rt.stage1.errors} |`);
  L.push(`| same nginx, static upstream (same TLS and proxy directives) | ${sp(rt.staticProxy.requestsPerS, 0)} | ${sp(rt.staticProxy.saturatedP99Ms, 2)} | ${sp(rt.staticProxy.workerCpuUsPerRequest, 1)} | ${sp(rt.staticProxy.p50Ms, 3)} | ${sp(rt.staticProxy.p99Ms, 3)} | ${rt.staticProxy.errors} |`);
  const pct = (x: Spread): Spread => ({ ...x, median: x.median * 100, min: x.min * 100, max: x.max * 100 });
  const signed = (x: Spread, digits: number): string => `${x.median >= 0 ? '+' : ''}${sp(x, digits)}`;
  L.push(`| paired: stage 1 against the static proxy of the same pair | ${sp(pct(rt.pairs.requestsPerSRatio), 1)} % | | ${signed(rt.pairs.addedCpuUs, 1)} | | ${signed(rt.pairs.addedP99Ms, 3)} | |`);
  L.push('');
  L.push(`Method: ${rt.method}.`);
  L.push('');

  const k = r.cost.per1000;
  L.push(`${h}# 3. Cost per 1,000 allocations (and their 1,000 releases), concurrency 64`);
  L.push('');
  L.push("| | allocator | seed's algorithm |");
  L.push('| --- | --- | --- |');
  L.push(`| PowerDNS PATCH calls | ${sp(k.dnsPatches)} | ${num(r.baseline.per1000.dnsPatches * 2, 0)} |`);
  if (k.dnsTableWrites) L.push(`| PowerDNS table writes (one statement each, in PowerDNS's database) + cache purges (API) | ${sp(k.dnsTableWrites)} + ${sp(k.dnsCacheFlushes)} | 0 |`);
  L.push(`| nginx reloads | ${sp(k.nginxReloads)} | ${num(r.baseline.per1000.nginxReloads * 2, 0)} |`);
  L.push(`| \`nginx -t\` runs | ${sp(k.nginxTests)} | 0 |`);
  L.push(`| SQL statements (every statement on the wire, incl. lock transactions and PowerDNS table writes) | ${sp(k.sqlStatements)} | ${num(r.baseline.per1000.sqlStatements, 0)} (no database) |`);
  L.push(`| of which pool-state statements (\`metrics().sqlRoundTrips\`) | ${sp(k.storeRoundTrips)} | — |`);
  L.push('');
  L.push(
    `Whole run: ${r.cost.wholeRun.allocations.toLocaleString('en-US')} allocations and ${r.cost.wholeRun.releases.toLocaleString('en-US')} releases cost ${r.cost.wholeRun.dnsPatches.toLocaleString('en-US')} PATCHes, ${(r.cost.wholeRun.dnsTableWrites ?? 0).toLocaleString('en-US')} PowerDNS table writes, ${r.cost.wholeRun.nginxReloads} nginx reloads and ${r.cost.wholeRun.sqlStatements.toLocaleString('en-US')} SQL statements.`,
  );
  L.push('');

  L.push(`${h}# 4. Peak RSS of the allocator process`);
  L.push('');
  L.push(`**${num(r.rss.allocatorPeakMiB)} MiB** (VmHWM of the child process that runs only the allocator, as plain JavaScript, plus its HTTPS checker). By phase: ${Object.entries(r.rss.byPhase).map(([p, v]) => `${p} ${num(v)} MiB`).join('; ')}. nginx (master + workers) with ${r.scale[r.scale.length - 1].orgs.toLocaleString('en-US')} organizations routed: ${num(r.rss.nginxMiBAtMaxOrgs)} MiB.`);
  L.push('');

  L.push(`${h}# Where the time goes (${r.profile.phase})`);
  L.push('');
  const stageTable = (title: string, rows: typeof r.profile.stages): void => {
    L.push(`| ${title} | calls per 1,000 | avg ms per call | summed ms per operation |`);
    L.push('| --- | --- | --- | --- |');
    for (const st of rows) L.push(`| ${st.stage} | ${num(st.callsPer1000, 0)} | ${num(st.avgMs, 2)} | ${num(st.msPerAllocation, 2)} |`);
    L.push('');
  };
  L.push('`path:` rows are the steps of one operation, each call timed from submission to answer (waiting for its batch included); the other rows are the batches they share (one PowerDNS PATCH, one SQL statement or lock transaction serves many operations).');
  L.push('');
  const st = (name: string): StageRow | undefined => r.profile.stages.find((x) => x.stage.startsWith(name));
  const dns = st('path: DNS publish');
  const patch = st('dns: PowerDNS PATCH');
  const tableWrite = st('dns: records write');
  const purge = st('dns: cache purge');
  const route = st('path: route');
  const sql = ['path: find', 'path: claim', 'path: mark'].map(st).reduce((n, x) => n + (x?.avgMs ?? 0), 0);
  const at64 = r.concurrency.find((c) => c.concurrency === 64);
  if (dns && tableWrite && route && at64) {
    L.push(
      `In short: at concurrency 64 an allocation (p50 ${num(at64.allocate.p50.median)} ms) spends ${num(dns.avgMs)} ms in its DNS batch, of which ${num(tableWrite.avgMs)} ms is the one statement in PowerDNS's tables ` +
        `(${num(tableWrite.callsPer1000, 0)} per 1,000 allocations, so ≈${num(1000 / Math.max(1, tableWrite.callsPer1000), 0)} organizations per statement) and ${num(purge?.avgMs ?? 0)} ms the cache purge; ${num(sql)} ms in its three pool statements (find, claim, mark allocated; queueing included); ` +
        `writing its route and hearing from nginx's workers that they serve it (${num(route.avgMs)} ms) runs alongside the DNS batch.`,
    );
    L.push('');
  } else if (dns && patch && route && at64) {
    L.push(
      `In short: at concurrency 64 an allocation (p50 ${num(at64.allocate.p50.median)} ms) spends ${num(dns.avgMs)} ms in its DNS batch, of which ${num(patch.avgMs)} ms is the PowerDNS PATCH itself ` +
        `(${num(patch.callsPer1000, 0)} PATCHes per 1,000 allocations, so ≈${num(1000 / Math.max(1, patch.callsPer1000), 0)} organizations per PATCH), and ${num(sql)} ms in its three pool statements (find, claim, mark allocated; queueing included); ` +
        `writing its route and hearing from nginx's workers that they serve it (${num(route.avgMs)} ms) runs alongside the DNS batch.`,
    );
    L.push('');
  }
  stageTable('allocate', r.profile.stages);
  stageTable('release', r.profile.releaseStages);
  L.push('A lone caller (allocate at concurrency 1), for comparison: its DNS batch carries one organization, so the fixed cost per batch is all its own.');
  L.push('');
  stageTable('allocate, concurrency 1', r.profile.sequentialStages.filter((x) => x.stage.startsWith('path:') || x.stage.startsWith('dns:')));
  L.push('What PowerDNS and its PostgreSQL spend per organization: one PATCH publishing 64 organizations, then one withdrawing them, with the allocator idle (CPU: PostgreSQL is the whole cluster, including the session PowerDNS opens for every API request):');
  L.push('');
  L.push('| records | publish PATCH (ms) | withdraw PATCH (ms) | PostgreSQL CPU per org (ms) | PowerDNS CPU per org (ms) |');
  L.push('| --- | --- | --- | --- | --- |');
  for (const d of r.profile.dnsWrites) L.push(`| ${d.variant} | ${sp(d.publishMs, 0)} | ${sp(d.withdrawMs, 0)} | ${sp(d.postgresCpuMsPerOrg, 2)} | ${sp(d.powerdnsCpuMsPerOrg, 2)} |`);
  L.push('');
  L.push('CPU time per 1,000 allocations + releases at concurrency 64:');
  L.push('');
  L.push('| process | CPU ms |');
  L.push('| --- | --- |');
  for (const p of r.profile.cpuMsPer1000) L.push(`| ${p.process}${p.note ? ` (${p.note})` : ''} | ${num(p.ms, 0)} |`);
  L.push('');
  if (r.profile.cpu) {
    L.push(`V8 sampling profile of the allocator process over one extra concurrency-64 repetition (${num(r.profile.cpu.totalMs, 0)} ms wall): ${r.profile.cpu.byGroup.map((g) => `${g.group} ${num(g.pct)}%`).join(', ')}.`);
    L.push('');
    L.push('| function (self time) | where | ms | % |');
    L.push('| --- | --- | --- | --- |');
    for (const f of r.profile.cpu.top.slice(0, 8)) L.push(`| \`${f.fn.replace(/\|/g, '\\|')}\` | ${f.where} | ${f.selfMs} | ${num(f.pct)} |`);
    L.push('');
  }
  L.push(`Liveness check: ${r.liveness.method}. DNS: ${r.liveness.dnsMethod} (${r.liveness.dnsMissing} of ${r.liveness.dnsChecked} failed).`);
  return L.join('\n');
}

// ------------------------------------------------------------ SVG

interface Series {
  label: string;
  color: string;
  dash?: string;
  points: Array<{ x: number; y: Spread }>;
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

const NICE = [1, 2, 5];

function logTicks(lo: number, hi: number): number[] {
  const out: number[] = [];
  for (let e = Math.floor(Math.log10(lo)) - 1; e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of NICE) {
      const v = m * 10 ** e;
      if (v >= lo * 0.999 && v <= hi * 1.001) out.push(v);
    }
  }
  return out;
}

function tickLabel(v: number): string {
  if (v >= 1000) return `${v / 1000}k`;
  return v < 1 ? v.toString() : String(Math.round(v * 100) / 100);
}

/** One log-log panel at (ox, oy) of size w×h. */
function panel(
  ox: number,
  oy: number,
  w: number,
  h: number,
  title: string,
  xLabel: string,
  xs: number[],
  series: Series[],
  refs: Array<{ y: number; label: string; color: string }>,
  yRange: [number, number],
): string {
  const m = { l: 52, r: 26, t: 28, b: 44 };
  const pw = w - m.l - m.r;
  const ph = h - m.t - m.b;
  const xlo = Math.min(...xs);
  const xhi = Math.max(...xs);
  const lx = (x: number): number => ox + m.l + (xhi === xlo ? pw / 2 : ((Math.log(x) - Math.log(xlo)) / (Math.log(xhi) - Math.log(xlo))) * pw);
  const [ylo, yhi] = yRange;
  const ly = (y: number): number => oy + m.t + ph - ((Math.log(Math.max(y, ylo)) - Math.log(ylo)) / (Math.log(yhi) - Math.log(ylo))) * ph;
  const o: string[] = [];
  o.push(`<text x="${ox + m.l}" y="${oy + 17}" font-size="13" font-weight="bold">${esc(title)}</text>`);
  o.push(`<rect x="${ox + m.l}" y="${oy + m.t}" width="${pw}" height="${ph}" fill="none" stroke="#999"/>`);
  for (const t of logTicks(ylo, yhi)) {
    const y = ly(t).toFixed(1);
    o.push(`<line x1="${ox + m.l}" x2="${ox + m.l + pw}" y1="${y}" y2="${y}" stroke="#eee"/>`);
    o.push(`<text x="${ox + m.l - 5}" y="${y}" font-size="10" text-anchor="end" dominant-baseline="middle">${tickLabel(t)}</text>`);
  }
  for (const x of xs) {
    const X = lx(x).toFixed(1);
    o.push(`<line x1="${X}" x2="${X}" y1="${oy + m.t}" y2="${oy + m.t + ph}" stroke="#f2f2f2"/>`);
    o.push(`<text x="${X}" y="${oy + m.t + ph + 14}" font-size="10" text-anchor="middle">${x.toLocaleString('en-US')}</text>`);
  }
  o.push(`<text x="${ox + m.l + pw / 2}" y="${oy + h - 8}" font-size="11" text-anchor="middle">${esc(xLabel)}</text>`);
  o.push(`<text transform="translate(${ox + 13},${oy + m.t + ph / 2}) rotate(-90)" font-size="11" text-anchor="middle">latency, ms (log)</text>`);
  refs.forEach((r, i) => {
    const y = ly(r.y).toFixed(1);
    o.push(`<line x1="${ox + m.l}" x2="${ox + m.l + pw}" y1="${y}" y2="${y}" stroke="${r.color}" stroke-dasharray="6 4" stroke-width="1.2"/>`);
    // Alternate label ends so two close reference lines stay readable.
    const atRight = i % 2 === 0;
    o.push(`<text x="${atRight ? ox + m.l + pw - 4 : ox + m.l + 4}" y="${(Number(y) - 4).toFixed(1)}" font-size="10" text-anchor="${atRight ? 'end' : 'start'}" fill="${r.color}">${esc(r.label)}</text>`);
  });
  for (const s of series) {
    const pts = s.points.filter((p) => Number.isFinite(p.y.median));
    o.push(`<polyline fill="none" stroke="${s.color}" stroke-width="2"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''} points="${pts.map((p) => `${lx(p.x).toFixed(1)},${ly(p.y.median).toFixed(1)}`).join(' ')}"/>`);
    for (const p of pts) {
      const X = lx(p.x).toFixed(1);
      // min–max of the repetitions as an error bar
      o.push(`<line x1="${X}" x2="${X}" y1="${ly(p.y.min).toFixed(1)}" y2="${ly(p.y.max).toFixed(1)}" stroke="${s.color}" stroke-width="1"/>`);
      o.push(`<circle cx="${X}" cy="${ly(p.y.median).toFixed(1)}" r="3" fill="${s.color}"/>`);
    }
  }
  return o.join('\n');
}

function legend(x: number, y: number, series: Series[]): string {
  return series
    .map((s, i) => {
      const X = x + (i % 2) * 200;
      const Y = y + Math.floor(i / 2) * 16;
      return `<line x1="${X}" x2="${X + 22}" y1="${Y}" y2="${Y}" stroke="${s.color}" stroke-width="2"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''}/><text x="${X + 27}" y="${Y}" font-size="11" dominant-baseline="middle">${esc(s.label)}</text>`;
    })
    .join('\n');
}

export function renderSvg(r: BenchResults): string {
  const W = 960;
  const H = 440;
  const conc: Series[] = [
    { label: 'allocate p50', color: '#1f77b4', points: r.concurrency.map((c) => ({ x: c.concurrency, y: c.allocate.p50 })) },
    { label: 'allocate p99', color: '#1f77b4', dash: '5 3', points: r.concurrency.map((c) => ({ x: c.concurrency, y: c.allocate.p99 })) },
    { label: 'release p50', color: '#2ca02c', points: r.concurrency.map((c) => ({ x: c.concurrency, y: c.release.p50 })) },
    { label: 'release p99', color: '#2ca02c', dash: '5 3', points: r.concurrency.map((c) => ({ x: c.concurrency, y: c.release.p99 })) },
  ];
  const scale: Series[] = [
    { label: 'allocate p50 (sequential)', color: '#1f77b4', points: r.scale.map((s) => ({ x: s.orgs, y: s.sequentialAllocate.p50 })) },
    { label: `allocate p99 (c=${r.config.scaleBurstConcurrency})`, color: '#1f77b4', dash: '5 3', points: r.scale.map((s) => ({ x: s.orgs, y: s.burstAllocate.p99 })) },
    { label: 'release p50 (sequential)', color: '#2ca02c', points: r.scale.map((s) => ({ x: s.orgs, y: s.sequentialRelease.p50 })) },
    { label: 'nginx reload → new workers serve', color: '#9467bd', dash: '2 3', points: r.scale.map((s) => ({ x: s.orgs, y: s.reload.untilNewServesMs })) },
  ];
  const all = [...conc, ...scale].flatMap((s) => s.points.flatMap((p) => [p.y.min, p.y.max]));
  all.push(r.baseline.allocate.p50.median, 100);
  const finite = all.filter((v) => Number.isFinite(v) && v > 0);
  const yRange: [number, number] = [10 ** Math.floor(Math.log10(Math.min(...finite))), 10 ** Math.ceil(Math.log10(Math.max(...finite)))];
  const refs = [
    { y: r.baseline.allocate.p50.median, label: `seed's algorithm, allocate p50 ${num(r.baseline.allocate.p50.median)} ms`, color: '#d62728' },
    { y: 100, label: 'target: p99 ≤ 100 ms at c=64', color: '#ff7f0e' },
  ];
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif">
<rect width="${W}" height="${H}" fill="#fff"/>
${panel(0, 0, W / 2, H - 80, `Latency vs concurrency (pool of ${r.config.poolSize.toLocaleString('en-US')})`, 'concurrent callers (log)', r.concurrency.map((c) => c.concurrency), conc, refs, yRange)}
${panel(W / 2, 0, W / 2, H - 80, 'Latency vs organizations already allocated', 'organizations allocated (log)', r.scale.map((s) => s.orgs), scale, refs.slice(0, 1), yRange)}
${legend(52, H - 62, conc)}
${legend(W / 2 + 52, H - 62, scale)}
<text x="${W - 8}" y="${H - 6}" font-size="10" text-anchor="end" fill="#555">${esc(`${r.date.slice(0, 10)} · ${r.machine.cores} cores, ${num(r.machine.memoryGiB, 1)} GiB · median of ${r.config.reps} reps, bars = min–max · npm run bench`)}</text>
</svg>`;
}

/** The README's few lines: date, machine, the targets, the chart; the rest is docs/bench.md. */
export function renderHeadline(r: BenchResults): string {
  const judged = r.targets.filter((t) => t.pass !== null);
  return [
    `Latest full run, ${r.date.slice(0, 16).replace('T', ' ')} UTC on ${machineLine(r)}: **${judged.filter((t) => t.pass).length} of ${judged.length} targets met** ([full report](docs/bench.md), [bench/results/latest.md](bench/results/latest.md)).`,
    '',
    targetsTable(r),
    '',
    '![latency vs concurrency and vs organizations allocated](bench/results/latest.svg)',
  ].join('\n');
}

/**
 * Replaces a generated block between its markers: `full` is docs/bench.md's
 * results, `headline` the README's. Returns false if the markers are missing.
 */
export function updateReadme(file: string, r: BenchResults, kind: keyof typeof MARKERS = 'full'): boolean {
  const [begin, end] = MARKERS[kind];
  const text = readFileSync(file, 'utf8');
  const a = text.indexOf(begin);
  const b = text.indexOf(end);
  if (a < 0 || b < a) return false;
  const body =
    kind === 'full'
      ? ['![latency vs concurrency and vs organizations allocated](../bench/results/latest.svg)', '', renderMarkdown(r, '###')]
      : [renderHeadline(r)];
  const block = [begin, '<!-- written by `npm run bench` (full run); do not edit by hand -->', ...body, ''].join('\n');
  writeFileSync(file, text.slice(0, a) + block + text.slice(b));
  return true;
}
