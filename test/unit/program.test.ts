/**
 * Runs the real index.ts under Pulumi mocks with the values of Pulumi.dev.yaml
 * and Pulumi.prod.yaml (and variations) and pins the declared resource graph.
 */
import { strict as assert } from 'assert';
import { execFile, execFileSync } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as http from 'http';
import type { AddressInfo } from 'net';
import * as os from 'os';
import * as path from 'path';
import {
  ProgramError,
  REPO_ROOT,
  byName,
  byType,
  containers,
  digest,
  envMap,
  mockBytesBase64,
  mockImageId,
  mockPassword,
  providerUrn,
  runProgram,
  secretEnvNames,
  stringLeaves,
  type CapturedResource,
  type ProgramRun,
} from './helpers/pulumi-mocks';
import { readStackYaml } from './helpers/stack-yaml';
import * as naming from '../../runtime/naming';
import {
  RECORDS_CREATE_SCRIPT,
  RECORDS_DELETE_SCRIPT,
  ZONE_CREATE_SCRIPT,
  ZONE_DELETE_SCRIPT,
} from '../../components/powerdns';
import { ACME_CA_FILE, CA_EXPORT_SCRIPT, RENEW_CLI, RENEWER_CODE_DIR } from '../../components/tls';
import { RUNTIME_CONFIG_SCRIPT } from '../../components/runtime-config';
import { allocatorOptionsFromConfig, parseRuntimeConfig } from '../../runtime/config';
import { ZONE_WRITE_SETTINGS } from '../../runtime/powerdns-client';
import { bundleRuntimeEntry } from '../../components/runtime-bundle';
import { DEV_RUNTIME_DIR, RUNTIME_CONFIG_PATH } from '../../components/dev-container';
import { GATEWAY_DEFAULT_APP, GATEWAY_EXTRA_CA_FILE } from '../../components/gateway-pool';

const CONTAINER = 'docker:index/container:Container';
const IMAGE = 'docker:index/image:Image';
const REMOTE_IMAGE = 'docker:index/remoteImage:RemoteImage';
const VOLUME = 'docker:index/volume:Volume';
const NETWORK = 'docker:index/network:Network';
const PROVIDER = 'pulumi:providers:docker';
const PASSWORD = 'random:index/randomPassword:RandomPassword';
const COMMAND = 'command:local:Command';

function stackConfig(stack: 'dev' | 'prod', overrides: Record<string, string | undefined> = {}): Record<string, string> {
  const config = { ...readStackYaml(path.join(REPO_ROOT, `Pulumi.${stack}.yaml`)).config };
  for (const [k, v] of Object.entries(overrides)) {
    if (v === undefined) delete config[`demiurge:${k}`];
    else config[`demiurge:${k}`] = v;
  }
  return config;
}

/** Runs `fn` with the program bundling the runtime from another checkout (components/runtime-bundle.ts). */
async function withSourceRoot<T>(root: string, fn: () => Promise<T>): Promise<T> {
  const saved = process.env.DEMIURGE_RUNTIME_SOURCE_ROOT;
  process.env.DEMIURGE_RUNTIME_SOURCE_ROOT = root;
  try {
    return await fn();
  } finally {
    if (saved === undefined) delete process.env.DEMIURGE_RUNTIME_SOURCE_ROOT;
    else process.env.DEMIURGE_RUNTIME_SOURCE_ROOT = saved;
  }
}

function urnOf(run: ProgramRun, type: string, name: string): string {
  return byName(run, type, name).urn;
}

interface Port {
  internal: number;
  external?: number;
  ip?: string;
  protocol?: string;
}

function ports(r: CapturedResource): Port[] {
  return (r.inputs.ports ?? []) as Port[];
}

function labels(r: CapturedResource): Record<string, string> {
  return Object.fromEntries(((r.inputs.labels ?? []) as { label: string; value: string }[]).map((l) => [l.label, l.value]));
}

/** All RandomPassword values of a run (what the mocks return for them). */
function passwords(run: ProgramRun): string[] {
  return byType(run, PASSWORD).map((r) => mockPassword(r.name, Number(r.inputs.length)));
}

/** Common invariants every run must satisfy. */
function assertInvariants(run: ProgramRun, env: string): void {
  const all = containers(run);
  assert.ok(all.size >= 4);
  for (const [name, c] of all) {
    // Pitfall: a tag as `image` replaces the container on every `up`.
    assert.match(String(c.inputs.image), /^sha256:[0-9a-f]{64}$/, `${name}: image must be an id/digest, got ${String(c.inputs.image)}`);
    // Pitfall: fixed names/ports collide when the replacement is created first.
    assert.equal(c.deleteBeforeReplace, true, `${name}: deleteBeforeReplace`);
    assert.equal(c.inputs.restart, 'unless-stopped', `${name}: restart policy`);
    // Pitfall: without a grace period the provider deletes (destroy, replacement) with SIGKILL.
    assert.equal(c.inputs.destroyGraceSeconds, 30, `${name}: destroyGraceSeconds`);
    // Pitfall: `wait` without a healthcheck never becomes healthy.
    if (c.inputs.wait === true) assert.ok(c.inputs.healthcheck, `${name}: wait: true needs a healthcheck`);
    assert.ok(c.inputs.healthcheck, `${name}: healthcheck`);
    // Pitfall: `ports.external` takes no ranges: one numeric entry per port, protocol explicit.
    for (const p of ports(c)) {
      assert.equal(typeof p.internal, 'number', `${name}: internal port`);
      assert.equal(typeof p.external, 'number', `${name}: external port must be a single number`);
      assert.ok(p.protocol === 'tcp' || p.protocol === 'udp', `${name}: protocol`);
    }
    assert.equal(labels(c)[naming.ENVIRONMENT_LABEL], env, `${name}: environment label`);
    assert.ok(['dev', 'pdns', 'build-server', 'gateway', 'tls-renewer'].includes(labels(c)[naming.ROLE_LABEL]), `${name}: role label`);
  }
  // Components never leak: every custom resource has a parent component (or is a provider).
  for (const r of run.resources) {
    if (r.custom && !r.type.startsWith('pulumi:providers:')) {
      assert.match(r.parent, /\$demiurge:components:[A-Za-z]+::/, `${r.type} ${r.name} must be a component child`);
    }
  }
  // Secrets never appear in a plain input or a plain output.
  const secrets = passwords(run);
  assert.ok(secrets.length >= 4);
  for (const r of run.resources) {
    for (const leaf of stringLeaves(r.inputs, r.secretPaths)) {
      for (const s of secrets) assert.ok(!leaf.value.includes(s), `${r.type} ${r.name}: secret in plain input ${leaf.path}`);
    }
  }
  for (const leaf of stringLeaves(run.outputs, run.outputSecretPaths)) {
    for (const s of secrets) assert.ok(!leaf.value.includes(s), `secret in plain stack output ${leaf.path}`);
  }
}

describe('program (index.ts under mocks)', function () {
  this.timeout(30000);

  describe('dev stack (Pulumi.dev.yaml)', () => {
    let run: ProgramRun;
    const env = 'dev-001';
    before(async () => {
      run = await runProgram({ stack: 'dev', config: stackConfig('dev') });
    });

    it('satisfies the container invariants (digest images, deleteBeforeReplace, restart, healthchecks, ports, labels, secrets)', () => {
      assertInvariants(run, env);
    });

    it('declares exactly the expected containers', () => {
      assert.deepEqual([...containers(run).keys()].sort(), [
        'demiurge-dev-001-build-server',
        'demiurge-dev-001-dev',
        'demiurge-dev-001-pdns',
        'demiurge-dev-001-tls-renewer',
        'gw-pool-dev-001-0',
        'gw-pool-dev-001-1',
        'gw-pool-dev-001-2',
      ]);
    });

    it('builds the four images from images/<name> with the legacy builder and uses their ids', () => {
      const images = byType(run, IMAGE);
      assert.deepEqual(
        images.map((i) => [i.name, i.inputs.imageName, (i.inputs.build as Record<string, unknown>).context]).sort(),
        [
          ['image-build-server', 'demiurge-dev-001-build-server:latest', 'images/build-server'],
          ['image-dev', 'demiurge-dev-001-dev:latest', 'images/dev'],
          ['image-gateway', 'demiurge-dev-001-gateway:latest', 'images/gateway'],
          ['image-pdns', 'demiurge-dev-001-pdns:latest', 'images/powerdns'],
        ],
      );
      for (const i of images) {
        assert.equal(i.inputs.skipPush, true);
        assert.equal((i.inputs.build as Record<string, unknown>).builderVersion, 'BuilderV1');
      }
      assert.equal(byType(run, REMOTE_IMAGE).length, 0);
      const c = containers(run);
      assert.equal(c.get('demiurge-dev-001-dev')?.inputs.image, mockImageId(IMAGE, 'image-dev'));
      assert.equal(c.get('demiurge-dev-001-pdns')?.inputs.image, mockImageId(IMAGE, 'image-pdns'));
      assert.equal(c.get('demiurge-dev-001-build-server')?.inputs.image, mockImageId(IMAGE, 'image-build-server'));
      assert.equal(c.get('gw-pool-dev-001-1')?.inputs.image, mockImageId(IMAGE, 'image-gateway'));
    });

    it('declares the network and the named volumes; data volumes are protected and retained on delete', () => {
      const net = byType(run, NETWORK);
      assert.equal(net.length, 1);
      assert.equal(net[0].inputs.name, 'demiurge-dev-001');
      assert.equal(net[0].deleteBeforeReplace, true);
      const vols = new Map(byType(run, VOLUME).map((v) => [String(v.inputs.name), v]));
      assert.deepEqual([...vols.keys()].sort(), [
        'demiurge-dev-001-builds',
        'demiurge-dev-001-certs',
        'demiurge-dev-001-pgdata',
        'demiurge-dev-001-tls',
        'demiurge-dev-001-workspace',
      ]);
      for (const kind of ['workspace', 'pgdata', 'certs', 'tls']) {
        const v = vols.get(`demiurge-dev-001-${kind}`);
        assert.equal(v?.protect, true, `${kind} protect`);
        assert.equal(v?.retainOnDelete, true, `${kind} retainOnDelete`);
      }
      assert.equal(vols.get('demiurge-dev-001-builds')?.protect, false);
    });

    it('dev container: ports 80/443, socket + volumes, NET_ADMIN, tun, env per CONTRACTS, secret passwords', () => {
      const dev = containers(run).get('demiurge-dev-001-dev') as CapturedResource;
      assert.deepEqual(ports(dev), [
        { internal: 80, external: 80, protocol: 'tcp' },
        { internal: 443, external: 443, protocol: 'tcp' },
      ]);
      assert.deepEqual(dev.inputs.volumes, [
        { volumeName: 'demiurge-dev-001-workspace', containerPath: '/root/workspace' },
        { volumeName: 'demiurge-dev-001-pgdata', containerPath: '/var/lib/postgresql' },
        { volumeName: 'demiurge-dev-001-certs', containerPath: '/etc/demiurge/tls' },
        { volumeName: 'demiurge-dev-001-tls', containerPath: '/var/lib/demiurge/tls' },
        { volumeName: 'demiurge-dev-001-builds', containerPath: '/srv/builds' },
        { hostPath: '/var/run/docker.sock', containerPath: '/var/run/docker.sock' },
      ]);
      assert.deepEqual(dev.inputs.capabilities, { adds: ['NET_ADMIN'] });
      assert.deepEqual(dev.inputs.devices, [{ hostPath: '/dev/net/tun', containerPath: '/dev/net/tun', permissions: 'rwm' }]);
      assert.equal(dev.inputs.networkMode, undefined, 'networksAdvanced only: the provider detaches the default bridge');
      assert.deepEqual(dev.inputs.networksAdvanced, [{ name: 'demiurge-dev-001', aliases: ['demiurge-dev-001-dev'] }]);
      assert.deepEqual(labels(dev), { environment: env, 'demiurge.role': 'dev' });
      const e = envMap(dev);
      assert.deepEqual([...e.keys()], [
        'ENV_NAME',
        'DOMAIN',
        'PUBLIC_IP',
        'POSTGRES_PASSWORD',
        'PDNS_DB_PASSWORD',
        'GANYMEDE_DB_PASSWORD',
        'TLS_CERT_PATH',
        'TLS_KEY_PATH',
        'GANYMEDE_MODE',
        'DEMIURGE_RUNTIME_DIR',
        'DEMIURGE_RUNTIME_CONFIG',
      ]);
      assert.equal(e.get('GANYMEDE_MODE'), 'embedded');
      assert.equal(e.get('DEMIURGE_RUNTIME_DIR'), DEV_RUNTIME_DIR);
      assert.equal(e.get('DEMIURGE_RUNTIME_CONFIG'), RUNTIME_CONFIG_PATH);
      // The runtime ships as uploads: the API server and the CLI bundled, and the migrations they read.
      const uploads = dev.inputs.uploads as Array<{ file: string; content: string }>;
      assert.deepEqual(uploads.map((u) => u.file), [
        '/opt/demiurge/runtime/api-server.js',
        '/opt/demiurge/runtime/gateway-pool.js',
        ...fs.readdirSync(path.join(REPO_ROOT, 'runtime', 'migrations')).filter((f) => f.endsWith('.sql')).sort().map((f) => `/opt/demiurge/runtime/migrations/${f}`),
      ]);
      assert.equal(uploads[0].content, bundleRuntimeEntry('api-server.js').content);
      assert.equal(uploads[1].content, bundleRuntimeEntry('gateway-pool.js').content);
      assert.equal(e.get('ENV_NAME'), env);
      assert.equal(e.get('DOMAIN'), 'demiurge.test');
      assert.equal(e.get('PUBLIC_IP'), '127.0.0.1');
      assert.equal(e.get('TLS_CERT_PATH'), '/etc/demiurge/tls/fullchain.pem');
      assert.equal(e.get('TLS_KEY_PATH'), '/etc/demiurge/tls/privkey.pem');
      assert.equal(e.get('PDNS_DB_PASSWORD'), mockPassword('dev-pdns-db-password', 32));
      assert.deepEqual(secretEnvNames(dev).sort(), ['GANYMEDE_DB_PASSWORD', 'PDNS_DB_PASSWORD', 'POSTGRES_PASSWORD']);
      assert.equal(dev.inputs.wait, true);
      assert.deepEqual((dev.inputs.healthcheck as Record<string, unknown>).tests, ['CMD', 'bash', '-c', ': </dev/tcp/127.0.0.1/443 && : </dev/tcp/127.0.0.1/5432']);
      // The DB passwords come from @pulumi/random, whose `result` the engine stores as a secret.
      for (const p of ['dev-postgres-password', 'dev-pdns-db-password', 'dev-ganymede-db-password']) {
        const pw = byName(run, PASSWORD, p);
        assert.equal(pw.inputs.special, false);
        assert.ok(pw.additionalSecretOutputs.includes('result'), `${p}: additionalSecretOutputs`);
      }
    });

    it('PowerDNS: own container, gpgsql backend at the dev container, DNS tcp+udp, API on loopback, depends on the dev container', () => {
      const c = containers(run);
      const pdns = c.get('demiurge-dev-001-pdns') as CapturedResource;
      assert.deepEqual(ports(pdns), [
        { internal: 53, external: 53, ip: '127.0.0.1', protocol: 'tcp' },
        { internal: 53, external: 53, ip: '127.0.0.1', protocol: 'udp' },
        { internal: 8081, external: 8081, ip: '127.0.0.1', protocol: 'tcp' },
      ]);
      const e = envMap(pdns);
      assert.deepEqual(Object.fromEntries([...e].filter(([k]) => !['PDNS_API_KEY', 'PDNS_DB_PASSWORD'].includes(k))), {
        PDNS_DB_HOST: 'demiurge-dev-001-dev',
        PDNS_DB_PORT: '5432',
        PDNS_DB_NAME: 'pdns',
        PDNS_DB_USER: 'pdns',
        PDNS_SOA_CONTENT: 'ns1.demiurge.test. hostmaster.demiurge.test. 0 10800 3600 604800 2',
      });
      assert.equal(e.get('PDNS_API_KEY'), mockPassword('pdns-api-key', 40));
      // Same password as the role the dev container creates.
      assert.equal(e.get('PDNS_DB_PASSWORD'), envMap(c.get('demiurge-dev-001-dev') as CapturedResource).get('PDNS_DB_PASSWORD'));
      assert.deepEqual(secretEnvNames(pdns).sort(), ['PDNS_API_KEY', 'PDNS_DB_PASSWORD']);
      assert.deepEqual(pdns.inputs.networksAdvanced, [{ name: 'demiurge-dev-001', aliases: ['demiurge-dev-001-pdns'] }]);
      assert.ok(pdns.explicitDependencies.includes(urnOf(run, CONTAINER, 'dev')), 'dependsOn the dev container');
      assert.equal(pdns.inputs.wait, true);
    });

    it('PowerDNS zone and records: idempotent commands, API key only as a secret environment variable', () => {
      const zone = byName(run, COMMAND, 'pdns-zone');
      const records = byName(run, COMMAND, 'pdns-records');
      const key = mockPassword('pdns-api-key', 40);
      for (const cmd of [zone, records]) {
        assert.ok(String(cmd.inputs.create).length > 0 && String(cmd.inputs.delete).length > 0);
        for (const field of ['create', 'delete']) {
          assert.ok(!String(cmd.inputs[field]).includes(key), `${cmd.name}.${field} must not contain the key`);
          assert.ok(!cmd.secretPaths.includes(field));
        }
        assert.deepEqual(cmd.secretPaths, ['environment.PDNS_API_KEY']);
        const environment = cmd.inputs.environment as Record<string, string>;
        assert.equal(environment.PDNS_API_KEY, key);
        assert.equal(environment.PDNS_API_URL, 'http://127.0.0.1:8081');
        assert.equal(environment.ZONE, 'demiurge.test.');
        assert.equal(environment.PUBLIC_IP, '127.0.0.1');
        assert.equal(environment.A_RECORDS, 'demiurge.test. ganymede.demiurge.test. ns1.demiurge.test.');
        assert.equal(environment.WILDCARD, 'false');
        // The negative TTL (SOA minimum) and SOA TTL bound how long resolvers cache an NXDOMAIN (README, DNS timing).
        assert.equal(environment.SOA_CONTENT, 'ns1.demiurge.test. hostmaster.demiurge.test. 0 10800 3600 604800 2');
        assert.equal(environment.SOA_TTL, '2');
        assert.deepEqual(cmd.inputs.triggers, ['demiurge.test.']);
      }
      assert.match(String(records.inputs.create), /"changetype":"REPLACE"/);
      assert.ok(zone.explicitDependencies.includes(urnOf(run, CONTAINER, 'pdns')), 'zone dependsOn the pdns container');
      assert.ok(records.explicitDependencies.includes(zone.urn), 'records dependsOn the zone');
    });

    it('build server: environment network only, no published ports, builds volume read-only', () => {
      const bs = containers(run).get('demiurge-dev-001-build-server') as CapturedResource;
      assert.deepEqual(ports(bs), []);
      assert.equal(bs.inputs.networkMode, undefined);
      assert.deepEqual(bs.inputs.networksAdvanced, [{ name: 'demiurge-dev-001', aliases: ['demiurge-dev-001-build-server'] }]);
      assert.deepEqual(bs.inputs.volumes, [{ volumeName: 'demiurge-dev-001-builds', containerPath: '/srv/builds', readOnly: true }]);
      assert.deepEqual([...envMap(bs)], [['BUILD_DIR', '/srv/builds'], ['PORT', '8090']]);
      assert.equal(bs.inputs.wait, true);
    });

    it('gateway pool: one port entry per port, env, secret per-gateway token, NET_ADMIN + tun, dependsOn the build server', () => {
      const buildServerUrn = urnOf(run, CONTAINER, 'build-server');
      const tokens = new Set<string>();
      for (let n = 0; n < 3; n++) {
        const name = `gw-pool-dev-001-${n}`;
        const gw = containers(run).get(name) as CapturedResource;
        assert.equal(gw.name, name, 'resource name keyed by index');
        assert.deepEqual(ports(gw), [
          { internal: 7100 + n, external: 7100 + n, protocol: 'tcp' },
          { internal: 49100 + n, external: 49100 + n, protocol: 'udp' },
        ]);
        assert.deepEqual(labels(gw), { environment: env, 'demiurge.role': 'gateway' });
        const e = envMap(gw);
        assert.deepEqual([...e.keys()], [
          'ENV_NAME',
          'GATEWAY_HTTP_PORT',
          'GATEWAY_VPN_PORT',
          'GATEWAY_ID',
          'GATEWAY_TOKEN',
          'GANYMEDE_FQDN',
          'DOMAIN',
          'BUILD_SERVER_URL',
          'GANYMEDE_URL',
          'GATEWAY_IDLE_TIMEOUT_MS',
          'GATEWAY_PUSH_INTERVAL_MS',
        ]);
        assert.equal(e.get('GANYMEDE_URL'), 'http://demiurge-dev-001-dev:6000');
        assert.equal(e.get('GATEWAY_IDLE_TIMEOUT_MS'), '300000', 'the seed\'s 5-minute idle rule by default');
        assert.equal(e.get('GATEWAY_PUSH_INTERVAL_MS'), '60000');
        assert.deepEqual(gw.inputs.uploads, [{ file: GATEWAY_DEFAULT_APP, content: bundleRuntimeEntry('gateway-app.js').content }]);
        assert.equal(e.get('ENV_NAME'), env);
        assert.equal(e.get('GATEWAY_HTTP_PORT'), String(7100 + n));
        assert.equal(e.get('GATEWAY_VPN_PORT'), String(49100 + n));
        assert.equal(e.get('GATEWAY_ID'), name);
        assert.equal(e.get('GANYMEDE_FQDN'), 'ganymede.demiurge.test');
        assert.equal(e.get('DOMAIN'), 'demiurge.test');
        assert.equal(e.get('BUILD_SERVER_URL'), naming.buildServerUrl(env));
        assert.equal(e.get('GATEWAY_TOKEN'), mockPassword(`${name}-token`, 48));
        tokens.add(String(e.get('GATEWAY_TOKEN')));
        assert.deepEqual(secretEnvNames(gw), ['GATEWAY_TOKEN']);
        assert.deepEqual(gw.inputs.capabilities, { adds: ['NET_ADMIN'] });
        assert.deepEqual(gw.inputs.devices, [{ hostPath: '/dev/net/tun', containerPath: '/dev/net/tun', permissions: 'rwm' }]);
        assert.deepEqual(gw.inputs.networksAdvanced, [{ name: 'demiurge-dev-001', aliases: [name] }]);
        assert.ok(gw.explicitDependencies.includes(buildServerUrn), `${name} dependsOn the build server`);
        assert.notEqual(gw.inputs.wait, true, 'gateways do not block `up` on health');
      }
      assert.equal(tokens.size, 3, 'tokens are per gateway');
    });

    it('TLS mkcert: a renewer container (dev image, runtime CLI uploaded) issues from the CA on the tls volume and reloads the dev nginx', () => {
      const c = containers(run);
      const renewer = c.get('demiurge-dev-001-tls-renewer') as CapturedResource;
      const dev = c.get('demiurge-dev-001-dev') as CapturedResource;
      assert.equal(renewer.inputs.image, dev.inputs.image, 'same image as the dev container');
      assert.deepEqual(labels(renewer), { environment: env, 'demiurge.role': 'tls-renewer' });
      assert.deepEqual(renewer.inputs.entrypoints, ['/usr/bin/tini', '--']);
      assert.deepEqual(renewer.inputs.command, ['node', RENEW_CLI, 'loop']);
      assert.deepEqual(ports(renewer), []);
      assert.deepEqual(renewer.inputs.networksAdvanced, [{ name: 'demiurge-dev-001', aliases: ['demiurge-dev-001-tls-renewer'] }]);
      assert.deepEqual(renewer.inputs.volumes, [
        { volumeName: 'demiurge-dev-001-certs', containerPath: '/etc/demiurge/tls' },
        { volumeName: 'demiurge-dev-001-tls', containerPath: '/var/lib/demiurge/tls' },
        { hostPath: '/var/run/docker.sock', containerPath: '/var/run/docker.sock' },
      ]);
      assert.deepEqual(Object.fromEntries(envMap(renewer)), {
        DOMAIN: 'demiurge.test',
        TLS_CERT_PATH: envMap(dev).get('TLS_CERT_PATH'),
        TLS_KEY_PATH: envMap(dev).get('TLS_KEY_PATH'),
        TLS_RENEW_BEFORE_DAYS: '30',
        TLS_RENEW_INTERVAL_SECONDS: '3600',
        NGINX_CONTAINER: 'demiurge-dev-001-dev',
        TLS_PROBE: 'demiurge-dev-001-dev:443',
        TLS_KEY_OWNER: 'www-data',
        TLS_ISSUER: 'mkcert',
        MKCERT_CAROOT: '/var/lib/demiurge/tls/ca',
      });
      assert.deepEqual((renewer.inputs.healthcheck as Record<string, unknown>).tests, ['CMD', 'node', RENEW_CLI, 'check']);
      assert.equal(renewer.inputs.wait, true, '`up` waits until the first certificate is installed');
      assert.ok(renewer.dependencies.includes(urnOf(run, CONTAINER, 'dev')), 'after the dev container');
      // The uploaded code is the CLI bundled into one file, nothing else.
      const uploads = renewer.inputs.uploads as Array<{ file: string; content: string }>;
      assert.deepEqual(uploads, [{ file: RENEW_CLI, content: bundleRuntimeEntry('tls-renew.js').content }]);
      assert.equal(RENEW_CLI, `${RENEWER_CODE_DIR}/tls-renew.js`);

      const ca = byName(run, COMMAND, 'tls-dev-ca');
      assert.equal(ca.inputs.create, CA_EXPORT_SCRIPT);
      assert.deepEqual(ca.inputs.environment, { CONTAINER: 'demiurge-dev-001-tls-renewer', CA_FILE: '/var/lib/demiurge/tls/ca/rootCA.pem', DEMIURGE_DOCKER_HOST: '' });
      assert.deepEqual(ca.inputs.triggers, ['tls-renewer-id']);
      assert.ok(ca.dependencies.includes(renewer.urn));
      assert.equal(run.outputs.tlsDevCaCertificate, digest(`${COMMAND}/tls-dev-ca`), 'the command prints the CA certificate');
      assert.equal(byType(run, COMMAND).filter((x) => x.name.startsWith('tls-')).length, 1);
    });

    it('the organization-key encryption key is 32 random bytes and only a secret output', () => {
      const key = byName(run, 'random:index/randomBytes:RandomBytes', 'tls-org-cert-key');
      assert.equal(key.inputs.length, 32);
      assert.ok(key.additionalSecretOutputs.includes('base64'));
      assert.equal(run.outputs.orgCertificateKey, mockBytesBase64('tls-org-cert-key', 32));
      assert.ok(run.outputSecretPaths.includes('orgCertificateKey'));
      assert.equal(run.outputs.userContainerNaming, 'nested');
      assert.deepEqual(run.outputs.tlsRuntime, { issuer: 'dev-ca', caroot: '/var/lib/demiurge/tls/ca' });
    });

    it('one docker provider for the local engine', () => {
      const providers = byType(run, PROVIDER);
      assert.deepEqual(providers.map((p) => p.name), ['docker-main']);
      assert.equal(providers[0].inputs.host, undefined);
      for (const c of containers(run).values()) assert.equal(providerUrn(c.provider), providers[0].urn);
    });

    it('stack outputs: exact shape, gatewayInventory is GatewaySpec[], keys are secrets', () => {
      assert.deepEqual(Object.keys(run.outputs).sort(), [
        'databaseUrl',
        'devContainerName',
        'dnsPort',
        'domain',
        'envName',
        'frontendUrl',
        'ganymede',
        'ganymedeUrl',
        'gatewayInventory',
        'gatewayRegistrationTokens',
        'networkName',
        'nginxConfDir',
        'operatorToken',
        'orgCertificateKey',
        'powerDnsAdminUrl',
        'powerDnsApiKey',
        'powerDnsApiUrl',
        'publicIp',
        'runtimeConfigPath',
        'tlsDevCaCertificate',
        'tlsMode',
        'tlsRuntime',
        'userContainerNaming',
        'zone',
      ]);
      assert.deepEqual(run.outputs.gatewayInventory, [
        { name: 'gw-pool-dev-001-0', host: 'gw-pool-dev-001-0', httpPort: 7100, vpnPort: 49100 },
        { name: 'gw-pool-dev-001-1', host: 'gw-pool-dev-001-1', httpPort: 7101, vpnPort: 49101 },
        { name: 'gw-pool-dev-001-2', host: 'gw-pool-dev-001-2', httpPort: 7102, vpnPort: 49102 },
      ]);
      for (const spec of run.outputs.gatewayInventory as Record<string, unknown>[]) {
        assert.deepEqual(Object.keys(spec).sort(), ['host', 'httpPort', 'name', 'vpnPort']);
      }
      assert.equal(run.outputs.frontendUrl, 'https://demiurge.test');
      assert.equal(run.outputs.ganymedeUrl, 'https://ganymede.demiurge.test');
      assert.equal(run.outputs.powerDnsApiUrl, 'http://demiurge-dev-001-pdns:8081');
      assert.equal(run.outputs.powerDnsApiKey, mockPassword('pdns-api-key', 40));
      assert.equal(run.outputs.zone, 'demiurge.test.');
      assert.equal(run.outputs.envName, env);
      assert.equal(run.outputs.domain, 'demiurge.test');
      assert.equal(run.outputs.publicIp, '127.0.0.1');
      assert.equal(run.outputs.nginxConfDir, '/etc/nginx/demiurge');
      assert.equal(
        run.outputs.databaseUrl,
        `postgres://ganymede:${mockPassword('dev-ganymede-db-password', 32)}@demiurge-dev-001-dev:5432/ganymede`,
      );
      assert.deepEqual(run.outputSecretPaths.sort(), ['databaseUrl', 'gatewayRegistrationTokens', 'operatorToken', 'orgCertificateKey', 'powerDnsApiKey']);
      assert.equal(run.outputs.operatorToken, mockPassword('runtime-config-operator-token', 48));
      assert.equal(run.outputs.ganymede, 'embedded');
    });

    it('runtime configuration: config.json from the same values as the outputs, secrets.json only as a secret, written after the dev container', () => {
      const cmd = byName(run, COMMAND, 'runtime-config-install');
      assert.equal(cmd.inputs.create, RUNTIME_CONFIG_SCRIPT);
      assert.equal(cmd.inputs.delete, undefined);
      assert.deepEqual(cmd.inputs.interpreter, ['/bin/bash', '-c']);
      const envv = cmd.inputs.environment as Record<string, string>;
      const dev = byName(run, CONTAINER, 'dev');
      assert.deepEqual(cmd.inputs.triggers, ['dev-id'], 'a new dev container gets the files again');
      assert.ok(cmd.dependencies.includes(dev.urn), 'after the dev container');
      assert.ok(cmd.explicitDependencies.includes(urnOf(run, COMMAND, 'pdns-records')), 'after the zone and its records (the first reconcile)');
      const config = JSON.parse(envv.CONFIG_JSON) as Record<string, unknown>;
      assert.deepEqual(config, {
        version: 1,
        envName: env,
        domain: 'demiurge.test',
        publicIp: '127.0.0.1',
        schema: 'gateway_pool',
        database: { host: '127.0.0.1', port: 5432, database: 'ganymede', user: 'ganymede' },
        powerdns: { apiUrl: run.outputs.powerDnsApiUrl, zone: 'demiurge.test', database: { host: '127.0.0.1', port: 5432, database: 'pdns', user: 'pdns' } },
        nginx: { confDir: run.outputs.nginxConfDir, tls: { certPath: '/etc/demiurge/tls/fullchain.pem', keyPath: '/etc/demiurge/tls/privkey.pem' } },
        userContainerNaming: 'nested',
        inventory: run.outputs.gatewayInventory,
        tls: { mode: 'mkcert', ...(run.outputs.tlsRuntime as Record<string, unknown>) },
        api: {
          listen: '0.0.0.0:6000',
          publicUrl: run.outputs.ganymedeUrl,
          gatewayUrl: 'http://demiurge-dev-001-dev:6000',
          reconcileIntervalSeconds: 60,
          reaper: { intervalSeconds: 30, silenceSeconds: 600 },
          hostHealth: { intervalSeconds: 15, failuresBeforeUnreachable: 3, timeoutMs: 3000 },
        },
        secretsFile: '/etc/demiurge/runtime/secrets.json',
      });
      // What the runtime's own loader accepts (envserver's runtime/config).
      assert.equal(envv.CONFIG_PATH, RUNTIME_CONFIG_PATH);
      assert.equal(envv.SECRETS_PATH, '/etc/demiurge/runtime/secrets.json');
      assert.ok(cmd.secretPaths.some((p) => p.startsWith('environment')), 'the environment (SECRETS_JSON) is a secret');
      const secrets = JSON.parse(envv.SECRETS_JSON) as Record<string, unknown>;
      assert.deepEqual(secrets, {
        databasePassword: mockPassword('dev-ganymede-db-password', 32),
        powerdnsApiKey: run.outputs.powerDnsApiKey,
        powerdnsDatabasePassword: mockPassword('dev-pdns-db-password', 32),
        operatorToken: run.outputs.operatorToken,
        orgCertificateKey: run.outputs.orgCertificateKey,
        gatewayRegistrationTokens: run.outputs.gatewayRegistrationTokens,
      });
      for (const v of Object.values(secrets.gatewayRegistrationTokens as Record<string, string>)) assert.ok(!envv.CONFIG_JSON.includes(v));
      assert.ok(!envv.CONFIG_JSON.includes(String(run.outputs.powerDnsApiKey)), 'no secret in config.json');
      assert.ok(!envv.CONFIG_JSON.includes(mockPassword('dev-pdns-db-password', 32)), "PowerDNS's database password is not in config.json");
      assert.equal(envv.GANYMEDE_MODE, 'embedded');
      assert.equal(envv.API_HEALTH_URL, 'http://127.0.0.1:6000/healthz');
    });

    it('the runtime loader (runtime/config) accepts the config.json and secrets.json the program writes', async () => {
      const envv = byName(run, COMMAND, 'runtime-config-install').inputs.environment as Record<string, string>;
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'demiurge-runtime-config-'));
      try {
        const secretsFile = path.join(dir, 'secrets.json');
        fs.writeFileSync(secretsFile, envv.SECRETS_JSON, { mode: 0o600 });
        const doc = { ...(JSON.parse(envv.CONFIG_JSON) as Record<string, unknown>), secretsFile };
        const cfg = await parseRuntimeConfig(doc, path.join(dir, 'config.json'));
        assert.equal(cfg.envName, env);
        assert.deepEqual(cfg.inventory, run.outputs.gatewayInventory);
        assert.deepEqual(Object.keys(cfg.secrets.gatewayRegistrationTokens).sort(), ['gw-pool-dev-001-0', 'gw-pool-dev-001-1', 'gw-pool-dev-001-2']);
        // The allocator writes records to PowerDNS's tables as role pdns of the dev container's PostgreSQL.
        const pdnsDb = allocatorOptionsFromConfig(cfg).powerdns.database as { connectionString: string };
        assert.equal(pdnsDb.connectionString, `postgres://pdns:${encodeURIComponent(mockPassword('dev-pdns-db-password', 32))}@127.0.0.1:5432/pdns`);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });

    it('two runs under deterministic mocks capture identical inputs (command triggers and image build inputs included)', async () => {
      const again = await runProgram({ stack: 'dev', config: stackConfig('dev') });
      const inputsOf = (r: ProgramRun): Record<string, string> =>
        Object.fromEntries(r.resources.map((x) => [x.urn, digest(JSON.stringify({ inputs: x.inputs, deps: [...x.dependencies].sort(), secret: x.secretPaths }))]));
      assert.deepEqual(inputsOf(again), inputsOf(run));
      assert.ok(byType(again, IMAGE).every((i) => typeof (i.inputs.build as Record<string, unknown>).context === 'string'));
    });

    it('a change to runtime/ changes exactly the resources that carry the changed bundle', async function () {
      this.timeout(60_000);
      // Another checkout of the repository whose gateway default app differs by one line.
      const other = fs.mkdtempSync(path.join(os.tmpdir(), 'demiurge-runtime-change-'));
      try {
        fs.cpSync(path.join(REPO_ROOT, 'runtime'), path.join(other, 'runtime'), { recursive: true });
        fs.symlinkSync(path.join(REPO_ROOT, 'node_modules'), path.join(other, 'node_modules'));
        const copy = await withSourceRoot(other, () => runProgram({ stack: 'dev', config: stackConfig('dev') }));
        const byUrn = (r: ProgramRun): Map<string, string> => new Map(r.resources.map((x) => [x.urn, JSON.stringify(x.inputs)]));
        assert.deepEqual([...byUrn(copy)].filter(([u, v]) => byUrn(run).get(u) !== v).map(([u]) => u), [], 'an identical checkout elsewhere gives identical bundles');
        const main = path.join(other, 'runtime', 'gateway-app', 'main.ts');
        fs.writeFileSync(main, `${fs.readFileSync(main, 'utf8')}\nprocess.env.DEMIURGE_CHANGED_FOR_TEST = '1';\n`);
        const changed = await withSourceRoot(other, () => runProgram({ stack: 'dev', config: stackConfig('dev') }));
        const before = byUrn(run);
        const differing = changed.resources.filter((x) => before.get(x.urn) !== JSON.stringify(x.inputs)).map((x) => x.name).sort();
        assert.deepEqual(differing, ['gw-pool-dev-001-0', 'gw-pool-dev-001-1', 'gw-pool-dev-001-2'], 'only the gateways carry the default app');
        // A change to the allocator (used by the API server and the CLI) reaches the dev container only.
        const naming2 = path.join(other, 'runtime', 'pool-store.ts');
        fs.writeFileSync(naming2, `${fs.readFileSync(naming2, 'utf8')}\nprocess.env.DEMIURGE_CHANGED_FOR_TEST_2 = '1';\n`);
        const changed2 = await withSourceRoot(other, () => runProgram({ stack: 'dev', config: stackConfig('dev') }));
        const differing2 = changed2.resources.filter((x) => byUrn(changed).get(x.urn) !== JSON.stringify(x.inputs)).map((x) => x.name).sort();
        assert.deepEqual(differing2, ['dev'], 'only the dev container carries the API server and the CLI');
      } finally {
        fs.rmSync(other, { recursive: true, force: true });
      }
    });
  });

  describe('prod stack (Pulumi.prod.yaml): several Docker hosts, letsencrypt', () => {
    let run: ProgramRun;
    before(async () => {
      run = await runProgram({ stack: 'prod', config: stackConfig('prod') });
    });

    it('satisfies the container invariants', () => {
      assertInvariants(run, 'prod');
    });

    it('one docker provider per host; indices continue across hosts', () => {
      const main = byName(run, PROVIDER, 'docker-main');
      const gwB = byName(run, PROVIDER, 'docker-gw-b');
      assert.equal(main.inputs.host, undefined);
      assert.equal(gwB.inputs.host, 'ssh://deploy@203.0.113.12');
      const c = containers(run);
      for (let n = 0; n < 10; n++) {
        const gw = c.get(`gw-pool-prod-${n}`) as CapturedResource;
        assert.ok(gw, `gateway ${n}`);
        assert.equal(providerUrn(gw.provider), n < 4 ? main.urn : gwB.urn, `gateway ${n} host`);
        assert.deepEqual(ports(gw).map((p) => p.external), [7100 + n, 49100 + n]);
      }
      assert.equal(c.get('gw-pool-prod-10'), undefined);
      for (const name of ['demiurge-prod-dev', 'demiurge-prod-pdns']) {
        assert.equal(providerUrn((c.get(name) as CapturedResource).provider), main.urn);
      }
      assert.equal(providerUrn(byName(run, CONTAINER, 'build-server').provider), main.urn);
    });

    it('the remote host gets its own build mirror: builds volume + build server on its provider and network, unpublished', () => {
      const gwB = byName(run, PROVIDER, 'docker-gw-b');
      const main = byName(run, PROVIDER, 'docker-main');
      const builds = byType(run, VOLUME).filter((v) => v.inputs.name === 'demiurge-prod-builds');
      assert.deepEqual(builds.map((v) => [v.name, providerUrn(v.provider)]).sort(), [
        ['build-mirror-gw-b-builds', gwB.urn],
        ['volumes-builds', main.urn],
      ]);
      const mirrorVolume = byName(run, VOLUME, 'build-mirror-gw-b-builds');
      assert.deepEqual(labels(mirrorVolume), { environment: 'prod', 'demiurge.volume': 'builds' });
      assert.equal(mirrorVolume.protect, false, 'the builds volume is rebuilt by pack');
      const bs = byName(run, CONTAINER, 'build-mirror-gw-b-server');
      assert.equal(providerUrn(bs.provider), gwB.urn);
      assert.equal(bs.inputs.name, 'demiurge-prod-build-server');
      assert.equal(bs.inputs.image, mockImageId(IMAGE, 'image-build-server-gw-b'));
      assert.equal(providerUrn(byName(run, IMAGE, 'image-build-server-gw-b').provider), gwB.urn);
      assert.deepEqual(ports(bs), [], 'never published');
      assert.deepEqual(bs.inputs.networksAdvanced, [{ name: 'demiurge-prod', aliases: ['demiurge-prod-build-server'] }]);
      assert.ok(bs.propertyDependencies.networksAdvanced?.includes(urnOf(run, NETWORK, 'network-gw-b')), 'on the remote host\'s network');
      assert.deepEqual(bs.inputs.volumes, [{ volumeName: 'demiurge-prod-builds', containerPath: '/srv/builds', readOnly: true }]);
      assert.ok(bs.propertyDependencies.volumes?.includes(mirrorVolume.urn), 'mounts the mirror\'s own volume');
      assert.deepEqual([...envMap(bs)], [['BUILD_DIR', '/srv/builds'], ['PORT', '8090']]);
    });

    it('remote gateways: BUILD_SERVER_URL names the host\'s mirror, GANYMEDE_URL goes through stage 1, HTTP published on the host address', () => {
      const mirrorUrn = urnOf(run, CONTAINER, 'build-mirror-gw-b-server');
      const mainUrn = urnOf(run, CONTAINER, 'build-server');
      for (let n = 0; n < 10; n++) {
        const gw = containers(run).get(`gw-pool-prod-${n}`) as CapturedResource;
        const e = envMap(gw);
        assert.equal(e.get('BUILD_SERVER_URL'), 'http://demiurge-prod-build-server:8090');
        if (n < 4) {
          assert.ok(gw.explicitDependencies.includes(mainUrn) && !gw.explicitDependencies.includes(mirrorUrn), `gateway ${n}: main build server`);
          assert.equal(e.get('GANYMEDE_URL'), 'http://demiurge-prod-dev:6000');
          assert.equal(gw.inputs.hosts, undefined);
          assert.equal(ports(gw)[0].ip, undefined);
        } else {
          assert.ok(gw.explicitDependencies.includes(mirrorUrn) && !gw.explicitDependencies.includes(mainUrn), `gateway ${n}: the mirror`);
          assert.equal(e.get('GANYMEDE_URL'), 'https://ganymede.demiurge.example.com');
          assert.deepEqual(gw.inputs.hosts, [{ host: 'ganymede.demiurge.example.com', ip: '203.0.113.10' }]);
          assert.deepEqual(ports(gw), [
            { internal: 7100 + n, external: 7100 + n, ip: '203.0.113.12', protocol: 'tcp' },
            { internal: 49100 + n, external: 49100 + n, protocol: 'udp' },
          ]);
        }
      }
    });

    it('two remote hosts: each gets its own mirror, and its gateways use it; a moved stage-1 port reaches GANYMEDE_URL', async () => {
      const hosts = JSON.stringify([
        { name: 'main', host: 'main', poolSize: 1 },
        { name: 'gw-b', host: 'ssh://deploy@203.0.113.12', poolSize: 2 },
        { name: 'gw-c', host: 'ssh://deploy@gw-c.example.net', ip: '198.51.100.7', poolSize: 1 },
      ]);
      const r = await runProgram({ stack: 'prod', config: stackConfig('prod', { gatewayHosts: hosts, gatewayPoolSize: '4', stage1HttpsPort: '8443' }) });
      assertInvariants(r, 'prod');
      const expected: Record<string, [string, string]> = { 1: ['gw-b', '203.0.113.12'], 2: ['gw-b', '203.0.113.12'], 3: ['gw-c', '198.51.100.7'] };
      for (const hostName of ['gw-b', 'gw-c']) {
        const provider = byName(r, PROVIDER, `docker-${hostName}`).urn;
        assert.equal(providerUrn(byName(r, VOLUME, `build-mirror-${hostName}-builds`).provider), provider);
        assert.equal(providerUrn(byName(r, CONTAINER, `build-mirror-${hostName}-server`).provider), provider);
      }
      for (const [n, [hostName, ip]] of Object.entries(expected)) {
        const gw = containers(r).get(`gw-pool-prod-${n}`) as CapturedResource;
        assert.equal(providerUrn(gw.provider), byName(r, PROVIDER, `docker-${hostName}`).urn);
        assert.ok(gw.explicitDependencies.includes(urnOf(r, CONTAINER, `build-mirror-${hostName}-server`)), `gateway ${n} on ${hostName}'s mirror`);
        for (const other of ['gw-b', 'gw-c'].filter((h) => h !== hostName)) {
          assert.ok(!gw.explicitDependencies.includes(urnOf(r, CONTAINER, `build-mirror-${other}-server`)), `gateway ${n} not on ${other}'s mirror`);
        }
        assert.equal(envMap(gw).get('GANYMEDE_URL'), 'https://ganymede.demiurge.example.com:8443');
        assert.equal(ports(gw)[0].ip, ip);
      }
      assert.equal(byType(r, VOLUME).filter((v) => v.inputs.name === 'demiurge-prod-builds').length, 3);
    });

    it('the remote host gets its own environment network and gateway image', () => {
      const gwB = byName(run, PROVIDER, 'docker-gw-b');
      const nets = byType(run, NETWORK);
      assert.deepEqual(nets.map((n) => [n.name, n.inputs.name, providerUrn(n.provider) === gwB.urn]).sort(), [
        ['network', 'demiurge-prod', false],
        ['network-gw-b', 'demiurge-prod', true],
      ]);
      const img = byName(run, IMAGE, 'image-gateway-gw-b');
      assert.equal(providerUrn(img.provider), gwB.urn);
      assert.equal((containers(run).get('gw-pool-prod-7') as CapturedResource).inputs.image, mockImageId(IMAGE, 'image-gateway-gw-b'));
      assert.equal((containers(run).get('gw-pool-prod-2') as CapturedResource).inputs.image, mockImageId(IMAGE, 'image-gateway'));
    });

    it('gatewayInventory: container name on the main host, host IP on the remote host', () => {
      const inv = run.outputs.gatewayInventory as { name: string; host: string; httpPort: number; vpnPort: number }[];
      assert.equal(inv.length, 10);
      assert.deepEqual(inv[0], { name: 'gw-pool-prod-0', host: 'gw-pool-prod-0', httpPort: 7100, vpnPort: 49100 });
      assert.deepEqual(inv[9], { name: 'gw-pool-prod-9', host: '203.0.113.12', httpPort: 7109, vpnPort: 49109 });
      assert.deepEqual(inv.map((g) => g.host).filter((h) => h === '203.0.113.12').length, 6);
    });

    it('DNS is published on all addresses (tcp and udp) at the configured port', () => {
      const pdns = containers(run).get('demiurge-prod-pdns') as CapturedResource;
      assert.deepEqual(ports(pdns).slice(0, 2), [
        { internal: 53, external: 53, ip: '0.0.0.0', protocol: 'tcp' },
        { internal: 53, external: 53, ip: '0.0.0.0', protocol: 'udp' },
      ]);
    });

    it('TLS letsencrypt: the renewer orders through the PowerDNS on the environment network after the zone exists; the key stays secret', () => {
      const key = mockPassword('pdns-api-key', 40);
      const renewer = containers(run).get('demiurge-prod-tls-renewer') as CapturedResource;
      const e = Object.fromEntries(envMap(renewer));
      assert.deepEqual(
        { ...e, PDNS_API_KEY: '<secret>' },
        {
          DOMAIN: 'demiurge.example.com',
          TLS_CERT_PATH: '/etc/demiurge/tls/fullchain.pem',
          TLS_KEY_PATH: '/etc/demiurge/tls/privkey.pem',
          TLS_RENEW_BEFORE_DAYS: '30',
          TLS_RENEW_INTERVAL_SECONDS: '3600',
          NGINX_CONTAINER: 'demiurge-prod-dev',
          TLS_PROBE: 'demiurge-prod-dev:443',
          TLS_KEY_OWNER: 'www-data',
          TLS_ISSUER: 'acme',
          ACME_DIRECTORY: 'https://acme-v02.api.letsencrypt.org/directory',
          ACME_EMAIL: 'admin@example.com',
          ACME_STATE_DIR: '/var/lib/demiurge/tls/acme',
          PDNS_API_URL: 'http://demiurge-prod-pdns:8081',
          PDNS_API_KEY: '<secret>',
          PDNS_ZONE: 'demiurge.example.com',
          DNS_RESOLVERS: 'demiurge-prod-pdns:53',
        },
      );
      assert.equal(e.PDNS_API_KEY, key);
      assert.deepEqual(secretEnvNames(renewer), ['PDNS_API_KEY']);
      assert.ok(renewer.explicitDependencies.includes(urnOf(run, COMMAND, 'pdns-records')), 'orders only once the zone and its records exist');
      assert.ok(renewer.dependencies.includes(urnOf(run, CONTAINER, 'dev')));
      assert.equal(providerUrn(renewer.provider), byName(run, PROVIDER, 'docker-main').urn);
      assert.equal(byType(run, COMMAND).filter((x) => x.name.startsWith('tls-')).length, 0, 'no dev CA export');
      assert.equal(run.outputs.tlsMode, 'letsencrypt');
      assert.equal(run.outputs.tlsDevCaCertificate, null);
      assert.ok(run.outputSecretPaths.includes('orgCertificateKey'));
      assert.deepEqual(run.outputs.tlsRuntime, {
        issuer: 'acme',
        directoryUrl: 'https://acme-v02.api.letsencrypt.org/directory',
        email: 'admin@example.com',
        stateDir: '/var/lib/demiurge/tls/acme',
        resolvers: ['demiurge-prod-pdns:53'],
      });
    });

    it('a private ACME CA: acmeCaCertificates as a file in the renewer and the dev container (LEGO_CA_CERTIFICATES); gatewayExtraCaCertificates as NODE_EXTRA_CA_CERTS of every gateway', async () => {
      const pem = fs.readFileSync(path.join(REPO_ROOT, 'test', 'fixtures', 'pem', 'test-ca.pem'), 'utf8');
      const r = await runProgram({ stack: 'prod', config: stackConfig('prod', { acmeCaCertificates: pem, gatewayExtraCaCertificates: pem }) });
      const c = containers(r);
      // Same path in both containers: the renewer's code directory is the dev container's runtime directory.
      assert.equal(RENEWER_CODE_DIR, DEV_RUNTIME_DIR);
      const uploadsOf = (x: CapturedResource): Map<string, string> =>
        new Map(((x.inputs.uploads ?? []) as Array<{ file: string; content: string }>).map((u) => [u.file, u.content]));
      const renewer = c.get('demiurge-prod-tls-renewer') as CapturedResource;
      assert.equal(envMap(renewer).get('ACME_CA_CERTIFICATES'), ACME_CA_FILE);
      assert.equal(uploadsOf(renewer).get(ACME_CA_FILE), pem);
      assert.equal(uploadsOf(c.get('demiurge-prod-dev') as CapturedResource).get(ACME_CA_FILE), pem);
      assert.equal((r.outputs.tlsRuntime as Record<string, unknown>).caCertificatesFile, ACME_CA_FILE);
      // Never on a command line: no input string but the uploads carries the PEM.
      for (const x of r.resources) {
        for (const leaf of stringLeaves(x.inputs, [])) {
          if (leaf.value.includes('BEGIN CERTIFICATE')) assert.match(leaf.path, /^uploads\[\d+\]\.content$/, `${x.name}: PEM in ${leaf.path}`);
        }
      }
      const gateways = byType(r, CONTAINER).filter((x) => x.name.startsWith('gw-pool-'));
      assert.equal(gateways.length, 10);
      for (const gw of gateways) {
        assert.equal(envMap(gw).get('NODE_EXTRA_CA_CERTS'), GATEWAY_EXTRA_CA_FILE, gw.name);
        assert.equal(uploadsOf(gw).get(GATEWAY_EXTRA_CA_FILE), pem, gw.name);
      }
      // Unset (the template): none of it.
      for (const gw of byType(run, CONTAINER).filter((x) => x.name.startsWith('gw-pool-'))) assert.equal(envMap(gw).get('NODE_EXTRA_CA_CERTS'), undefined);
      assert.equal(envMap(containers(run).get('demiurge-prod-tls-renewer') as CapturedResource).get('ACME_CA_CERTIFICATES'), undefined);
    });
  });

  describe('pool resizing keeps names, URNs and ports of kept indices', () => {
    const runs: Record<number, ProgramRun> = {};
    before(async () => {
      for (const size of [3, 5, 2]) {
        runs[size] = await runProgram({ stack: 'dev', config: stackConfig('dev', { gatewayPoolSize: String(size) }) });
      }
    });

    function gateways(run: ProgramRun): Map<number, { urn: string; ports: Port[]; token: string }> {
      const out = new Map<number, { urn: string; ports: Port[]; token: string }>();
      for (const [name, c] of containers(run)) {
        const n = naming.gatewayIndex('dev-001', name);
        if (n !== undefined) out.set(n, { urn: c.urn, ports: ports(c), token: urnOf(run, PASSWORD, `${name}-token`) });
      }
      return out;
    }
    function others(run: ProgramRun): string[] {
      return run.resources.filter((r) => !r.name.startsWith('gw-pool-')).map((r) => r.urn).sort();
    }

    it('3 → 5 adds indices 3 and 4 and keeps 0-2 identical', () => {
      const a = gateways(runs[3]);
      const b = gateways(runs[5]);
      assert.deepEqual([...a.keys()].sort(), [0, 1, 2]);
      assert.deepEqual([...b.keys()].sort(), [0, 1, 2, 3, 4]);
      for (const n of [0, 1, 2]) assert.deepEqual(b.get(n), a.get(n));
      assert.deepEqual(b.get(4)?.ports.map((p) => p.external), [7104, 49104]);
      assert.deepEqual(others(runs[5]), others(runs[3]), 'nothing else changes');
    });

    it('5 → 2 removes the highest indices only', () => {
      const b = gateways(runs[5]);
      const c = gateways(runs[2]);
      assert.deepEqual([...c.keys()].sort(), [0, 1]);
      for (const n of [0, 1]) assert.deepEqual(c.get(n), b.get(n));
      assert.deepEqual(others(runs[2]), others(runs[5]));
      assert.equal((runs[2].outputs.gatewayInventory as unknown[]).length, 2);
    });
  });

  describe('variants', () => {
    it('ganymede workspace: the dev container does not run the built-in API server; the files are written all the same', async () => {
      const run = await runProgram({ stack: 'dev', config: stackConfig('dev', { ganymede: 'workspace', gatewayIdleTimeoutSeconds: '5', gatewayPushIntervalSeconds: '2' }) });
      const dev = containers(run).get('demiurge-dev-001-dev') as CapturedResource;
      assert.equal(envMap(dev).get('GANYMEDE_MODE'), 'workspace');
      const envv = byName(run, COMMAND, 'runtime-config-install').inputs.environment as Record<string, string>;
      assert.equal(envv.GANYMEDE_MODE, 'workspace');
      assert.equal(run.outputs.ganymede, 'workspace');
      for (const gw of byType(run, CONTAINER).filter((c) => c.name.startsWith('gw-pool-'))) {
        assert.equal(envMap(gw).get('GATEWAY_IDLE_TIMEOUT_MS'), '5000');
        assert.equal(envMap(gw).get('GATEWAY_PUSH_INTERVAL_MS'), '2000');
      }
    });

    it('hostHealthIntervalSeconds reaches the API server\'s config.json (a probe never outlasts its round)', async () => {
      const run = await runProgram({ stack: 'dev', config: stackConfig('dev', { hostHealthIntervalSeconds: '2' }) });
      const envv = byName(run, COMMAND, 'runtime-config-install').inputs.environment as Record<string, string>;
      const api = (JSON.parse(envv.CONFIG_JSON) as { api: Record<string, unknown> }).api;
      assert.deepEqual(api.hostHealth, { intervalSeconds: 2, failuresBeforeUnreachable: 3, timeoutMs: 2000 });
    });

    it('stage-1 ports move on the host only (the dev container still listens on 80/443 inside)', async () => {
      const run = await runProgram({ stack: 'dev', config: stackConfig('dev', { stage1HttpPort: '8080', stage1HttpsPort: '8443' }) });
      const dev = containers(run).get('demiurge-dev-001-dev') as CapturedResource;
      assert.deepEqual(ports(dev), [
        { internal: 80, external: 8080, protocol: 'tcp' },
        { internal: 443, external: 8443, protocol: 'tcp' },
      ]);
      assert.deepEqual((dev.inputs.healthcheck as Record<string, unknown>).tests, ['CMD', 'bash', '-c', ': </dev/tcp/127.0.0.1/443 && : </dev/tcp/127.0.0.1/5432']);
    });

    it('prebuilt tags: RemoteImage with keepLocally, containers use the image id, never the tag', async () => {
      const run = await runProgram({
        stack: 'dev',
        config: stackConfig('dev', {
          devImage: 'registry.example.com/demiurge/dev:1.0.0',
          gatewayImage: 'registry.example.com/demiurge/gateway:1.0.0',
        }),
      });
      const remotes = byType(run, REMOTE_IMAGE);
      assert.deepEqual(remotes.map((r) => [r.name, r.inputs.name, r.inputs.keepLocally]).sort(), [
        ['image-dev', 'registry.example.com/demiurge/dev:1.0.0', true],
        ['image-gateway', 'registry.example.com/demiurge/gateway:1.0.0', true],
      ]);
      assert.deepEqual(byType(run, IMAGE).map((i) => i.name).sort(), ['image-build-server', 'image-pdns']);
      const c = containers(run);
      assert.equal(c.get('demiurge-dev-001-dev')?.inputs.image, mockImageId(REMOTE_IMAGE, 'image-dev'));
      assert.equal(c.get('gw-pool-dev-001-0')?.inputs.image, mockImageId(REMOTE_IMAGE, 'image-gateway'));
      assertInvariants(run, 'dev-001');
    });

    it('retainDataVolumes=false lets destroy delete the data volumes', async () => {
      const run = await runProgram({ stack: 'dev', config: stackConfig('dev', { retainDataVolumes: 'false' }) });
      for (const v of byType(run, VOLUME)) {
        assert.equal(v.protect, false, String(v.inputs.name));
        assert.equal(v.retainOnDelete, false, String(v.inputs.name));
      }
    });

    it('tlsMode none: no TLS commands, the dev image falls back to its self-signed certificate', async () => {
      const run = await runProgram({ stack: 'dev', config: stackConfig('dev', { tlsMode: 'none', dnsWildcard: 'true' }) });
      assert.deepEqual(byType(run, COMMAND).map((c) => c.name).sort(), ['pdns-records', 'pdns-zone', 'runtime-config-install']);
      assert.equal(containers(run).get('demiurge-dev-001-tls-renewer'), undefined);
      assert.equal(run.outputs.orgCertificateKey, null);
      assert.equal(envMap(containers(run).get('demiurge-dev-001-dev') as CapturedResource).get('TLS_CERT_PATH'), '/etc/demiurge/tls/fullchain.pem');
      assert.equal((byName(run, COMMAND, 'pdns-records').inputs.environment as Record<string, string>).WILDCARD, 'true');
      assert.equal(run.outputs.tlsMode, 'none');
    });

    it('a remote dockerHost is passed to the provider and to the dev CA export', async () => {
      const run = await runProgram({ stack: 'dev', config: stackConfig('dev', { dockerHost: 'ssh://ops@198.51.100.20' }) });
      assert.equal(byName(run, PROVIDER, 'docker-main').inputs.host, 'ssh://ops@198.51.100.20');
      assert.equal((byName(run, COMMAND, 'tls-dev-ca').inputs.environment as Record<string, string>).DEMIURGE_DOCKER_HOST, 'ssh://ops@198.51.100.20');
    });

    it('powerDnsApiHostPort 0: the API is not published on the host, commands use powerDnsAdminUrl', async () => {
      const run = await runProgram({
        stack: 'dev',
        config: stackConfig('dev', { powerDnsApiHostPort: '0', powerDnsAdminUrl: 'http://127.0.0.1:18081' }),
      });
      assert.deepEqual(ports(containers(run).get('demiurge-dev-001-pdns') as CapturedResource).map((p) => p.internal), [53, 53]);
      assert.equal((byName(run, COMMAND, 'pdns-zone').inputs.environment as Record<string, string>).PDNS_API_URL, 'http://127.0.0.1:18081');
    });

    it('runs under preview (unknown outputs) without errors', async () => {
      const run = await runProgram({ stack: 'dev', config: stackConfig('dev'), preview: true });
      assert.equal(containers(run).size, 7);
    });
  });

  describe('invalid configuration', () => {
    it('fails before any resource is declared, naming every bad key', async () => {
      let error: unknown;
      try {
        await runProgram({
          stack: 'dev',
          config: stackConfig('dev', { gatewayPoolSize: '0', tlsMode: 'acme', domain: 'Not_A_Domain' }),
        });
      } catch (err) {
        error = err;
      }
      assert.ok(error instanceof ProgramError, `expected the program to fail, got ${String(error)}`);
      assert.match(error.message, /demiurge:gatewayPoolSize: /);
      assert.match(error.message, /demiurge:tlsMode: /);
      assert.match(error.message, /demiurge:domain: /);
      assert.deepEqual(
        error.resources.map((r) => r.type),
        ['pulumi:pulumi:Stack'],
        'only the root stack resource may exist',
      );
    });

    it('the program runs again cleanly after a failed run', async () => {
      const run = await runProgram({ stack: 'dev', config: stackConfig('dev') });
      assert.equal(containers(run).size, 7);
    });
  });
});

// ---------------------------------------------------------------------------
// The shell scripts of the local.Command resources, run with bash against a
// fake PowerDNS API and fake mkcert/lego/docker/crontab binaries.
// ---------------------------------------------------------------------------

interface RRset {
  name: string;
  type: string;
  ttl?: number;
  records: { content: string }[];
}

class FakePowerDns {
  readonly key = 'fake-api-key-0123456789';
  readonly zones = new Map<string, Map<string, RRset>>();
  /** Zone settings (api_rectify, soa_edit_api, ...) as last POSTed or PUT. */
  readonly settings = new Map<string, Record<string, unknown>>();
  readonly requests: string[] = [];
  private server = http.createServer((req, res) => this.handle(req, res));
  url = '';

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }
  async stop(): Promise<void> {
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
  a(zone: string, name: string): string[] | undefined {
    return this.zones.get(zone)?.get(`${name}/A`)?.records.map((r) => r.content);
  }

  rrset(zone: string, name: string, type: string): { ttl: number; records: string[] } | undefined {
    const rr = this.zones.get(zone)?.get(`${name}/${type}`);
    return rr ? { ttl: rr.ttl as number, records: rr.records.map((r) => r.content) } : undefined;
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      const send = (status: number, json?: unknown): void => {
        res.writeHead(status, { 'Content-Type': 'application/json' });
        res.end(json === undefined ? '' : JSON.stringify(json));
      };
      this.requests.push(`${req.method} ${req.url}`);
      if (req.headers['x-api-key'] !== this.key) return send(401, { error: 'Unauthorized' });
      const m = /^\/api\/v1\/servers\/localhost\/zones(?:\/([^?]+))?(?:\?.*)?$/.exec(req.url ?? '');
      if (!m) return send(404, { error: 'Not Found' });
      const zone = m[1] === undefined ? undefined : decodeURIComponent(m[1]);
      let data: { name?: string; rrsets?: (RRset & { changetype: string })[]; [setting: string]: unknown } = {};
      if (body !== '') {
        try {
          data = JSON.parse(body) as typeof data;
        } catch {
          return send(400, { error: 'malformed JSON' });
        }
      }
      if (zone === undefined && req.method === 'POST') {
        const name = String(data.name);
        if (this.zones.has(name)) return send(409, { error: 'Conflict' });
        this.zones.set(name, new Map([[`${name}/NS`, { name, type: 'NS', records: [{ content: `ns1.${name}` }] }]]));
        const { name: _n, rrsets: _r, ...settings } = data;
        this.settings.set(name, settings);
        return send(201, { name });
      }
      const rrsets = zone === undefined ? undefined : this.zones.get(zone);
      if (zone === undefined || rrsets === undefined) return send(404, { error: 'Could not find domain' });
      if (req.method === 'GET') return send(200, { name: zone, rrsets: [...rrsets.values()] });
      if (req.method === 'DELETE') {
        this.zones.delete(zone);
        return send(204);
      }
      if (req.method === 'PUT') {
        this.settings.set(zone, { ...this.settings.get(zone), ...data });
        return send(204);
      }
      if (req.method === 'PATCH') {
        for (const rr of data.rrsets ?? []) {
          if (!rr.name.endsWith(zone)) return send(422, { error: `${rr.name} is out of zone` });
          const k = `${rr.name}/${rr.type}`;
          if (rr.changetype === 'REPLACE') rrsets.set(k, { name: rr.name, type: rr.type, ttl: rr.ttl, records: rr.records });
          else if (rr.changetype === 'DELETE') rrsets.delete(k);
          else return send(422, { error: 'bad changetype' });
        }
        return send(204);
      }
      return send(405, { error: 'Method Not Allowed' });
    });
  }
}

interface ScriptResult {
  code: number;
  stdout: string;
  stderr: string;
}

function runScript(script: string, env: Record<string, string>): Promise<ScriptResult> {
  return new Promise((resolve) => {
    execFile('/bin/bash', ['-c', script], { env: { ...process.env, ...env }, timeout: 20000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? Number((err as { code: number }).code) : 1;
      resolve({ code, stdout, stderr });
    });
  });
}

describe('command scripts (bash, against fakes)', function () {
  this.timeout(30000);

  describe('PowerDNS zone and records', () => {
    const api = new FakePowerDns();
    let env: Record<string, string>;
    before(async () => {
      await api.start();
      env = {
        PDNS_API_URL: api.url,
        PDNS_API_KEY: api.key,
        ZONE: 'demiurge.test.',
        NAMESERVER: 'ns1.demiurge.test.',
        PUBLIC_IP: '127.0.0.1',
        A_RECORDS: 'demiurge.test. ganymede.demiurge.test. ns1.demiurge.test.',
        WILDCARD_NAME: '*.demiurge.test.',
        WILDCARD: 'false',
        SOA_CONTENT: 'ns1.demiurge.test. hostmaster.demiurge.test. 0 10800 3600 604800 2',
        SOA_TTL: '2',
        ZONE_SETTINGS: JSON.stringify(ZONE_WRITE_SETTINGS),
        PDNS_WAIT_SECONDS: '3',
      };
    });
    after(() => api.stop());

    it('creates the zone once (idempotent)', async () => {
      const first = await runScript(ZONE_CREATE_SCRIPT, env);
      assert.equal(first.code, 0, first.stderr);
      assert.match(first.stdout, /created zone demiurge\.test\./);
      const second = await runScript(ZONE_CREATE_SCRIPT, env);
      assert.equal(second.code, 0, second.stderr);
      assert.match(second.stdout, /exists/);
      assert.equal(api.requests.filter((r) => r.startsWith('POST')).length, 1);
    });

    it('creates the zone without per-PATCH rectify and SOA edit, and sets them on a zone that exists', async () => {
      const zone = 'settings.demiurge.test.';
      const e = { ...env, ZONE: zone, NAMESERVER: `ns1.${zone}` };
      const first = await runScript(ZONE_CREATE_SCRIPT, e);
      assert.equal(first.code, 0, first.stderr);
      assert.deepEqual(api.settings.get(zone), { kind: 'Native', nameservers: [`ns1.${zone}`], api_rectify: false, soa_edit_api: '' });
      api.settings.set(zone, { api_rectify: true, soa_edit_api: 'DEFAULT' }); // a zone made before the settings
      const second = await runScript(ZONE_CREATE_SCRIPT, e);
      assert.equal(second.code, 0, second.stderr);
      assert.deepEqual(api.settings.get(zone), { api_rectify: false, soa_edit_api: '' });
      const missing = await runScript(ZONE_CREATE_SCRIPT, { ...e, ZONE_SETTINGS: '' });
      assert.notEqual(missing.code, 0);
      assert.match(missing.stderr, /ZONE_SETTINGS/);
    });

    it('REPLACEs the core records (idempotent), follows publicIp and the wildcard switch', async () => {
      for (let i = 0; i < 2; i++) {
        const r = await runScript(RECORDS_CREATE_SCRIPT, env);
        assert.equal(r.code, 0, r.stderr);
      }
      for (const name of ['demiurge.test.', 'ganymede.demiurge.test.', 'ns1.demiurge.test.']) {
        assert.deepEqual(api.a('demiurge.test.', name), ['127.0.0.1'], name);
      }
      assert.equal(api.a('demiurge.test.', '*.demiurge.test.'), undefined);
      assert.deepEqual(api.rrset('demiurge.test.', 'demiurge.test.', 'SOA'), { ttl: 2, records: ['ns1.demiurge.test. hostmaster.demiurge.test. 0 10800 3600 604800 2'] });
      let r = await runScript(RECORDS_CREATE_SCRIPT, { ...env, PUBLIC_IP: '192.0.2.5', WILDCARD: 'true' });
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(api.a('demiurge.test.', 'ganymede.demiurge.test.'), ['192.0.2.5']);
      assert.deepEqual(api.a('demiurge.test.', '*.demiurge.test.'), ['192.0.2.5']);
      r = await runScript(RECORDS_CREATE_SCRIPT, { ...env, WILDCARD: 'false' });
      assert.equal(r.code, 0, r.stderr);
      assert.equal(api.a('demiurge.test.', '*.demiurge.test.'), undefined);
      assert.deepEqual(api.a('demiurge.test.', 'demiurge.test.'), ['127.0.0.1']);
    });

    it('fails with the API status on a wrong key, without printing the key', async () => {
      const wrongKey = 'wrong-key-abcdef';
      const r = await runScript(RECORDS_CREATE_SCRIPT, { ...env, PDNS_API_KEY: wrongKey });
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /401/);
      assert.ok(!(r.stdout + r.stderr).includes(wrongKey));
      const ok = await runScript(RECORDS_CREATE_SCRIPT, env);
      assert.ok(!(ok.stdout + ok.stderr).includes(api.key));
    });

    it('create fails when the API is unreachable; delete is best effort', async () => {
      const down = { ...env, PDNS_API_URL: 'http://127.0.0.1:9', PDNS_WAIT_SECONDS: '1' };
      const c = await runScript(ZONE_CREATE_SCRIPT, down);
      assert.notEqual(c.code, 0);
      assert.match(c.stderr, /unreachable/);
      const d = await runScript(RECORDS_DELETE_SCRIPT, down);
      assert.equal(d.code, 0, d.stderr);
      assert.match(d.stderr, /warning/);
    });

    it('delete removes the records, then the zone; repeated deletes succeed', async () => {
      let r = await runScript(RECORDS_DELETE_SCRIPT, env);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(api.a('demiurge.test.', 'ganymede.demiurge.test.'), undefined);
      assert.ok(api.zones.has('demiurge.test.'), 'records delete keeps the zone');
      r = await runScript(ZONE_DELETE_SCRIPT, env);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(api.zones.has('demiurge.test.'), false);
      for (const s of [ZONE_DELETE_SCRIPT, RECORDS_DELETE_SCRIPT]) {
        r = await runScript(s, env);
        assert.equal(r.code, 0, r.stderr);
      }
    });
  });

  describe('runtime configuration install', () => {
    let tmp: string;
    let bin: string;
    beforeEach(() => {
      tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'demiurge-runtime-config-'));
      bin = path.join(tmp, 'bin');
      fs.mkdirSync(bin);
    });
    afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

    /** A docker CLI that logs its argv (one line per call) and the stdin it was given, and whose health probe answers per HEALTHY. */
    const fakeDocker = (healthy: boolean): void => {
      fs.writeFileSync(
        path.join(bin, 'docker'),
        `#!/usr/bin/env bash
echo "DOCKER_HOST=\${DOCKER_HOST:-} $*" >> ${tmp}/argv.log
if [ "$1" = exec ] && [ "$2" = -i ]; then cat >> ${tmp}/stdin.log; echo >> ${tmp}/stdin.log; exit 0; fi
case "$*" in
  *curl*) ${healthy ? 'exit 0' : 'exit 7'} ;;
  logs*) echo '[api-server] {"event":"server.failed","code":"INVALID_CONFIG"}'; echo 'postgres noise' ;;
esac
exit 0
`,
        { mode: 0o755 },
      );
    };
    const env = (extra: Record<string, string> = {}): Record<string, string> => ({
      PATH: `${bin}:${process.env.PATH ?? ''}`,
      CONTAINER: 'demiurge-dev-001-dev',
      CONFIG_JSON: '{"version":1}',
      SECRETS_JSON: '{"operatorToken":"s3cr3t-operator-token"}',
      CONFIG_PATH: '/etc/demiurge/runtime/config.json',
      SECRETS_PATH: '/etc/demiurge/runtime/secrets.json',
      GANYMEDE_MODE: 'embedded',
      API_HEALTH_URL: 'http://127.0.0.1:6000/healthz',
      API_WAIT_SECONDS: '2',
      DEMIURGE_DOCKER_HOST: '',
      ...extra,
    });

    it('secrets travel on stdin only (0600 via a temporary file), then the API server restarts and answers', async () => {
      fakeDocker(true);
      const r = await runScript(RUNTIME_CONFIG_SCRIPT, env({ DEMIURGE_DOCKER_HOST: 'ssh://ops@198.51.100.20' }));
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /API server answers http:\/\/127\.0\.0\.1:6000\/healthz/);
      const argv = fs.readFileSync(path.join(tmp, 'argv.log'), 'utf8');
      assert.ok(!argv.includes('s3cr3t'), 'no secret on a docker command line');
      assert.ok(!r.stdout.includes('s3cr3t') && !r.stderr.includes('s3cr3t'), 'no secret in the output');
      assert.match(argv, /DOCKER_HOST=ssh:\/\/ops@198\.51\.100\.20 exec -i -e TARGET=\/etc\/demiurge\/runtime\/secrets\.json -e MODE=600 demiurge-dev-001-dev sh -c/);
      assert.match(argv, /-e TARGET=\/etc\/demiurge\/runtime\/config\.json -e MODE=644 /);
      assert.match(argv, /exec demiurge-dev-001-dev \/usr\/local\/bin\/dev-api-server restart/);
      assert.equal(fs.readFileSync(path.join(tmp, 'stdin.log'), 'utf8'), '{"operatorToken":"s3cr3t-operator-token"}\n{"version":1}\n');
    });

    it('an API server that never answers fails the command with its own log lines (bounded wait)', async () => {
      fakeDocker(false);
      const r = await runScript(RUNTIME_CONFIG_SCRIPT, env());
      assert.equal(r.code, 1);
      assert.match(r.stderr, /did not answer http:\/\/127\.0\.0\.1:6000\/healthz within 2 s/);
      assert.match(r.stderr, /server\.failed/);
      assert.ok(!r.stderr.includes('postgres noise'), 'only the [api-server] lines');
    });

    it('workspace mode: files only, no restart', async () => {
      fakeDocker(false);
      const r = await runScript(RUNTIME_CONFIG_SCRIPT, env({ GANYMEDE_MODE: 'workspace' }));
      assert.equal(r.code, 0, r.stderr);
      assert.ok(!fs.readFileSync(path.join(tmp, 'argv.log'), 'utf8').includes('dev-api-server'));
    });
  });

  describe('TLS', () => {
    let tmp: string;
    beforeEach(() => {
      tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'demiurge-tls-'));
    });
    afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

    it('dev CA export: prints the CA once it exists in the container, through DOCKER_HOST when given', async () => {
      const bin = path.join(tmp, 'bin');
      fs.mkdirSync(bin);
      fs.writeFileSync(
        path.join(bin, 'docker'),
        `#!/usr/bin/env bash\necho "DOCKER_HOST=\${DOCKER_HOST:-} $*" >> ${tmp}/docker.log\nif [ "$3" = test ]; then exit 0; fi\necho '-----BEGIN CERTIFICATE-----'\n`,
        { mode: 0o755 },
      );
      const r = await runScript(CA_EXPORT_SCRIPT, {
        PATH: `${bin}:${process.env.PATH ?? ''}`,
        CONTAINER: 'demiurge-dev-001-tls-renewer',
        CA_FILE: '/var/lib/demiurge/tls/ca/rootCA.pem',
        DEMIURGE_DOCKER_HOST: 'ssh://ops@198.51.100.20',
      });
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.trim(), '-----BEGIN CERTIFICATE-----');
      assert.deepEqual(fs.readFileSync(path.join(tmp, 'docker.log'), 'utf8').trim().split('\n'), [
        'DOCKER_HOST=ssh://ops@198.51.100.20 exec demiurge-dev-001-tls-renewer test -s /var/lib/demiurge/tls/ca/rootCA.pem',
        'DOCKER_HOST=ssh://ops@198.51.100.20 exec demiurge-dev-001-tls-renewer cat /var/lib/demiurge/tls/ca/rootCA.pem',
      ]);
    });

    it('the uploaded renewal CLI runs from a bare Node.js (no node_modules) and issues from a fresh mkcert CA', async () => {
      const code = path.join(tmp, 'opt');
      fs.mkdirSync(code, { recursive: true });
      const cli = path.join(code, 'tls-renew.js');
      fs.writeFileSync(cli, bundleRuntimeEntry('tls-renew.js').content);
      const run = (args: string[], env: Record<string, string>): Promise<ScriptResult> =>
        new Promise((resolve) => {
          execFile(process.execPath, [cli, ...args], { cwd: tmp, env: { PATH: process.env.PATH ?? '', ...env }, timeout: 20000 }, (err, stdout, stderr) => {
            resolve({ code: err === null ? 0 : Number((err as { code?: unknown }).code ?? 1), stdout, stderr });
          });
        });
      const help = await run(['help'], {});
      assert.equal(help.code, 0, help.stderr);
      assert.match(help.stdout, /PDNS_API_KEY/);
      const usage = await run(['once'], { DOMAIN: 'demiurge.test', TLS_ISSUER: 'acme' });
      assert.equal(usage.code, 2);
      assert.match(usage.stderr, /ACME_DIRECTORY is required/);
      let mkcertPresent = true;
      try {
        execFileSync('mkcert', ['-help'], { stdio: 'ignore' });
      } catch {
        mkcertPresent = false;
      }
      if (!mkcertPresent) return;
      const env = {
        DOMAIN: 'demiurge.test',
        TLS_ISSUER: 'mkcert',
        MKCERT_CAROOT: path.join(tmp, 'ca'),
        TLS_CERT_PATH: path.join(tmp, 'fullchain.pem'),
        TLS_KEY_PATH: path.join(tmp, 'privkey.pem'),
        NGINX_TEST_COMMAND: '["true"]',
        NGINX_RELOAD_COMMAND: '["true"]',
      };
      assert.equal((await run(['check'], env)).code, 3, 'no certificate yet');
      const first = await run(['once'], env);
      assert.equal(first.code, 0, first.stdout + first.stderr);
      assert.match(first.stdout, /renewed \(missing\)/);
      const x = new crypto.X509Certificate(fs.readFileSync(env.TLS_CERT_PATH));
      assert.equal(x.subjectAltName, 'DNS:demiurge.test, DNS:*.demiurge.test');
      assert.ok(x.verify(new crypto.X509Certificate(fs.readFileSync(path.join(tmp, 'ca', 'rootCA.pem'))).publicKey), 'signed by the CA on the volume');
      assert.equal(fs.statSync(env.TLS_KEY_PATH).mode & 0o777, 0o600);
      const again = await run(['once'], env);
      assert.match(again.stdout, /nothing to do/);
      assert.equal((await run(['check'], env)).code, 0);
    });
  });
});
