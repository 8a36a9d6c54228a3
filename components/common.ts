/**
 * Small helpers shared by the components. Pure; no config reading.
 */
import * as pulumi from '@pulumi/pulumi';
import type * as docker from '@pulumi/docker';
import { containerLabels, type ContainerRole } from '../runtime/naming';

/** Every container is restarted by the Docker daemon unless an operator stopped it. */
export const RESTART_POLICY = 'unless-stopped';

/** What a component that runs one container of the environment is given: where it runs, and from which image. */
export interface EnvContainerBaseArgs {
  envName: string;
  domain: string;
  publicIp: string;
  provider: docker.Provider;
  /** Image id/digest (ContainerImage.ref). */
  image: pulumi.Input<string>;
  networkName: pulumi.Input<string>;
}

/**
 * The arguments every container of an environment shares: its name is also
 * its host name, and Docker restarts it unless it was stopped.
 */
export function envContainerArgs(containerName: pulumi.Input<string>, image: pulumi.Input<string>, rest: Omit<docker.ContainerArgs, 'name' | 'image' | 'hostname' | 'restart'>): docker.ContainerArgs {
  return { name: containerName, image, hostname: containerName, restart: RESTART_POLICY, ...rest };
}

/**
 * `destroyGraceSeconds` of every container. Without it the Docker provider
 * deletes a container (on `pulumi destroy` and on every replacement) with a
 * forced remove, i.e. SIGKILL: PostgreSQL in the dev container stops without a
 * shutdown checkpoint and gateway apps never get to push their data on
 * shutdown. With it the provider first stops the container (SIGTERM, then
 * SIGKILL after this many seconds); the images all stop cleanly well within it.
 */
export const STOP_GRACE_SECONDS = 30;

/** Component type token prefix. */
export const TYPE_PREFIX = 'demiurge:components';

export function labelList(labels: Record<string, string>): docker.types.input.ContainerLabel[] {
  return Object.entries(labels).map(([label, value]) => ({ label, value }));
}

export function roleLabels(env: string, role: ContainerRole): docker.types.input.ContainerLabel[] {
  return labelList(containerLabels(env, role));
}

export interface HealthcheckTiming {
  interval?: string;
  timeout?: string;
  retries?: number;
  startPeriod?: string;
}

/**
 * A healthcheck that only needs bash inside the image: healthy when every
 * given TCP port accepts a connection on 127.0.0.1.
 */
export function tcpHealthcheck(ports: readonly number[], timing: HealthcheckTiming = {}): docker.types.input.ContainerHealthcheck {
  if (ports.length === 0) throw new Error('tcpHealthcheck needs at least one port');
  const probe = ports.map((p) => `: </dev/tcp/127.0.0.1/${p}`).join(' && ');
  return {
    tests: ['CMD', 'bash', '-c', probe],
    interval: timing.interval ?? '10s',
    timeout: timing.timeout ?? '5s',
    retries: timing.retries ?? 5,
    startPeriod: timing.startPeriod ?? '30s',
  };
}

/** `NAME=value` env entry; stays a secret Output when the value is secret. */
export function envVar(name: string, value: pulumi.Input<string | number>): pulumi.Output<string> {
  return pulumi.interpolate`${name}=${value}`;
}

/** `NAME=value` env entry that is always a Pulumi secret. */
export function secretEnvVar(name: string, value: pulumi.Input<string>): pulumi.Output<string> {
  return pulumi.secret(pulumi.interpolate`${name}=${value}`);
}

/**
 * Attach a container to the environment network only, with its name as alias.
 * `networkMode` stays unset on purpose: with `networksAdvanced` the provider
 * detaches the default bridge after create and connects these networks.
 */
export function envNetworkAttachment(
  networkName: pulumi.Input<string>,
  alias: string,
): docker.types.input.ContainerNetworksAdvanced[] {
  return [{ name: networkName, aliases: [alias] }];
}

/** /dev/net/tun passed through, for OpenVPN. */
export const TUN_DEVICE: docker.types.input.ContainerDevice = {
  hostPath: '/dev/net/tun',
  containerPath: '/dev/net/tun',
  permissions: 'rwm',
};

export const NET_ADMIN: docker.types.input.ContainerCapabilities = { adds: ['NET_ADMIN'] };
