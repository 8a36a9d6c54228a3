import * as pulumi from '@pulumi/pulumi';
import * as docker from '@pulumi/docker';
import { ENVIRONMENT_LABEL, networkName } from '../runtime/naming';
import { TYPE_PREFIX } from './common';

export interface EnvironmentNetworkArgs {
  envName: string;
  /** Docker host the network lives on. */
  provider: docker.Provider;
}

/**
 * The environment's user-defined bridge network `demiurge-<env>`: containers
 * reach each other by name through Docker's DNS (127.0.0.11).
 */
export class EnvironmentNetwork extends pulumi.ComponentResource {
  readonly network: docker.Network;
  /** The network's name; depend on this to attach containers. */
  readonly name: pulumi.Output<string>;

  constructor(name: string, args: EnvironmentNetworkArgs, opts?: pulumi.ComponentResourceOptions) {
    super(`${TYPE_PREFIX}:EnvironmentNetwork`, name, {}, opts);
    this.network = new docker.Network(
      name,
      {
        name: networkName(args.envName),
        driver: 'bridge',
        labels: [{ label: ENVIRONMENT_LABEL, value: args.envName }],
      },
      // Fixed name: a replacement must remove the old network first.
      { parent: this, provider: args.provider, deleteBeforeReplace: true },
    );
    this.name = this.network.name;
    this.registerOutputs({ name: this.name });
  }
}
