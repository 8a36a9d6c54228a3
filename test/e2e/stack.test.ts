/**
 * The deployment, end to end, where the Pulumi CLI cannot run:
 *  1. the real index.ts runs under Pulumi mocks with the dev stack's config (pool 2, a
 *     test env name, ports in 62000-62999), first as a preview whose every input must be
 *     on the realiser's allow-list, then as an `up` in which test/e2e/realise creates
 *     each resource on the local Docker engine as the program registers it (dependency
 *     order, real outputs handed back: image ids, container ids, passwords, stdout);
 *  2. the result is checked as a user would: dig against the published DNS port, the
 *     runtime allocator (in the dev container, configured from the stack outputs)
 *     allocating organizations, curl through stage-1 nginx -> gateway stage-2 -> app
 *     with the mkcert CA, release -> NXDOMAIN and no route, the other gateway for a
 *     second organization, POOL_EXHAUSTED for a third;
 *  3. `pulumi destroy` is mirrored: refused while data volumes are protected, then after
 *     unprotect everything goes except the retainOnDelete volumes, which is asserted;
 *  4. `up` again adopts those volumes (data and dev CA survive), `destroy` again, and the
 *     retained volumes are removed too (test hygiene) unless KEEP_E2E_VOLUMES=1.
 *
 * Run alone:  npx mocha --config .mocharc.e2e.json test/e2e/stack.test.ts
 * After a real `pulumi up --stack dev` (no realisation, no teardown; the same checks):
 *             E2E_PULUMI_STACK=dev npx mocha --config .mocharc.e2e.json test/e2e/stack.test.ts
 *             (or E2E_STACK_OUTPUTS=<file of `pulumi stack output --json --show-secrets`>)
 */
import { strict as assert } from 'assert';
import { randomUUID } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { GatewaySpec } from '../../runtime/inventory';
import { DATA_VOLUMES } from '../../components/volumes';
import { buildServerUrl, buildTarballName, orgFqdn, volumeName } from '../../runtime/naming';
import { pack, type PackResult } from '../../tools/lib/pack';
import { engineInventory, removeByName } from './helpers/docker';
import { httpRequest } from './helpers/http';
import { requireDocker } from './helpers/require-docker';
import {
  E2E_POOL_SIZE,
  REPO_ROOT,
  checkoutId,
  choosePorts,
  preferredSlot,
  slotPorts,
  e2eConfig,
  preview,
  shape,
  up,
  type CapturedResource,
  type E2eSettings,
} from './realise/capture';
import { ContainerAllocator, DriverError, installAllocator } from './realise/container-allocator';
import { curlHttp, curlHttps, describeDeployment, dig, parseOutputs, type Deployment, type StackOutputs } from './realise/deployment';
import { Engine } from './realise/engine';
import { CONTAINER, IMAGE, VOLUME } from './realise/fields';
import { Realiser, durationNs, runCommand, type DestroyReport } from './realise/realise';

const DEPLOYED_STACK = process.env.E2E_PULUMI_STACK;
const DEPLOYED_OUTPUTS = process.env.E2E_STACK_OUTPUTS;
/** 'deployed': check an environment a real `pulumi up` created; nothing is realised or destroyed. */
const MODE: 'realise' | 'deployed' = DEPLOYED_STACK || DEPLOYED_OUTPUTS ? 'deployed' : 'realise';
const KEEP_VOLUMES = process.env.KEEP_E2E_VOLUMES === '1';
/**
 * Debugging aid: leave the realised environment running and write its outputs (as
 * `pulumi stack output --json --show-secrets` would, mode 0600) to this file, e.g. to
 * try the deployed mode against it. The next ordinary run removes it by name.
 */
const KEEP_STACK = process.env.E2E_KEEP_STACK;

const secs = (ms: number): string => `${(ms / 1000).toFixed(1)}s`;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Step log with times: `[e2e] step <name> ✔ 3.2s (at 1m04.3s)`, and a summary at the end. */
class Steps {
  /** Set by the first step: other suites in the same mocha run load this file long before it runs. */
  private t0 = 0;
  readonly done: Array<{ name: string; ms: number; ok: boolean }> = [];
  at(): string {
    const s = (Date.now() - this.t0) / 1000;
    return s >= 60 ? `${Math.floor(s / 60)}m${(s % 60).toFixed(1).padStart(4, '0')}s` : `${s.toFixed(1)}s`;
  }
  note(line: string): void {
    process.stdout.write(`      [e2e] ${line}\n`);
  }
  async run<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const t = Date.now();
    if (this.t0 === 0) this.t0 = t;
    this.note(`step ${name} …`);
    try {
      const v = await fn();
      this.done.push({ name, ms: Date.now() - t, ok: true });
      this.note(`step ${name} ✔ ${secs(Date.now() - t)} (at ${this.at()})`);
      return v;
    } catch (err) {
      this.done.push({ name, ms: Date.now() - t, ok: false });
      this.note(`step ${name} ✘ after ${secs(Date.now() - t)} (at ${this.at()})`);
      throw err;
    }
  }
  summary(): string {
    const w = Math.max(...this.done.map((d) => d.name.length), 10);
    return this.done.map((d) => `${d.ok ? '✔' : '✘'} ${d.name.padEnd(w)} ${secs(d.ms).padStart(7)}`).join('\n') + `\ntotal ${this.at()}`;
  }
}

/** The gateways' app for this suite: says which gateway it runs in and which build. */
const STAND_IN_APP = `'use strict';
const http = require('http');
const fs = require('fs');
const os = require('os');
const path = require('path');
let buildId = 'unknown';
try { buildId = /^build_id=(.*)$/m.exec(fs.readFileSync(path.join(__dirname, '..', 'BUILD_INFO.txt'), 'utf8'))[1]; } catch (e) { /* no BUILD_INFO */ }
http.createServer((req, res) => {
  const body = JSON.stringify({ status: 'ok', app: 'stack-e2e-stand-in', buildId, gatewayId: process.env.GATEWAY_ID || null,
    hostname: os.hostname(), path: req.url, host: req.headers.host || null, forwardedProto: req.headers['x-forwarded-proto'] || null });
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}).listen(8888, '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
`;

interface AppAnswer {
  status: string;
  buildId: string;
  gatewayId: string | null;
  hostname: string;
  host: string | null;
  forwardedProto: string | null;
}

async function readOutputsFromPulumi(): Promise<Record<string, unknown>> {
  if (DEPLOYED_OUTPUTS) return JSON.parse(fs.readFileSync(DEPLOYED_OUTPUTS, 'utf8')) as Record<string, unknown>;
  const r = await runCommand(['pulumi', 'stack', 'output', '--json', '--show-secrets', '--stack', String(DEPLOYED_STACK)], {}, REPO_ROOT);
  if (r.code !== 0) throw new Error(`pulumi stack output --stack ${DEPLOYED_STACK} failed (${r.code}): ${r.stderr.trim()}`);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

describe(`stack e2e: index.ts deployed on the local Docker engine (${MODE === 'realise' ? 'realised from mocks' : 'checking a real pulumi up'})`, function () {
  this.timeout(900_000);

  const steps = new Steps();
  const engine = new Engine();
  let tmp = '';
  let settings: E2eSettings | undefined;
  let realiser: Realiser | undefined;
  let config: Record<string, string> = {};
  let planned: CapturedResource[] = [];
  let deployedResources: CapturedResource[] = [];
  let outputs: StackOutputs | undefined;
  let dep: Deployment | undefined;
  let allocator: ContainerAllocator | undefined;
  let build: PackResult | undefined;
  let initial: Awaited<ReturnType<typeof engineInventory>> | undefined;
  let destroyReport: DestroyReport | undefined;
  /** Organizations this run allocated (released in after() if a test failed midway). */
  const allocated = new Set<string>();
  /** deployed mode: the gateways already run a real build, so only stage 2's own location is probed. */
  let standIn = true;

  const need = <T>(v: T | undefined, what: string): T => {
    assert.ok(v !== undefined, `${what} is missing (an earlier step failed)`);
    return v as T;
  };

  before(async function () {
    await steps.run(MODE === 'realise' ? 'engine and offline base images' : 'engine', () =>
      requireDocker(this, 'stack e2e suite', (l) => steps.note(l), { baseImages: MODE === 'realise' }));
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'demiurge-stack-e2e-'));
    initial = await engineInventory();

    if (MODE === 'deployed') {
      outputs = await steps.run(`read the stack outputs (${DEPLOYED_STACK ? `pulumi stack output --stack ${DEPLOYED_STACK}` : DEPLOYED_OUTPUTS})`, async () =>
        parseOutputs(await readOutputsFromPulumi()));
    } else {
      const envName = `e2e-${checkoutId()}`;
      const base = { envName, domain: `${envName}.test`, poolSize: E2E_POOL_SIZE };
      const r = new Realiser({ cwd: REPO_ROOT, engine, logDir: tmp, log: (l) => steps.note(l.replace(/^\[e2e\] /, '')) });
      realiser = r;
      const planFor = async (s2: E2eSettings): Promise<CapturedResource[]> => {
        config = e2eConfig(s2);
        const run = await preview(config);
        r.plan(run.resources);
        steps.note(`  ${run.resources.length} resources (${run.resources.filter((x) => x.custom).length} custom), all realisable`);
        return run.resources;
      };
      // Names do not depend on ports: plan with the preferred slot, clear leftovers (which may hold
      // that slot's ports), then take the first free slot.
      const preferred = slotPorts(preferredSlot());
      planned = await steps.run('preview: index.ts under mocks; every input on the realiser allow-list', () => planFor({ ...base, ports: preferred }));
      await steps.run('remove leftovers of an interrupted earlier run (declared names only)', async () => {
        const names = Realiser.declaredNames(planned);
        const present = [
          ...names.containers.filter((c) => initial?.containers.includes(c)),
          ...names.networks.filter((n) => initial?.networks.includes(n)),
          ...names.volumes.filter((v) => initial?.volumes.includes(v)),
        ];
        if (present.length > 0) {
          steps.note(`  removing ${present.join(', ')}`);
          await removeByName(names);
          initial = await engineInventory();
        }
      });
      const { slot, ports } = await choosePorts(E2E_POOL_SIZE);
      settings = { ...base, ports };
      steps.note(`environment ${envName}, domain ${settings.domain}, pool ${E2E_POOL_SIZE}, port slot ${slot}: https ${ports.stage1Https}, http ${ports.stage1Http}, ` +
        `dns ${ports.dns}, PowerDNS API ${ports.powerDnsApi}, gateways ${ports.gatewayHttpBase}+n / vpn ${ports.gatewayVpnBase}+n`);
      if (ports.stage1Https !== preferred.stage1Https) planned = await steps.run(`preview again with port slot ${slot}`, () => planFor(settings as E2eSettings));
      const upRun = await steps.run('up: realise every resource in dependency order (images, network, volumes, containers, commands)', () => up(config, r));
      deployedResources = upRun.resources;
      assert.deepEqual(shape(upRun.resources), shape(planned), 'up registered exactly the resources the preview planned');
      outputs = parseOutputs(upRun.outputs);
      if (KEEP_STACK) {
        fs.writeFileSync(KEEP_STACK, `${JSON.stringify(upRun.outputs, null, 2)}\n`, { mode: 0o600 });
        steps.note(`E2E_KEEP_STACK: outputs written to ${KEEP_STACK}; the environment stays up after the run`);
      }
    }
    dep = await describeDeployment(need(outputs, 'stack outputs'), engine, tmp);
    steps.note(`stage 1 https://*.${dep.outputs.domain}:${dep.httpsPort} (${dep.httpsHost}), DNS ${dep.dnsHost}:${dep.dnsPort}, CA ${dep.caFile ?? '(none)'}`);
  });

  after(async function () {
    if (allocator) {
      for (const org of allocated) await allocator.release(org).catch(() => undefined);
      await allocator.close().catch(() => undefined);
    }
    const keep = KEEP_STACK !== undefined && outputs !== undefined;
    if (realiser && !realiser.isDestroyed && !keep) {
      await steps.run('after a failure: destroy what was realised', () => realiser!.destroy({ unprotectAll: true })).catch((err: Error) => steps.note(err.message));
    }
    if (MODE === 'realise' && settings && !KEEP_VOLUMES && !keep) {
      await removeByName({ volumes: Realiser.declaredNames(planned).volumes });
    }
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
    process.stdout.write(`\n      [e2e] step timings:\n${steps.summary().replace(/^/gm, '        ')}\n\n`);
  });

  it('1. realisation: every declared container runs exactly as declared, created after everything it depends on', async function () {
    if (MODE !== 'realise') return this.skip();
    const r = need(realiser, 'realiser');
    await steps.run('check the engine against the captured inputs', async () => {
      // Order: each resource completed after all its dependencies (dependsOn, inputs, parent, provider).
      const position = new Map(r.realised.map((x, i) => [x.resource.urn, i]));
      for (const x of r.realised) {
        for (const d of [...x.resource.dependencies, x.resource.parent]) {
          if (d === '') continue;
          assert.ok((position.get(d) ?? Infinity) < (position.get(x.resource.urn) as number), `${x.resource.urn} was created before its dependency ${d}`);
        }
      }
      for (const x of r.realised.filter((y) => y.resource.type === CONTAINER)) {
        const c = x.resource.inputs as Record<string, unknown> & { name: string };
        const s = await engine.inspectContainer(c.name);
        assert.ok(s, `${c.name} exists`);
        assert.equal(s.Id, x.id, `${c.name}: the program got the real container id`);
        assert.equal(s.Image, c.image, `${c.name}: runs the image id the program gave it`);
        assert.equal(s.Config.Hostname, c.hostname);
        assert.equal(s.HostConfig.RestartPolicy.Name, c.restart);
        for (const e of (c.envs ?? []) as string[]) assert.ok(s.Config.Env?.includes(e), `${c.name}: env ${e.split('=')[0]}`);
        for (const l of (c.labels ?? []) as Array<{ label: string; value: string }>) assert.equal(s.Config.Labels?.[l.label], l.value, `${c.name}: label ${l.label}`);
        const wantPorts = ((c.ports ?? []) as Array<{ internal: number; external: number; ip?: string; protocol: string }>)
          .map((p) => `${p.internal}/${p.protocol} -> ${p.ip ?? '0.0.0.0'}:${p.external}`).sort();
        const gotPorts = Object.entries(s.HostConfig.PortBindings ?? {}).flatMap(([k, v]) => v.map((b) => `${k} -> ${b.HostIp || '0.0.0.0'}:${b.HostPort}`)).sort();
        assert.deepEqual(gotPorts, wantPorts, `${c.name}: published ports`);
        const wantBinds = ((c.volumes ?? []) as Array<{ volumeName?: string; hostPath?: string; containerPath: string; readOnly?: boolean }>)
          .map((v) => `${v.volumeName ?? v.hostPath}:${v.containerPath}${v.readOnly ? ':ro' : ''}`);
        assert.deepEqual(s.HostConfig.Binds ?? [], wantBinds, `${c.name}: mounts`);
        const caps = (s.HostConfig.CapAdd ?? []).map((x2) => x2.replace(/^CAP_/, ''));
        assert.deepEqual(caps, ((c.capabilities as { adds?: string[] } | undefined)?.adds ?? []), `${c.name}: capabilities`);
        assert.deepEqual((s.HostConfig.Devices ?? []).map((d) => `${d.PathOnHost}:${d.PathInContainer}:${d.CgroupPermissions}`),
          ((c.devices ?? []) as Array<{ hostPath: string; containerPath: string; permissions: string }>).map((d) => `${d.hostPath}:${d.containerPath}:${d.permissions}`), `${c.name}: devices`);
        const hc = c.healthcheck as { tests: string[]; interval: string; timeout: string; retries: number; startPeriod: string };
        assert.deepEqual(s.Config.Healthcheck?.Test, hc.tests, `${c.name}: healthcheck test`);
        assert.equal(s.Config.Healthcheck?.Interval, durationNs(hc.interval));
        assert.equal(s.Config.Healthcheck?.StartPeriod, durationNs(hc.startPeriod));
        const nets = c.networksAdvanced as Array<{ name: string; aliases: string[] }>;
        assert.deepEqual(Object.keys(s.NetworkSettings.Networks).sort(), nets.map((n) => n.name).sort(), `${c.name}: only its declared networks`);
        for (const n of nets) for (const a of n.aliases) assert.ok(s.NetworkSettings.Networks[n.name].Aliases?.includes(a), `${c.name}: alias ${a}`);
        assert.ok(s.State.Running, `${c.name} is running`);
        const health = s.State.Health?.Status ?? 'none';
        if (c.wait === true) assert.equal(health, 'healthy', `${c.name}: waited for healthy`);
        steps.note(`  ${c.name}: ${health}, ${gotPorts.length} port(s), ${wantBinds.length} mount(s) as declared`);
      }
      for (const x of r.realised.filter((y) => y.resource.type === IMAGE)) {
        assert.equal(await engine.imageId(String(x.resource.inputs.imageName)), x.outputs.repoDigest, `${x.resource.name}: repoDigest is the built image id`);
      }
    });
  });

  it('2. DNS: the published port answers the apex, ganymede., ns1. and the zone\'s SOA/NS', async () => {
    const d = need(dep, 'deployment');
    const o = d.outputs;
    await steps.run(`dig @${d.dnsHost} -p ${d.dnsPort}`, async () => {
      for (const name of [o.domain, `ganymede.${o.domain}`, `ns1.${o.domain}`]) {
        const a = await dig(d, name, 'A');
        assert.equal(a.status, 'NOERROR', `${name}: ${a.status}`);
        assert.deepEqual(a.answers.filter((x) => x.type === 'A').map((x) => x.data), [o.publicIp], `${name} A`);
        steps.note(`  ${name} A ${o.publicIp}`);
      }
      const soa = await dig(d, o.zone, 'SOA');
      assert.match(soa.answers.find((x) => x.type === 'SOA')?.data ?? '', new RegExp(`^ns1\\.${o.domain.replace(/\./g, '\\.')}\\. hostmaster\\.`), 'SOA names ns1 and hostmaster');
      const ns = await dig(d, o.zone, 'NS');
      assert.deepEqual(ns.answers.filter((x) => x.type === 'NS').map((x) => x.data), [`ns1.${o.domain}.`]);
      const unknown = await dig(d, `nothing-here.${o.domain}`, 'A');
      assert.equal(unknown.status, 'NXDOMAIN', 'names nobody published do not resolve (no wildcard in the dev stack)');
    });
  });

  it('2b. stage 1 serves the apex and ganymede. with the environment\'s certificate; HTTP redirects to HTTPS', async () => {
    const d = need(dep, 'deployment');
    const o = d.outputs;
    await steps.run(`curl https://${o.domain}:${d.httpsPort} and https://ganymede.${o.domain}:${d.httpsPort}${d.caFile ? ' with the dev CA' : ''}`, async () => {
      const apex = await curlHttps(d, o.domain, '/');
      assert.equal(apex.code, 0, `TLS to ${o.domain}: ${apex.stderr}`);
      // No frontend build is deployed here: the image answers its "no frontend build" page, 503 (200 once one is).
      assert.ok([200, 503].includes(apex.status), `${o.domain}: ${apex.status}`);
      const gany = await curlHttps(d, `ganymede.${o.domain}`, '/');
      assert.equal(gany.code, 0, `TLS to ganymede.${o.domain}: ${gany.stderr}`);
      // Proxied to Ganymede (127.0.0.1:6000 in the dev container): 502 while it does not run.
      assert.ok(gany.status >= 200 && gany.status < 600, `ganymede.${o.domain}: ${gany.status}`);
      steps.note(`  ${o.domain} ${apex.status}, ganymede.${o.domain} ${gany.status} (certificate verified)`);
      const redirect = await curlHttp(d, o.domain, '/some/path?x=1');
      assert.deepEqual(redirect, { status: 301, location: `https://${o.domain}/some/path?x=1` });
    });
  });

  it('3. gateways fetch a packed build from the build server at the URL the program gave them', async () => {
    const d = need(dep, 'deployment');
    const o = d.outputs;
    const tarball = buildTarballName(o.envName);
    const existing = await runCommand(['docker', 'exec', o.devContainerName, 'test', '-s', `/srv/builds/${tarball}`], {}, REPO_ROOT);
    if (MODE === 'deployed' && existing.code === 0 && process.env.E2E_PACK_STAND_IN !== '1') {
      standIn = false;
      steps.note(`  ${tarball} already exists: keeping the environment's own build (E2E_PACK_STAND_IN=1 replaces it); app checks use stage 2's /_gateway/nginx-health`);
      return;
    }
    build = await steps.run(`pack a stand-in app into volume ${d.buildsVolume}`, async () => {
      const ws = path.join(tmp, 'workspace');
      fs.mkdirSync(path.join(ws, 'dist', 'packages', 'app-gateway'), { recursive: true });
      fs.writeFileSync(path.join(ws, 'dist', 'packages', 'app-gateway', 'main.js'), STAND_IN_APP);
      return pack({ env: o.envName, workspace: ws, volume: d.buildsVolume });
    });
    const b = build;
    await steps.run('every gateway serves the build on its published port', async () => {
      await Promise.all(o.gatewayInventory.map(async (g) => {
        const t0 = Date.now();
        for (;;) {
          const r = await httpRequest(`http://127.0.0.1:${g.httpPort}/healthz`, { timeoutMs: 2000 }).catch(() => undefined);
          if (r?.status === 200) {
            const a = JSON.parse(r.body) as AppAnswer;
            if (a.buildId === b.buildId) {
              assert.equal(a.gatewayId, g.name, `${g.name}: GATEWAY_ID`);
              steps.note(`  ${g.name}: build ${a.buildId} after ${secs(Date.now() - t0)}`);
              return;
            }
          }
          if (Date.now() - t0 > 120_000) throw new Error(`${g.name} never served build ${b.buildId}: last ${r?.status} ${r?.body.slice(0, 200)}\n${(await runCommand(['docker', 'logs', '--tail', '20', g.name], {}, REPO_ROOT)).stdout}`);
          await sleep(250);
        }
      }));
      // The URL came from the program (BUILD_SERVER_URL), not from the image's default.
      for (const g of o.gatewayInventory) {
        const logs = await runCommand(['docker', 'logs', g.name], {}, REPO_ROOT);
        assert.match(logs.stdout + logs.stderr, new RegExp(`FETCHED build_id=${b.buildId} .*url=${buildServerUrl(o.envName).replace(/[.]/g, '\\.')}/${tarball.replace(/[.]/g, '\\.')}`));
      }
    });
  });

  it('4. the runtime allocator in the dev container starts from the stack outputs', async () => {
    const d = need(dep, 'deployment');
    const o = d.outputs;
    await steps.run(`install the allocator into ${o.devContainerName} (transpiled runtime/ + its node_modules)`, async () => {
      const r = await installAllocator(REPO_ROOT, o.devContainerName);
      steps.note(`  ${r.files} runtime modules; packages ${r.packages.join(', ')} (+ their dependencies)`);
    });
    const a = new ContainerAllocator(o.devContainerName, path.join(tmp, 'allocator.log'));
    allocator = a;
    await steps.run('migrate, registerGateways(gatewayInventory), markReady once each gateway answers', async () => {
      // Exactly the handoff of the design: the outputs, unchanged.
      const tls = await a.init({
        envName: o.envName,
        domain: o.domain,
        publicIp: o.publicIp,
        pg: { connectionString: o.databaseUrl },
        powerdns: { apiUrl: o.powerDnsApiUrl, apiKey: o.powerDnsApiKey, zone: o.zone },
        nginx: { confDir: o.nginxConfDir },
      }).catch((err: Error) => { throw new Error(`${err.message}\n${a.logTail()}`); });
      steps.note(`  TLS from the container: ${tls.certPath}, ${tls.keyPath}`);
      await a.migrate();
      await a.registerGateways(o.gatewayInventory);
      // Stands in for each gateway's POST /gateway/ready: it answers through its own port.
      for (const g of o.gatewayInventory) {
        const r = await httpRequest(`http://127.0.0.1:${g.httpPort}/_gateway/nginx-health`, { timeoutMs: 3000 });
        assert.equal(r.status, 200, `${g.name} stage 2 answers`);
      }
      const states = await a.markReady(o.gatewayInventory.map((g) => g.name));
      assert.deepEqual(Object.values(states), o.gatewayInventory.map(() => 'ready'), JSON.stringify(states));
      const status = await a.status();
      assert.equal(status.total, o.gatewayInventory.length);
    });
  });

  // Organizations of tests 5-7 (plain tests, not a nested describe: mocha runs nested suites last).
  const orgs = [randomUUID(), randomUUID(), randomUUID()];
  let first: GatewaySpec | undefined;

  /** curl https://org-<id>.<domain>/healthz through stage 1 with the CA; the answer of the gateway's app. */
  const through = async (d: Deployment, org: string, expectGateway: string | undefined): Promise<string> => {
    const fqdn = orgFqdn(org, d.outputs.domain);
    const r = await curlHttps(d, fqdn, standIn ? '/healthz' : '/_gateway/nginx-health');
    assert.equal(r.code, 0, `curl ${fqdn}: ${r.stderr}`);
    assert.equal(r.status, 200, `${fqdn}: ${r.status} ${r.body}`);
    if (!standIn) {
      assert.equal(r.body.trim(), 'ok');
      return `stage 2 of ${expectGateway ?? '?'}`;
    }
    const app = JSON.parse(r.body) as AppAnswer;
    assert.equal(app.buildId, build?.buildId);
    assert.equal(app.forwardedProto, 'https', 'stage 1 terminated TLS and said so');
    assert.equal(app.host, fqdn, 'Host header kept through both stages');
    if (expectGateway) assert.equal(app.gatewayId, expectGateway, `${fqdn} routed to ${app.gatewayId}, allocated ${expectGateway}`);
    return `app on ${app.gatewayId}`;
  };

  it('5. a first organization gets a gateway: its names resolve and https reaches that gateway\'s app', async () => {
    const d = need(dep, 'deployment');
    const a = need(allocator, 'allocator');
    const org = orgs[0];
    const fqdn = orgFqdn(org, d.outputs.domain);
    const got = await steps.run(`allocate ${org}`, () => a.allocate(org));
    allocated.add(org);
    assert.equal(got.created, true);
    assert.equal(got.fqdn, fqdn);
    const spec = d.outputs.gatewayInventory.find((g) => g.name === got.name);
    assert.ok(spec, `allocated gateway ${got.name} is in the inventory`);
    assert.deepEqual({ host: got.host, httpPort: got.httpPort }, { host: spec.host, httpPort: spec.httpPort });
    first = spec;
    await steps.run(`dig ${fqdn} and a name under it`, async () => {
      for (const name of [fqdn, `uc-${randomUUID()}.${fqdn}`]) {
        const r = await dig(d, name, 'A');
        assert.deepEqual(r.answers.filter((x) => x.type === 'A').map((x) => x.data), [d.outputs.publicIp], `${name}: ${r.status}`);
      }
    });
    await steps.run(`curl https://${fqdn}:${d.httpsPort} (stage 1 -> ${got.name} stage 2 -> app)`, async () => {
      steps.note(`  ${fqdn} -> ${await through(d, org, got.name)}`);
    });
  });

  it('6. release: the names are NXDOMAIN and stage 1 no longer routes the organization', async () => {
    const d = need(dep, 'deployment');
    const a = need(allocator, 'allocator');
    const org = orgs[0];
    const fqdn = orgFqdn(org, d.outputs.domain);
    await steps.run(`release ${org}`, () => a.release(org));
    allocated.delete(org);
    await steps.run('NXDOMAIN, no route file, stage 1 answers "no gateway"', async () => {
      for (const name of [fqdn, `uc-${randomUUID()}.${fqdn}`]) assert.equal((await dig(d, name, 'A')).status, 'NXDOMAIN', name);
      const file = `${d.outputs.nginxConfDir}/routes/org-${org}.conf`;
      const gone = await runCommand(['docker', 'exec', d.outputs.devContainerName, 'test', '!', '-e', file], {}, REPO_ROOT);
      assert.equal(gone.code, 0, `${file} was removed`);
      const r = await curlHttps(d, fqdn, '/healthz');
      assert.equal(r.status, 404, `${fqdn} after release: ${r.status} ${r.body}`);
      assert.match(r.body, /no gateway is allocated/);
    });
  });

  it('7. a second organization gets the other gateway; with both taken a third gets POOL_EXHAUSTED', async () => {
    const d = need(dep, 'deployment');
    const a = need(allocator, 'allocator');
    const f = need(first, 'the first allocation');
    const second = await steps.run(`allocate ${orgs[1]}`, () => a.allocate(orgs[1]));
    allocated.add(orgs[1]);
    assert.notEqual(second.name, f.name, 'the longest-ready gateway, not the one just released');
    steps.note(`  ${orgFqdn(orgs[1], d.outputs.domain)} -> ${await through(d, orgs[1], second.name)}`);
    // The released gateway serves another allocation without a restart.
    const again = await steps.run(`allocate ${orgs[0]} again`, () => a.allocate(orgs[0]));
    allocated.add(orgs[0]);
    assert.equal(again.name, f.name, 'the only gateway left');
    steps.note(`  ${orgFqdn(orgs[0], d.outputs.domain)} -> ${await through(d, orgs[0], again.name)}`);
    await steps.run(`allocate ${orgs[2]} with every gateway taken`, async () => {
      await assert.rejects(a.allocate(orgs[2]), (err: unknown) => err instanceof DriverError && err.code === 'POOL_EXHAUSTED');
      assert.equal((await dig(d, orgFqdn(orgs[2], d.outputs.domain), 'A')).status, 'NXDOMAIN', 'an exhausted allocation publishes nothing');
    });
    const status = await a.status();
    assert.equal(status.allocatedOrganizations, 2);
    await steps.run('release everything this run allocated', async () => {
      for (const org of [...allocated]) {
        await a.release(org);
        allocated.delete(org);
        assert.equal((await dig(d, orgFqdn(org, d.outputs.domain), 'A')).status, 'NXDOMAIN');
      }
    });
  });

  it('8. destroy: refused while data is protected; after unprotect, only the retainOnDelete volumes remain', async function () {
    if (MODE !== 'realise' || KEEP_STACK) return this.skip();
    const r = need(realiser, 'realiser');
    const o = need(outputs, 'outputs');
    if (allocator) {
      await allocator.close();
      allocator = undefined;
    }
    const names = Realiser.declaredNames(planned);
    const retained = deployedResources.filter((x) => x.type === VOLUME && x.retainOnDelete).map((x) => String(x.inputs.name)).sort();
    // The program's own list of data volumes (retainDataVolumes defaults to true in the dev stack).
    assert.deepEqual(retained, DATA_VOLUMES.map((k) => volumeName(o.envName, k)).sort(), 'exactly the data volumes are retained');
    const protectedCount = deployedResources.filter((x) => x.protect).length;
    await steps.run('pulumi destroy (protected resources present): refused, nothing touched', async () => {
      await assert.rejects(r.destroy({ unprotectAll: false }), new RegExp(`refusing to destroy: ${protectedCount} protected`));
      for (const c of names.containers) assert.ok(await engine.inspectContainer(c), `${c} still exists`);
    });
    destroyReport = await steps.run('pulumi state unprotect --all && pulumi destroy', () => r.destroy({ unprotectAll: true }));
    await steps.run('only what a real destroy retains is left', async () => {
      const now = await engineInventory();
      for (const c of names.containers) assert.ok(!now.containers.includes(c), `container ${c} removed`);
      for (const n of names.networks) assert.ok(!now.networks.includes(n), `network ${n} removed`);
      for (const v of names.volumes) assert.equal(now.volumes.includes(v), retained.includes(v), `volume ${v} ${retained.includes(v) ? 'retained' : 'removed'}`);
      const report = need(destroyReport, 'destroy report');
      // Containers get their grace period: apps push their data, PostgreSQL shuts down cleanly.
      for (const s of report.stops) assert.equal(s.exitCode, 0, `${s.name} stopped with exit ${s.exitCode}`);
      assert.deepEqual(report.stops.map((s) => s.name).sort(), [...names.containers].sort(), 'every container was stopped gracefully before removal');
      // The delete commands ran against the live PowerDNS before its container went.
      for (const cmd of ['pdns-records', 'pdns-zone']) assert.equal(report.resources.find((x) => x.name === cmd)?.action, 'deleted', cmd);
      // Built images stay (pulumi-docker never removes them), which is also the warm cache.
      for (const img of deployedResources.filter((x) => x.type === IMAGE)) assert.ok(await engine.imageId(String(img.inputs.imageName)), `${String(img.inputs.imageName)} kept`);
      steps.note(`  stops: ${report.stops.map((s) => `${s.name} exit ${s.exitCode} ${secs(s.ms)}`).join(', ')}`);
      steps.note(`  retained: ${retained.join(', ')}`);
    });
  });

  it('9. up again over the retained volumes: the environment comes back with its data and the same dev CA; destroy again', async function () {
    if (MODE !== 'realise' || KEEP_STACK) return this.skip();
    const before = need(outputs, 'outputs');
    assert.ok(destroyReport, 'needs test 8');
    const r2 = new Realiser({ cwd: REPO_ROOT, engine, logDir: tmp, log: (l) => steps.note(l.replace(/^\[e2e\] /, '')) });
    realiser = r2;
    const run = await steps.run('up again (the program unchanged; fresh passwords, retained volumes adopted)', () => up(config, r2));
    const o = parseOutputs(run.outputs);
    const d = await describeDeployment(o, engine, tmp);
    await steps.run('data and dev CA survived; DNS and TLS work with the CA clients already trust', async () => {
      const adopted = r2.realised.filter((x) => x.resource.type === VOLUME && x.detail.startsWith('adopted')).map((x) => String(x.resource.inputs.name)).sort();
      assert.deepEqual(adopted, DATA_VOLUMES.map((k) => volumeName(o.envName, k)).sort(), 'exactly the retained volumes were adopted');
      assert.equal(o.tlsDevCaCertificate, before.tlsDevCaCertificate, 'same dev CA (tls volume): nothing to re-trust on client machines');
      // PostgreSQL kept the allocator's pool (pgdata) and accepted the new random passwords.
      const rows = await runCommand(['docker', 'exec', o.devContainerName, 'runuser', '-u', 'postgres', '--', 'psql', '-X', '-At', '-d', 'ganymede', '-c',
        'select count(*) from gateway_pool.gateways'], {}, REPO_ROOT);
      assert.equal(rows.stdout.trim(), String(o.gatewayInventory.length), `pool rows kept in pgdata: ${rows.stdout}${rows.stderr}`);
      const apex = await dig(d, o.domain, 'A');
      assert.deepEqual(apex.answers.filter((x) => x.type === 'A').map((x) => x.data), [o.publicIp]);
      const gany = await curlHttps(d, `ganymede.${o.domain}`, '/');
      assert.equal(gany.code, 0, `TLS with the old CA: ${gany.stderr}`);
    });
    const report = await steps.run('pulumi state unprotect --all && pulumi destroy (again)', () => r2.destroy({ unprotectAll: true }));
    for (const s2 of report.stops) assert.equal(s2.exitCode, 0, `${s2.name} stopped with exit ${s2.exitCode}`);
    const retained = Realiser.declaredNames(planned).volumes.filter((v) => DATA_VOLUMES.map((k) => volumeName(o.envName, k)).includes(v));
    if (KEEP_VOLUMES) {
      steps.note(`KEEP_E2E_VOLUMES=1: keeping ${retained.join(', ')}`);
      return;
    }
    await steps.run('test hygiene: remove the retained volumes; the engine is as before the run', async () => {
      await removeByName({ volumes: retained });
      const now = await engineInventory();
      const init = need(initial, 'initial inventory');
      assert.deepEqual(now.containers, init.containers);
      assert.deepEqual(now.networks, init.networks);
      assert.deepEqual(now.volumes, init.volumes);
    });
  });
});
