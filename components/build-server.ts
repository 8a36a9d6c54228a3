import * as pulumi from '@pulumi/pulumi';
import * as docker from '@pulumi/docker';
import { PORTS, buildServerContainerName } from '../runtime/naming';
import { STOP_GRACE_SECONDS, TYPE_PREFIX, envContainerArgs, envNetworkAttachment, envVar, roleLabels, tcpHealthcheck } from './common';

export const BUILD_DIR = '/srv/builds';

export interface BuildServerArgs {
  envName: string;
  provider: docker.Provider;
  image: pulumi.Input<string>;
  networkName: pulumi.Input<string>;
  /** The builds volume, mounted read-only. */
  buildsVolume: pulumi.Input<string>;
}

/**
 * Serves `gateway-<env>.tar.gz` to the gateways on the environment network
 * only: no published ports.
 */
export class BuildServer extends pulumi.ComponentResource {
  readonly container: docker.Container;
  /** URL gateways use (by container name on the environment network). */
  readonly containerName: pulumi.Output<string>;

  constructor(name: string, args: BuildServerArgs, opts?: pulumi.ComponentResourceOptions) {
    super(`${TYPE_PREFIX}:BuildServer`, name, {}, opts);
    const containerName = buildServerContainerName(args.envName);
    this.container = new docker.Container(
      name,
      envContainerArgs(containerName, args.image, {
        labels: roleLabels(args.envName, 'build-server'),
        envs: [envVar('BUILD_DIR', BUILD_DIR), envVar('PORT', PORTS.buildServer)],
        networksAdvanced: envNetworkAttachment(args.networkName, containerName),
        volumes: [{ volumeName: args.buildsVolume, containerPath: BUILD_DIR, readOnly: true }],
        healthcheck: tcpHealthcheck([PORTS.buildServer]),
        wait: true,
        waitTimeout: 120,
        destroyGraceSeconds: STOP_GRACE_SECONDS,
      }),
      { parent: this, provider: args.provider, deleteBeforeReplace: true },
    );
    this.containerName = this.container.name;
    this.registerOutputs({ containerName: this.containerName });
  }
}
