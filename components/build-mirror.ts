import * as pulumi from '@pulumi/pulumi';
import * as docker from '@pulumi/docker';
import { ENVIRONMENT_LABEL, buildServerUrl, volumeName } from '../runtime/naming';
import { BuildServer } from './build-server';
import { TYPE_PREFIX } from './common';

export interface BuildMirrorArgs {
  envName: string;
  /** The remote Docker host the mirror lives on (the same provider as that host's gateways). */
  provider: docker.Provider;
  /** Build-server image id/digest on that host. */
  image: pulumi.Input<string>;
  /** That host's environment network (`demiurge-<env>`), the one its gateways join. */
  networkName: pulumi.Input<string>;
}

/**
 * The per-host build mirror of a remote gateway host: its own builds volume
 * `demiurge-<env>-builds` and its own build server `demiurge-<env>-build-server`
 * on that host's environment network, with no published port. `demiurge-gateway
 * pack --stack` writes the same tarball into the builds volume of every host, so
 * the gateways of a host fetch their build from a server only they can reach,
 * under the same "only regular `*.tar.gz`" rules as the main host's.
 *
 * The volume holds nothing that cannot be packed again: not protected.
 */
export class BuildMirror extends pulumi.ComponentResource {
  readonly volume: docker.Volume;
  readonly server: BuildServer;
  /** BUILD_SERVER_URL of the gateways on this host (the mirror's name on its network). */
  readonly url: string;

  constructor(name: string, args: BuildMirrorArgs, opts?: pulumi.ComponentResourceOptions) {
    super(`${TYPE_PREFIX}:BuildMirror`, name, {}, opts);
    this.volume = new docker.Volume(
      `${name}-builds`,
      {
        name: volumeName(args.envName, 'builds'),
        labels: [
          { label: ENVIRONMENT_LABEL, value: args.envName },
          { label: 'demiurge.volume', value: 'builds' },
        ],
      },
      { parent: this, provider: args.provider },
    );
    this.server = new BuildServer(
      `${name}-server`,
      { envName: args.envName, provider: args.provider, image: args.image, networkName: args.networkName, buildsVolume: this.volume.name },
      { parent: this },
    );
    this.url = buildServerUrl(args.envName);
    this.registerOutputs({ volume: this.volume.name, containerName: this.server.containerName });
  }
}
