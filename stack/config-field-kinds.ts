/**
 * The kinds of stack configuration fields (whole numbers, ports, booleans,
 * choices, images) and the context a field is read in: what FIELDS in
 * config.ts is written with. Pure: no Pulumi.
 */
import { X509Certificate } from 'crypto';
import { quote } from './config-rules';
import { IMAGE_CONTEXTS, type ConfigKey, type FieldValues, type ImageKey, type ImageSource, type ParseOptions } from './config-types';

// ------------------------------------------------------------------ helpers

export const EMAIL_RE = /^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$/;
/** docker reference: [registry[:port]/]repo[/repo...][:tag][@sha256:digest] */
export const IMAGE_REF_RE =
  /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]{1,5})?\/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$/;
export const DOCKER_HOST_RE = /^(unix:\/\/\/\S+|tcp:\/\/\S+:[0-9]{1,5}|ssh:\/\/\S+)$/;
/** `uc-<uuid>.org-<uuid>.` is 81 characters; a DNS name is at most 253. */
export const MAX_DOMAIN_LENGTH = 253 - 81;


export function parseWholeNumber(v: string): number | undefined {
  return /^(0|[1-9][0-9]{0,8})$/.test(v) ? Number(v) : undefined;
}

export function describeNumberProblem(v: string): string {
  if (/^\s*-/.test(v)) return `must not be negative, got ${quote(v)}.`;
  return `must be a whole number, got ${quote(v)}.`;
}


const PEM_CERT_RE = /-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----/g;

/**
 * One or more PEM certificates and nothing else (no private key, no text around them), each one
 * parseable; returns them normalised (one block after another, final newline), or undefined.
 */
export function parsePemCertificates(v: string): string | undefined {
  const blocks = v.match(PEM_CERT_RE) ?? [];
  if (blocks.length === 0 || v.replace(PEM_CERT_RE, '').trim() !== '') return undefined;
  try {
    for (const b of blocks) new X509Certificate(b);
  } catch {
    return undefined;
  }
  return `${blocks.map((b) => b.trim()).join('\n')}\n`;
}

export function isHttpUrl(v: string): boolean {
  try {
    const u = new URL(v);
    return (u.protocol === 'http:' || u.protocol === 'https:') && u.username === '' && u.password === '' && u.hostname !== '';
  } catch {
    return false;
  }
}

// ------------------------------------------------------------------ fields

export const INVALID = Symbol('invalid');

/** What a field's functions see while FIELDS is read in order. */
export interface FieldContext {
  /** The fields listed above this one in FIELDS, already read (later ones are not set yet). */
  readonly values: Readonly<FieldValues>;
  readonly options: ParseOptions;
  /** The raw value of any key ('' counts as unset). */
  raw(key: ConfigKey): string | undefined;
  full(key: ConfigKey): string;
  /** Records a problem with the field being read; `fix` defaults to setting its example. */
  fail(problem: string, fix?: string): typeof INVALID;
  /** `pulumi config set <project>:<key> <value>`. */
  setFix(key: ConfigKey, value: string): string;
}

export type Dynamic<T> = T | ((ctx: FieldContext) => T);

export interface Field<T> {
  /** The default as the README's configuration reference shows it (CONFIG_KEYS). */
  doc: string;
  /** Raw value parsed when the key is unset; undefined: the key stays unset. */
  rawDefault?: Dynamic<string | undefined>;
  /** When unset without a default: the problem, and the example of its fix if it differs. */
  required?: { problem: Dynamic<string>; example?: string };
  /** The value `pulumi config set` fixes suggest. */
  example?: Dynamic<string>;
  /** Reads one value; on a problem returns `ctx.fail(...)`. */
  parse: (value: string, ctx: FieldContext) => T | typeof INVALID;
  /** The value when unset without a default, or invalid (rules still run on it; an invalid config declares nothing). */
  fallback: T;
  /** The key is read only when this holds (e.g. ACME settings only with tlsMode letsencrypt). */
  when?: (ctx: FieldContext) => boolean;
}

export type FieldTable = { [K in ConfigKey]: Field<FieldValues[K]> };

export function resolve<T>(d: Dynamic<T>, ctx: FieldContext): T {
  return typeof d === 'function' ? (d as (ctx: FieldContext) => T)(ctx) : d;
}

export function wholeNumber(min: number, max: number): Field<number>['parse'] {
  return (v, ctx) => {
    const n = parseWholeNumber(v);
    if (n === undefined) return ctx.fail(describeNumberProblem(v));
    if (n < min || n > max) return ctx.fail(`must be between ${min} and ${max}, got ${n}.`);
    return n;
  };
}

/** A whole number with a default, suggested as the fix. */
export function intField(dflt: number, min: number, max: number): Field<number> {
  return { doc: String(dflt), rawDefault: String(dflt), example: String(dflt), parse: wholeNumber(min, max), fallback: dflt };
}

export function portField(dflt: number): Field<number> {
  return intField(dflt, 1, 65535);
}

export function boolField(dflt: Dynamic<string>, doc: string): Field<boolean> {
  return {
    doc,
    rawDefault: dflt,
    example: dflt,
    parse: (v, ctx) => (v === 'true' ? true : v === 'false' ? false : ctx.fail(`must be true or false, got ${quote(v)}.`)),
    fallback: false,
  };
}

export function oneOfField<T extends string>(choices: readonly T[], dflt: T, example: string): Field<T> {
  return {
    doc: dflt,
    rawDefault: dflt,
    example,
    parse: (v, ctx) => ((choices as readonly string[]).includes(v) ? (v as T) : ctx.fail(`must be one of ${choices.join(', ')}, got ${quote(v)}.`)),
    fallback: dflt,
  };
}

export function imageField(image: ImageKey): Field<ImageSource> {
  const build: ImageSource = { kind: 'build', context: IMAGE_CONTEXTS[image] };
  return {
    doc: `(unset: build ${IMAGE_CONTEXTS[image]})`,
    parse: (tag, ctx) =>
      IMAGE_REF_RE.test(tag)
        ? { kind: 'prebuilt', tag }
        : ctx.fail(
            `must be a Docker image reference such as registry.example.com/demiurge/${image}:1.2.3, got ${quote(tag)}.`,
            `fix the tag, or pulumi config rm ${ctx.full(IMAGE_CONFIG_KEYS[image])} to build ${IMAGE_CONTEXTS[image]}.`,
          ),
    fallback: build,
  };
}

export const IMAGE_CONFIG_KEYS = {
  dev: 'devImage',
  pdns: 'powerDnsImage',
  'build-server': 'buildServerImage',
  gateway: 'gatewayImage',
} as const satisfies Readonly<Record<ImageKey, ConfigKey>>;

/** A PEM bundle key (public certificates: not a secret, but a file, never a command line). */
export function pemField(what: string, when?: (ctx: FieldContext) => boolean): Field<string | undefined> {
  return {
    doc: '(unset: none)',
    example: '"$(cat ca.pem)"',
    ...(when === undefined ? {} : { when }),
    parse: (v, ctx) => parsePemCertificates(v) ?? ctx.fail(`must be one or more PEM certificates (-----BEGIN CERTIFICATE----- ... -----END CERTIFICATE-----) and nothing else: ${what}.`),
    fallback: undefined,
  };
}
