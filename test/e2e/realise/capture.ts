/**
 * Runs the real index.ts under Pulumi mocks with the dev stack's configuration
 * (Pulumi.dev.yaml) overridden for a test environment, twice:
 *  - `preview`: deterministic fake outputs, nothing touched; the realiser checks
 *    every captured input against its allow-list here, before any side effect;
 *  - `up`: the realiser creates each resource as the program registers it and
 *    hands the real outputs back (image ids, container ids, passwords, stdout).
 */
import * as dgram from 'dgram';
import * as net from 'net';
import * as path from 'path';
import { REPO_ROOT, runProgram, type CapturedResource, type ProgramRun } from '../../unit/helpers/pulumi-mocks';
import { readStackYaml } from '../../../tools/lib/stack-yaml';
import { checkoutId } from '../helpers/checkout';
import type { Realiser } from './realise';

export { REPO_ROOT };
export type { CapturedResource, ProgramRun };

/** The Pulumi stack whose configuration the suite deploys. */
export const STACK = 'dev';

/** Ports of one e2e environment; all inside 62000-62999 (other suites use 55xxx-61xxx). */
export interface E2ePorts {
  stage1Http: number;
  stage1Https: number;
  dns: number;
  powerDnsApi: number;
  gatewayHttpBase: number;
  gatewayVpnBase: number;
  /** Ports reserved per gateway range (config gatewayPortRangeSize). */
  rangeSize: number;
}

export interface E2eSettings {
  envName: string;
  domain: string;
  poolSize: number;
  ports: E2ePorts;
}

export const E2E_POOL_SIZE = 2;
/** The gateways' idle timeout in the suite (stack setting gatewayIdleTimeoutSeconds; the default is the seed's 300). */
export const E2E_IDLE_SECONDS = '8';
/** How often an allocated gateway pushes (gatewayPushIntervalSeconds). */
export const E2E_PUSH_SECONDS = '2';
const SLOTS = 10;

export { checkoutId };

export function slotPorts(slot: number): E2ePorts {
  const base = 62000 + 100 * slot;
  return {
    stage1Http: base + 80,
    stage1Https: base + 43,
    dns: base + 53,
    powerDnsApi: base + 81,
    gatewayHttpBase: base + 10,
    gatewayVpnBase: base + 20,
    rangeSize: 10,
  };
}

function tcpFree(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, host, () => srv.close(() => resolve(true)));
  });
}

function udpFree(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = dgram.createSocket('udp4');
    sock.once('error', () => {
      sock.close();
      resolve(false);
    });
    sock.bind(port, host, () => sock.close(() => resolve(true)));
  });
}

/** Every host port the environment would publish, with its protocol. */
export function publishedPorts(p: E2ePorts, poolSize: number): Array<{ port: number; proto: 'tcp' | 'udp' }> {
  const list: Array<{ port: number; proto: 'tcp' | 'udp' }> = [
    { port: p.stage1Http, proto: 'tcp' },
    { port: p.stage1Https, proto: 'tcp' },
    { port: p.dns, proto: 'tcp' },
    { port: p.dns, proto: 'udp' },
    { port: p.powerDnsApi, proto: 'tcp' },
  ];
  for (let i = 0; i < poolSize; i++) {
    list.push({ port: p.gatewayHttpBase + i, proto: 'tcp' }, { port: p.gatewayVpnBase + i, proto: 'udp' });
  }
  return list;
}

/** The port slot this checkout tries first. */
export function preferredSlot(root = REPO_ROOT): number {
  return parseInt(checkoutId(root), 16) % SLOTS;
}

/** The checkout's slot, or the next one whose ports are all free. */
export async function choosePorts(poolSize: number, root = REPO_ROOT): Promise<{ slot: number; ports: E2ePorts }> {
  const first = preferredSlot(root);
  for (let k = 0; k < SLOTS; k++) {
    const slot = (first + k) % SLOTS;
    const ports = slotPorts(slot);
    const checks = await Promise.all(publishedPorts(ports, poolSize).map((x) => (x.proto === 'tcp' ? tcpFree(x.port, '0.0.0.0') : udpFree(x.port, '0.0.0.0'))));
    if (checks.every(Boolean)) return { slot, ports };
  }
  throw new Error('no free port slot in 62000-62999 for the stack e2e suite');
}

/** Pulumi.dev.yaml with the test overrides, as full keys (what PULUMI_CONFIG would carry). */
export function e2eConfig(s: E2eSettings): Record<string, string> {
  const config = { ...readStackYaml(path.join(REPO_ROOT, `Pulumi.${STACK}.yaml`)).config };
  const overrides: Record<string, string> = {
    envName: s.envName,
    domain: s.domain,
    gatewayPoolSize: String(s.poolSize),
    gatewayHttpPortBase: String(s.ports.gatewayHttpBase),
    gatewayVpnPortBase: String(s.ports.gatewayVpnBase),
    gatewayPortRangeSize: String(s.ports.rangeSize),
    stage1HttpPort: String(s.ports.stage1Http),
    stage1HttpsPort: String(s.ports.stage1Https),
    dnsPort: String(s.ports.dns),
    powerDnsApiHostPort: String(s.ports.powerDnsApi),
    gatewayIdleTimeoutSeconds: E2E_IDLE_SECONDS,
    gatewayPushIntervalSeconds: E2E_PUSH_SECONDS,
  };
  for (const [k, v] of Object.entries(overrides)) config[`demiurge:${k}`] = v;
  return config;
}

/** `pulumi preview`: the program under deterministic mocks; nothing is created. */
export function preview(config: Record<string, string>): Promise<ProgramRun> {
  return runProgram({ stack: STACK, config });
}

/** `pulumi up`: the program with the realiser as engine and providers. */
export function up(config: Record<string, string>, realiser: Realiser): Promise<ProgramRun> {
  return runProgram({ stack: STACK, config, mocks: realiser.mocks, beforeRegister: realiser.beforeRegister });
}

/** Type/name/URN of every resource, for "up registered exactly what preview planned". */
export function shape(resources: readonly CapturedResource[]): string[] {
  return resources.map((r) => `${r.type} ${r.urn}`).sort();
}
