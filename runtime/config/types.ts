/**
 * The runtime configuration every process in the environment reads (the
 * built-in API server, the `gateway-pool` CLI, the team's own Ganymede):
 * `/etc/demiurge/runtime/config.json` (non-secret, 0644) and the secrets file
 * it names (0600). The Pulumi program writes both from the values of the stack
 * outputs; see docs/CONTRACTS.md, "Runtime configuration files".
 */
import type { GatewaySpec } from '../inventory';
import type { UserContainerNaming } from '../naming';

/** Where the program puts the file in the dev container. */
export const DEFAULT_RUNTIME_CONFIG_PATH = '/etc/demiurge/runtime/config.json';
/** Environment variable naming another config file (tests, other hosts). */
export const RUNTIME_CONFIG_ENV = 'DEMIURGE_RUNTIME_CONFIG';
export const RUNTIME_CONFIG_VERSION = 1;

/** The secrets file: only secrets, mode 0600. */
export interface RuntimeSecrets {
  /** Password of `database.user`. */
  databasePassword: string;
  /** PowerDNS HTTP API key (X-API-Key). */
  powerdnsApiKey: string;
  /** Password of `powerdns.database.user` (PowerDNS's gpgsql role); null when the config names no PowerDNS database. */
  powerdnsDatabasePassword: string | null;
  /** Bearer token of the built-in API server's operator endpoints (and of /gateway/start); the stack secret output `operatorToken`. */
  operatorToken: string;
  /** Key encrypting per-organization private keys at rest (stack secret `orgCertificateKey`); null when TLS mode is none. */
  orgCertificateKey: string | null;
  /** Registration token per gateway name (stack secret `gatewayRegistrationTokens`): what a gateway presents on /gateway/ready. */
  gatewayRegistrationTokens: Record<string, string>;
}

/** Organization-certificate issuance, the non-secret part of the stack output `tlsRuntime` (components/tls.ts). */
export type RuntimeTlsConfig =
  /** No per-organization certificates (the stage-1 base certificate only). */
  | { mode: 'none' }
  /** Per-organization certificates from the environment's mkcert dev CA (`DevCaIssuer`). */
  | {
      mode: 'mkcert';
      /** mkcert CAROOT holding rootCA.pem and rootCA-key.pem (the tls volume's `ca/`). */
      caroot: string;
    }
  /** Per-organization certificates from ACME (Let's Encrypt) by DNS-01 through the environment's PowerDNS (`AcmeIssuer`). */
  | {
      mode: 'letsencrypt';
      /** ACME directory URL. */
      directoryUrl: string;
      /** ACME account e-mail. */
      email: string;
      /** Private, persistent directory of the ACME account (the tls volume's `acme/`). */
      stateDir: string;
      /** DNS servers (host:port) lego checks the TXT records through: the environment's PowerDNS. */
      resolvers: string[];
      /** Optional PEM file of extra CAs for the ACME server's HTTPS (Pebble in tests). */
      caCertificatesFile?: string;
    };

export interface RuntimeApiConfig {
  /** `host:port` the built-in API server listens on (stage 1 proxies ganymede.<domain> to 127.0.0.1:6000). */
  listen: { host: string; port: number };
  /** Public URL of the API, `https://ganymede.<domain>` (shown to operators). */
  publicUrl: string;
  /** URL gateways call back on the environment network (GANYMEDE_URL of gateway containers; sent as `ganymede_url` in /collab/start). */
  gatewayUrl: string;
  /** Seconds between two reconcile() passes (after one ends); default 60. */
  reconcileIntervalSeconds: number;
  reaper: {
    /** Seconds between two reaper passes; default 30. */
    intervalSeconds: number;
    /** A gateway silent (no heartbeat) this long loses its organization; default 600. */
    silenceSeconds: number;
  };
  /** Host quarantine of remote gateway hosts (runtime/host-health.ts). */
  hostHealth: {
    /** Seconds between two probe rounds (after one ends); default 15. */
    intervalSeconds: number;
    /** Consecutive rounds in which no gateway of a host answered before its ready gateways become unreachable; default 3. */
    failuresBeforeUnreachable: number;
    /** Timeout of one probe; default 3000. */
    timeoutMs: number;
  };
}

export const DEFAULT_HOST_HEALTH: RuntimeApiConfig['hostHealth'] = { intervalSeconds: 15, failuresBeforeUnreachable: 3, timeoutMs: 3000 };

/** A validated config.json plus its secrets. `secrets` is not enumerable: JSON.stringify and util.inspect never show it. */
export interface RuntimeConfig {
  version: 1;
  /** Environment name (stack output envName). */
  envName: string;
  /** Environment domain. */
  domain: string;
  /** Address every organization name resolves to (stage-1 host). */
  publicIp: string;
  /** PostgreSQL schema of the pool tables; default `gateway_pool`. */
  schema: string;
  /** The pool's PostgreSQL (password in the secrets file). */
  database: { host: string; port: number; database: string; user: string };
  /**
   * PowerDNS HTTP API (key in the secrets file), the zone the names live in (default the domain) and,
   * optionally, PowerDNS's gpgsql database (password in the secrets file): given, organization records
   * are written to its tables, one statement per batch, instead of API PATCHes.
   */
  powerdns: { apiUrl: string; zone: string; database?: { host: string; port: number; database: string; user: string } };
  /** The allocator's stage-1 nginx files: NginxOptions without the testing knobs. */
  nginx: {
    /** Directory the allocator owns (`/etc/nginx/demiurge`). */
    confDir: string;
    /** The stage-1 base certificate and key. */
    tls: { certPath: string; keyPath: string };
    /** `listen` parameters of the organization server; default `443 ssl`. */
    listen?: string;
    /** Loopback status server of the allocator in nginx; default 127.0.0.1:8099. */
    statusListen?: string;
    /** Validates the configuration; default `["nginx","-t","-q"]`. */
    testCommand?: string[];
    /** Loads it; default `["nginx","-s","reload"]`. */
    reloadCommand?: string[];
  };
  /** `nested` (default) or `flat` user-container names (runtime/naming.ts). */
  userContainerNaming: UserContainerNaming;
  /** The gateway pool: exactly the stack output gatewayInventory. */
  inventory: GatewaySpec[];
  tls: RuntimeTlsConfig;
  /** The built-in API server. */
  api: RuntimeApiConfig;
  /** Absolute path of the secrets file (a relative one in the file is resolved against the config file's folder). */
  secretsFile: string;
  /** The config file this was read from. */
  configFile: string;
  readonly secrets: RuntimeSecrets;
}
