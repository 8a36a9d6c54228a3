/**
 * The explicit allow-list of inputs the realiser knows how to realise, per
 * resource type, and the validator that turns everything else into an error
 * `<urn>: field <path> is not realisable`.
 *
 * Why an allow-list: the suite must not drift from the program. If a
 * component gains an input (a new container option, a build arg, a command
 * `dir`), the suite fails naming it until realise.ts learns to apply it,
 * instead of silently deploying something the program did not declare.
 */

export type Shape =
  | { kind: 'string' }
  | { kind: 'number' }
  | { kind: 'boolean' }
  /** Only these values are realisable (e.g. `builderVersion: BuilderV1`: there is no buildx). */
  | { kind: 'oneOf'; values: readonly (string | number | boolean)[]; why: string }
  | { kind: 'array'; of: Shape }
  | { kind: 'object'; fields: Readonly<Record<string, Shape>> }
  /** Free keys, e.g. a command's `environment`. */
  | { kind: 'map'; of: Shape }
  /** Any value: inputs that only decide replacement (`triggers`), which a first create ignores. */
  | { kind: 'opaque'; why: string };

const str: Shape = { kind: 'string' };
const num: Shape = { kind: 'number' };
const bool: Shape = { kind: 'boolean' };
const arr = (of: Shape): Shape => ({ kind: 'array', of });
const obj = (fields: Record<string, Shape>): Shape => ({ kind: 'object', fields });

const labels = arr(obj({ label: str, value: str }));

export const CONTAINER = 'docker:index/container:Container';
export const IMAGE = 'docker:index/image:Image';
export const REMOTE_IMAGE = 'docker:index/remoteImage:RemoteImage';
export const VOLUME = 'docker:index/volume:Volume';
export const NETWORK = 'docker:index/network:Network';
export const DOCKER_PROVIDER = 'pulumi:providers:docker';
export const RANDOM_PASSWORD = 'random:index/randomPassword:RandomPassword';
export const RANDOM_BYTES = 'random:index/randomBytes:RandomBytes';
export const COMMAND = 'command:local:Command';
export const STACK = 'pulumi:pulumi:Stack';

/** Top-level inputs each custom resource type may have. */
export const FIELDS: Readonly<Record<string, Readonly<Record<string, Shape>>>> = {
  [CONTAINER]: {
    name: str,
    image: str,
    hostname: str,
    entrypoints: arr(str),
    command: arr(str),
    // Files copied into the container after create, before start (as the provider does).
    uploads: arr(obj({ file: str, content: str, contentBase64: str, executable: bool })),
    restart: { kind: 'oneOf', values: ['no', 'on-failure', 'always', 'unless-stopped'], why: 'Docker restart policies' },
    labels,
    envs: arr(str),
    ports: arr(obj({ internal: num, external: num, ip: str, protocol: { kind: 'oneOf', values: ['tcp', 'udp'], why: 'port protocols' } })),
    networksAdvanced: arr(obj({ name: str, aliases: arr(str) })),
    // /etc/hosts entries (remote gateways: ganymede.<domain> → the main host's public IP).
    hosts: arr(obj({ host: str, ip: str })),
    volumes: arr(obj({ volumeName: str, hostPath: str, containerPath: str, readOnly: bool })),
    capabilities: obj({ adds: arr(str), drops: arr(str) }),
    devices: arr(obj({ hostPath: str, containerPath: str, permissions: str })),
    healthcheck: obj({ tests: arr(str), interval: str, timeout: str, retries: num, startPeriod: str }),
    wait: bool,
    waitTimeout: num,
    destroyGraceSeconds: num,
  },
  [IMAGE]: {
    imageName: str,
    build: obj({
      context: str,
      builderVersion: { kind: 'oneOf', values: ['BuilderV1'], why: 'the engine has no buildx; BuildKit builds are not realisable here' },
    }),
    skipPush: { kind: 'oneOf', values: [true], why: 'no registry is reachable' },
    // Only decides whether `pulumi preview` builds; `up` always builds.
    buildOnPreview: bool,
  },
  [REMOTE_IMAGE]: { name: str, keepLocally: bool },
  [VOLUME]: { name: str, labels },
  [NETWORK]: { name: str, driver: { kind: 'oneOf', values: ['bridge'], why: 'network drivers available locally' }, labels },
  [RANDOM_PASSWORD]: { length: num, special: bool },
  [RANDOM_BYTES]: { length: num },
  [COMMAND]: {
    create: str,
    delete: str,
    interpreter: arr(str),
    environment: { kind: 'map', of: str },
    triggers: { kind: 'opaque', why: 'triggers only decide replacement on later updates' },
  },
  // `host` is checked separately: only the local engine is realisable.
  [DOCKER_PROVIDER]: { host: str },
};

/** Component resources (and the stack) carry no inputs of their own. */
export function isComponentType(type: string): boolean {
  return type === STACK || /^demiurge:components:[A-Za-z]+$/.test(type);
}

/** null, undefined, '', [] and {}: an input that asks for nothing. */
export function isEmpty(v: unknown): boolean {
  if (v === undefined || v === null || v === '') return true;
  if (Array.isArray(v)) return v.length === 0;
  if (typeof v === 'object') return Object.keys(v as object).length === 0;
  return false;
}

function describe(v: unknown): string {
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

function join(at: string, key: string): string {
  return at === '' ? key : `${at}.${key}`;
}

/** Appends one problem per input of `value` that `shape` does not allow. */
export function validate(urn: string, at: string, value: unknown, shape: Shape, problems: string[]): void {
  if (value === undefined || value === null) return;
  switch (shape.kind) {
    case 'string':
    case 'number':
    case 'boolean':
      if (typeof value !== shape.kind) problems.push(`${urn}: field ${at} is not realisable (expected a ${shape.kind}, got ${describe(value)})`);
      return;
    case 'oneOf':
      if (!shape.values.includes(value as string | number | boolean)) {
        problems.push(`${urn}: field ${at} = ${describe(value)} is not realisable (only ${shape.values.map((v) => describe(v)).join(', ')}: ${shape.why})`);
      }
      return;
    case 'opaque':
      return;
    case 'array':
      if (!Array.isArray(value)) {
        problems.push(`${urn}: field ${at} is not realisable (expected a list, got ${describe(value)})`);
        return;
      }
      value.forEach((v, i) => validate(urn, `${at}[${i}]`, v, shape.of, problems));
      return;
    case 'map':
    case 'object': {
      if (typeof value !== 'object' || Array.isArray(value)) {
        problems.push(`${urn}: field ${at} is not realisable (expected an object, got ${describe(value)})`);
        return;
      }
      for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
        const sub = shape.kind === 'map' ? shape.of : shape.fields[k];
        if (sub === undefined) {
          if (!isEmpty(v)) problems.push(`${urn}: field ${join(at, k)} is not realisable`);
          continue;
        }
        validate(urn, join(at, k), v, sub, problems);
      }
      return;
    }
  }
}

/** Problems of one resource's inputs against its type's allow-list. */
export function validateInputs(urn: string, type: string, inputs: Record<string, unknown>): string[] {
  const problems: string[] = [];
  if (isComponentType(type)) {
    for (const [k, v] of Object.entries(inputs)) if (!isEmpty(v)) problems.push(`${urn}: field ${k} is not realisable (component resources take no inputs)`);
    return problems;
  }
  const fields = FIELDS[type];
  if (fields === undefined) return [`${urn}: resource type ${type} is not realisable (the realiser knows ${Object.keys(FIELDS).join(', ')})`];
  validate(urn, '', inputs, { kind: 'object', fields }, problems);
  return problems;
}
