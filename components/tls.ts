import * as pulumi from '@pulumi/pulumi';
import * as command from '@pulumi/command';
import type { TlsConfig } from '../stack/config';
import { TYPE_PREFIX } from './common';

/**
 * bash functions shared by the TLS commands and the renewal job. Every value
 * comes from the environment; nothing is interpolated into the script text.
 *
 * STATE_DIR (may start with ~/) holds, on the machine running `pulumi up`:
 *   ca/                   mkcert CAROOT (rootCA.pem, rootCA-key.pem)
 *   lego/                 lego account and certificates
 *   fullchain.pem, privkey.pem   the current stage-1 base certificate
 *   renew.sh, renew.env, renew.log   the Let's Encrypt renewal job
 */
export const TLS_LIB = String.raw`set -euo pipefail
umask 077
dir="${'$'}{STATE_DIR/#\~/$HOME}"
mkdir -p "$dir"
chmod 700 "$dir"
need() { command -v "$1" >/dev/null 2>&1 || { echo "$1 is not installed on this machine: $2" >&2; exit 1; }; }
fingerprint() { if command -v sha256sum >/dev/null 2>&1; then sha256sum < "$1"; else shasum -a 256 < "$1"; fi | cut -c1-64; }
issue_mkcert() {
  need mkcert "install it (https://github.com/FiloSottile/mkcert) or set tlsMode to none"
  mkdir -p "$dir/ca"
  CAROOT="$dir/ca" mkcert -cert-file "$dir/fullchain.pem" -key-file "$dir/privkey.pem" "$DOMAIN" "$WILDCARD_DOMAIN" >&2
}
issue_lego() {
  need lego "install it (https://go-acme.github.io/lego/) or choose another tlsMode"
  : "${'$'}{PDNS_API_URL:?}" "${'$'}{PDNS_API_KEY:?}" "${'$'}{ACME_EMAIL:?}" "${'$'}{ACME_DIRECTORY:?}"
  export PDNS_API_URL PDNS_API_KEY
  mkdir -p "$dir/lego"
  local args=(--accept-tos --email "$ACME_EMAIL" --server "$ACME_DIRECTORY" --dns pdns --path "$dir/lego" --domains "$DOMAIN" --domains "$WILDCARD_DOMAIN")
  local crt="$dir/lego/certificates/$DOMAIN.crt" key="$dir/lego/certificates/$DOMAIN.key"
  if [ -s "$crt" ] && [ "$(cat "$dir/lego/directory" 2>/dev/null || true)" = "$ACME_DIRECTORY" ]; then
    lego "${'$'}{args[@]}" renew --days 30 --no-random-sleep >&2
  else
    lego "${'$'}{args[@]}" run >&2
    printf '%s\n' "$ACME_DIRECTORY" > "$dir/lego/directory"
  fi
  cp "$crt" "$dir/fullchain.pem.tmp" && mv -f "$dir/fullchain.pem.tmp" "$dir/fullchain.pem"
  cp "$key" "$dir/privkey.pem.tmp" && mv -f "$dir/privkey.pem.tmp" "$dir/privkey.pem"
}
install_cert() {
  need docker "the Docker CLI copies the certificate into the dev container"
  : "${'$'}{CONTAINER:?}" "${'$'}{TARGET_CERT:?}" "${'$'}{TARGET_KEY:?}"
  if [ -n "${'$'}{DEMIURGE_DOCKER_HOST:-}" ]; then export DOCKER_HOST="$DEMIURGE_DOCKER_HOST"; fi
  docker cp "$dir/fullchain.pem" "$CONTAINER:$TARGET_CERT"
  docker cp "$dir/privkey.pem" "$CONTAINER:$TARGET_KEY"
  docker exec "$CONTAINER" chmod 600 "$TARGET_KEY"
  docker exec "$CONTAINER" nginx -s reload || echo "warning: nginx reload in $CONTAINER failed; it picks the certificate up on its next start" >&2
}
`;

/** Issues the mkcert certificate; stdout is its SHA-256 fingerprint. */
export const MKCERT_SCRIPT = `${TLS_LIB}
issue_mkcert
fingerprint "$dir/fullchain.pem"
`;

/** Issues or renews the Let's Encrypt certificate (DNS-01 via PowerDNS); stdout is its fingerprint. */
export const LEGO_SCRIPT = `${TLS_LIB}
issue_lego
fingerprint "$dir/fullchain.pem"
`;

/** Copies the current certificate into the dev container's certs volume and reloads nginx. */
export const INSTALL_SCRIPT = `${TLS_LIB}
install_cert
`;

/** Body of renew.sh (run by cron): renew, and install only when the certificate changed. */
export const RENEW_JOB_SCRIPT = `#!/usr/bin/env bash
set -a
. "$(dirname "$0")/renew.env"
set +a
${TLS_LIB}
before=$(fingerprint "$dir/fullchain.pem" 2>/dev/null || true)
issue_lego
after=$(fingerprint "$dir/fullchain.pem")
if [ "$before" != "$after" ]; then install_cert; echo "$(date -u +%FT%TZ) installed certificate $after"; fi
`;

const RENEW_ENV_VARS = [
  'STATE_DIR',
  'DOMAIN',
  'WILDCARD_DOMAIN',
  'ACME_EMAIL',
  'ACME_DIRECTORY',
  'PDNS_API_URL',
  'PDNS_API_KEY',
  'CONTAINER',
  'TARGET_CERT',
  'TARGET_KEY',
  'DEMIURGE_DOCKER_HOST',
];

/**
 * Installs the renewal job: writes renew.sh and renew.env (0600, holds the
 * PowerDNS API key) into the state dir and a crontab entry of the current user
 * tagged with RENEW_MARKER. Re-running replaces the entry (idempotent).
 */
export const RENEWAL_INSTALL_SCRIPT = `${TLS_LIB}
need crontab "the renewal job is a cron entry of this user"
: "\${SCHEDULE:?}" "\${RENEW_MARKER:?}"
cat > "$dir/renew.sh" <<'DEMIURGE_RENEW_EOF'
${RENEW_JOB_SCRIPT}DEMIURGE_RENEW_EOF
chmod 700 "$dir/renew.sh"
: > "$dir/renew.env"
for v in ${RENEW_ENV_VARS.join(' ')}; do printf '%s=%q\\n' "$v" "\${!v:-}" >> "$dir/renew.env"; done
line="$SCHEDULE \\"$dir/renew.sh\\" >> \\"$dir/renew.log\\" 2>&1 # $RENEW_MARKER"
current=$(crontab -l 2>/dev/null || true)
{ if [ -n "$current" ]; then printf '%s\\n' "$current" | grep -vF -- "# $RENEW_MARKER" || true; fi; printf '%s\\n' "$line"; } | crontab -
echo "renewal job installed: $SCHEDULE"
`;

/** Removes the crontab entry (the state dir and its certificates stay). */
export const RENEWAL_REMOVE_SCRIPT = String.raw`set -euo pipefail
: "${'$'}{RENEW_MARKER:?}"
if ! command -v crontab >/dev/null 2>&1; then echo "warning: crontab not found; nothing to remove" >&2; exit 0; fi
current=$(crontab -l 2>/dev/null || true)
if [ -n "$current" ]; then printf '%s\n' "$current" | { grep -vF -- "# $RENEW_MARKER" || true; } | crontab -; fi
echo "renewal job removed"
`;

export interface TlsArgs {
  envName: string;
  domain: string;
  tls: TlsConfig;
  /** The dev container the certificate is installed into (its certs volume). */
  devContainer: {
    name: pulumi.Input<string>;
    id: pulumi.Input<string>;
  };
  /** Resources the install must wait for (the dev container itself). */
  installAfter: pulumi.Resource[];
  /** In-container destination paths (the dev container's TLS_CERT_PATH / TLS_KEY_PATH). */
  targetCertPath: string;
  targetKeyPath: string;
  /** Docker host of the dev container (undefined: local default). */
  dockerHost?: string;
  /** letsencrypt only: PowerDNS API for the DNS-01 challenge. */
  powerDns?: {
    adminUrl: string;
    apiKey: pulumi.Input<string>;
    /** The zone must exist and answer before the challenge. */
    ready: pulumi.Resource[];
  };
}

/**
 * The stage-1 base certificate for `<domain>` and `*.<domain>`:
 *  - mkcert: a local CA in <stateDir>/ca (trust it on the host with
 *    `CAROOT=<stateDir>/ca mkcert -install`);
 *  - letsencrypt: lego with the PowerDNS DNS-01 provider, plus a cron renewal job;
 *  - none: nothing declared; the dev image generates a self-signed certificate.
 * The certificate is copied into the dev container's certs volume at
 * TLS_CERT_PATH/TLS_KEY_PATH and nginx is reloaded; the copy re-runs when the
 * certificate or the container changes.
 */
export class Tls extends pulumi.ComponentResource {
  readonly mode: TlsConfig['mode'];
  /** Host paths (on the machine running Pulumi); undefined in mode none. */
  readonly certPath?: string;
  readonly keyPath?: string;
  /** mkcert root CA to trust on client machines. */
  readonly caRootPath?: string;
  /** SHA-256 of the issued certificate. */
  readonly fingerprint?: pulumi.Output<string>;
  readonly issue?: command.local.Command;
  readonly install?: command.local.Command;
  readonly renewal?: command.local.Command;

  constructor(name: string, args: TlsArgs, opts?: pulumi.ComponentResourceOptions) {
    super(`${TYPE_PREFIX}:Tls`, name, {}, opts);
    this.mode = args.tls.mode;
    const tls = args.tls;
    if (tls.mode === 'none') {
      this.registerOutputs({ mode: this.mode });
      return;
    }
    this.certPath = `${tls.stateDir}/fullchain.pem`;
    this.keyPath = `${tls.stateDir}/privkey.pem`;
    const base: Record<string, pulumi.Input<string>> = {
      STATE_DIR: tls.stateDir,
      DOMAIN: args.domain,
      WILDCARD_DOMAIN: `*.${args.domain}`,
    };
    const installEnv: Record<string, pulumi.Input<string>> = {
      ...base,
      CONTAINER: args.devContainer.name,
      TARGET_CERT: args.targetCertPath,
      TARGET_KEY: args.targetKeyPath,
      DEMIURGE_DOCKER_HOST: args.dockerHost ?? '',
    };

    if (tls.mode === 'mkcert') {
      this.caRootPath = `${tls.stateDir}/ca/rootCA.pem`;
      this.issue = new command.local.Command(
        `${name}-mkcert`,
        { create: MKCERT_SCRIPT, interpreter: ['/bin/bash', '-c'], environment: base },
        { parent: this },
      );
    } else {
      if (args.powerDns === undefined) throw new Error('Tls: letsencrypt mode needs the PowerDNS API');
      const acmeEnv: Record<string, pulumi.Input<string>> = {
        ...base,
        ACME_EMAIL: tls.acmeEmail,
        ACME_DIRECTORY: tls.acmeDirectory,
        PDNS_API_URL: args.powerDns.adminUrl,
        PDNS_API_KEY: pulumi.secret(args.powerDns.apiKey),
      };
      this.issue = new command.local.Command(
        `${name}-lego`,
        { create: LEGO_SCRIPT, interpreter: ['/bin/bash', '-c'], environment: acmeEnv },
        { parent: this, dependsOn: args.powerDns.ready },
      );
      this.renewal = new command.local.Command(
        `${name}-renewal`,
        {
          create: RENEWAL_INSTALL_SCRIPT,
          delete: RENEWAL_REMOVE_SCRIPT,
          interpreter: ['/bin/bash', '-c'],
          environment: {
            ...acmeEnv,
            ...installEnv,
            SCHEDULE: tls.renewSchedule,
            RENEW_MARKER: `demiurge-tls-renew-${args.envName}`,
          },
        },
        { parent: this, dependsOn: [this.issue] },
      );
    }
    this.fingerprint = this.issue.stdout.apply((s) => s.trim());
    this.install = new command.local.Command(
      `${name}-install`,
      {
        create: INSTALL_SCRIPT,
        interpreter: ['/bin/bash', '-c'],
        environment: installEnv,
        // A new certificate or a new dev container: copy again.
        triggers: [this.fingerprint, args.devContainer.id],
      },
      { parent: this, dependsOn: [this.issue, ...args.installAfter] },
    );
    this.registerOutputs({
      mode: this.mode,
      certPath: this.certPath,
      keyPath: this.keyPath,
      caRootPath: this.caRootPath,
      fingerprint: this.fingerprint,
    });
  }
}
