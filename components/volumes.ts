import * as pulumi from '@pulumi/pulumi';
import * as docker from '@pulumi/docker';
import { ENVIRONMENT_LABEL, volumeName, type VolumeKind } from '../runtime/naming';
import { TYPE_PREFIX } from './common';

/** Volumes holding user data, protected unless the stack opts out. `builds` is rebuilt from sources. */
/** `tls` (dev CA, ACME account) is data too: a new dev CA would have to be trusted again on every machine. */
export const DATA_VOLUMES: readonly VolumeKind[] = ['workspace', 'pgdata', 'certs', 'tls'];
export const ALL_VOLUMES: readonly VolumeKind[] = ['workspace', 'pgdata', 'builds', 'certs', 'tls'];

export interface NamedVolumesArgs {
  envName: string;
  provider: docker.Provider;
  /**
   * true (the default in config): data volumes are `protect` and `retainOnDelete`,
   * so neither `pulumi destroy` nor a replacement deletes user data.
   */
  retainData: boolean;
}

/** `demiurge-<env>-{workspace,pgdata,builds,certs,tls}`. */
export class NamedVolumes extends pulumi.ComponentResource {
  readonly volumes: Readonly<Record<VolumeKind, docker.Volume>>;
  /** Volume names as outputs (mount by these to depend on the volumes). */
  readonly names: Readonly<Record<VolumeKind, pulumi.Output<string>>>;

  constructor(name: string, args: NamedVolumesArgs, opts?: pulumi.ComponentResourceOptions) {
    super(`${TYPE_PREFIX}:NamedVolumes`, name, {}, opts);
    const volumes = {} as Record<VolumeKind, docker.Volume>;
    const names = {} as Record<VolumeKind, pulumi.Output<string>>;
    for (const kind of ALL_VOLUMES) {
      const keep = args.retainData && DATA_VOLUMES.includes(kind);
      volumes[kind] = new docker.Volume(
        `${name}-${kind}`,
        {
          name: volumeName(args.envName, kind),
          labels: [
            { label: ENVIRONMENT_LABEL, value: args.envName },
            { label: 'demiurge.volume', value: kind },
          ],
        },
        { parent: this, provider: args.provider, protect: keep, retainOnDelete: keep },
      );
      names[kind] = volumes[kind].name;
    }
    this.volumes = volumes;
    this.names = names;
    this.registerOutputs({ names });
  }
}
