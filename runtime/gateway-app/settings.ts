import { PORTS } from '../naming';

/** The default app's configuration, from the gateway container's environment. */
export interface AppSettings {
  /** API base URL (GANYMEDE_URL, else https://$GANYMEDE_FQDN). */
  ganymedeUrl: string;
  gatewayId: string;
  /** GATEWAY_TOKEN: never logged. */
  registrationToken: string;
  idleTimeoutMs: number;
  pushIntervalMs: number;
  heartbeatIntervalMs: number;
  listenHost: string;
  /** 0 picks a free port (tests); the chosen one is logged. */
  listenPort: number;
  /** BUILD_INFO.txt to read the build id from. */
  buildInfoFile: string | undefined;
  /** APP_CONTROL_SOCKET: unix socket for the image's gateway-reload (hand-off, adopt, drain); none if unset. */
  controlSocket: string | undefined;
  /** GATEWAY_APP_STANDBY=1: a reload's new app; it waits for a hand-off (`adopt`) instead of registering. */
  standby: boolean;
  /** APP_READY_FIFO: where a reload's new app writes `ready <pid>` once it listens (control.ts, notifyReady). */
  readyFifo: string | undefined;
}

export class SettingsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SettingsError';
  }
}

function ms(env: NodeJS.ProcessEnv, name: string, dflt: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return dflt;
  if (!/^\d{1,10}$/.test(raw.trim())) throw new SettingsError(`${name} must be a whole number of milliseconds, got ${JSON.stringify(raw.slice(0, 40))}`);
  const v = Number(raw.trim());
  if (v < min || v > max) throw new SettingsError(`${name} must be within ${min}..${max} ms, got ${v}`);
  return v;
}

/** `host:port`, `:port` or `port`; the host defaults to 127.0.0.1 (stage-2 nginx proxies there). */
export function parseListen(raw: string | undefined): { host: string; port: number } {
  if (raw === undefined || raw === '') return { host: '127.0.0.1', port: PORTS.gatewayApp };
  const m = /^(?:([0-9.]+|\[[0-9a-fA-F:]+\]|[a-z0-9.-]+)?:)?(\d{1,5})$/.exec(raw.trim());
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) throw new SettingsError(`APP_LISTEN must be host:port (e.g. 127.0.0.1:8888), got ${JSON.stringify(raw.slice(0, 60))}`);
  return { host: (m[1] ?? '127.0.0.1').replace(/^\[|\]$/g, ''), port };
}

export function loadSettings(env: NodeJS.ProcessEnv): AppSettings {
  const gatewayId = env.GATEWAY_ID ?? '';
  if (!/^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/.test(gatewayId)) throw new SettingsError('GATEWAY_ID must be set to this gateway\'s name (a lowercase DNS label)');
  const registrationToken = env.GATEWAY_TOKEN ?? '';
  if (!/^[A-Za-z0-9._~+/=-]{16,200}$/.test(registrationToken)) throw new SettingsError('GATEWAY_TOKEN must be set to this gateway\'s registration token (16..200 characters)');
  let ganymedeUrl = env.GANYMEDE_URL?.trim();
  if (!ganymedeUrl) {
    const fqdn = env.GANYMEDE_FQDN?.trim();
    if (!fqdn || !/^[a-z0-9.-]+(:\d{1,5})?$/.test(fqdn)) throw new SettingsError('GANYMEDE_URL (or GANYMEDE_FQDN) must name the API server');
    ganymedeUrl = `https://${fqdn}`;
  }
  if (!/^https?:\/\/[^/?#@\s]+\/?$/.test(ganymedeUrl)) throw new SettingsError(`GANYMEDE_URL must be an http(s) base URL without a path, got ${JSON.stringify(ganymedeUrl.slice(0, 80))}`);
  const listen = parseListen(env.APP_LISTEN);
  return {
    ganymedeUrl: ganymedeUrl.replace(/\/$/, ''),
    gatewayId,
    registrationToken,
    idleTimeoutMs: ms(env, 'GATEWAY_IDLE_TIMEOUT_MS', 300_000, 500, 7 * 24 * 3600_000),
    pushIntervalMs: ms(env, 'GATEWAY_PUSH_INTERVAL_MS', 60_000, 100, 24 * 3600_000),
    // The API's reaper releases gateways silent for longer than that.
    heartbeatIntervalMs: ms(env, 'GATEWAY_HEARTBEAT_INTERVAL_MS', 20_000, 100, 30_000),
    listenHost: listen.host,
    listenPort: listen.port,
    buildInfoFile: env.BUILD_INFO_FILE || undefined,
    controlSocket: env.APP_CONTROL_SOCKET || undefined,
    standby: env.GATEWAY_APP_STANDBY === '1',
    readyFifo: env.APP_READY_FIFO || undefined,
  };
}
