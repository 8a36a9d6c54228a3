import * as pulumi from '@pulumi/pulumi';
import * as docker from '@pulumi/docker';
import type { ImageSource } from '../stack/config';
import { TYPE_PREFIX } from './common';

export interface ContainerImageArgs {
  /** Local repository name for built images, e.g. `demiurge-dev-001-dev`. */
  imageName: string;
  source: ImageSource;
  /** Docker host the image must exist on. */
  provider: docker.Provider;
}

/**
 * An image built from `images/<name>` or a prebuilt tag. `ref` is what
 * containers must use: the built image's id (`repoDigest` of a local-only
 * build is `sha256:<id>`) or the pulled image's id — never a tag, because a
 * container whose `image` is a tag name is replaced on every `up`.
 */
export class ContainerImage extends pulumi.ComponentResource {
  readonly ref: pulumi.Output<string>;

  constructor(name: string, args: ContainerImageArgs, opts?: pulumi.ComponentResourceOptions) {
    super(`${TYPE_PREFIX}:ContainerImage`, name, {}, opts);
    if (args.source.kind === 'build') {
      const image = new docker.Image(
        name,
        {
          imageName: `${args.imageName}:latest`,
          build: {
            context: args.source.context,
            // The legacy builder works on every engine (Debian's docker.io has no buildx).
            builderVersion: 'BuilderV1',
          },
          skipPush: true,
        },
        { parent: this, provider: args.provider },
      );
      this.ref = image.repoDigest;
    } else {
      const image = new docker.RemoteImage(
        name,
        { name: args.source.tag, keepLocally: true },
        { parent: this, provider: args.provider },
      );
      this.ref = image.imageId;
    }
    this.registerOutputs({ ref: this.ref });
  }
}
