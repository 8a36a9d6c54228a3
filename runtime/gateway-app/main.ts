/**
 * The gateway image's default app (what runs when no build is packed): speaks
 * the gateway protocol through runtime/gateway-client and serves a page with
 * the organization and build it serves, a WebSocket echo at /ws and /healthz.
 * Bundled with esbuild into one file with no imports but Node's built-ins.
 * Environment: GANYMEDE_URL (or GANYMEDE_FQDN), GATEWAY_ID, GATEWAY_TOKEN,
 * GATEWAY_IDLE_TIMEOUT_MS, GATEWAY_PUSH_INTERVAL_MS,
 * GATEWAY_HEARTBEAT_INTERVAL_MS, APP_LISTEN (default 127.0.0.1:8888), BUILD_INFO_FILE,
 * APP_CONTROL_SOCKET, GATEWAY_APP_STANDBY and APP_READY_FIFO (hot reload: control.ts).
 */
import * as http from 'http';
import type { AddressInfo } from 'net';
import { GatewayAgent, GatewayClient } from '../gateway-client';
import { readBuildInfo } from './build-info';
import { createControlServer, listenControl, notifyReady } from './control';
import { DefaultApp } from './server';
import { loadSettings, SettingsError } from './settings';

function log(fields: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), ...fields })}\n`);
}

function main(): void {
  let settings;
  try {
    settings = loadSettings(process.env);
  } catch (err) {
    if (!(err instanceof SettingsError)) throw err;
    log({ event: 'app.misconfigured', message: err.message });
    process.exit(64);
  }
  const buildInfo = readBuildInfo(settings.buildInfoFile);
  const app = new DefaultApp(buildInfo);
  app.log = (fields) => log({ ...fields, gateway_id: settings.gatewayId, build: buildInfo.buildId });
  const client = new GatewayClient({
    baseUrl: settings.ganymedeUrl,
    gatewayId: settings.gatewayId,
    registrationToken: settings.registrationToken,
    logger: (e) => log({ ...e, gateway_id: settings.gatewayId }),
  });
  const server = http.createServer(app.handle);
  server.on('upgrade', app.upgrade);
  const agent = new GatewayAgent({
    client,
    hooks: app.hooks,
    idleTimeoutMs: settings.idleTimeoutMs,
    pushIntervalMs: settings.pushIntervalMs,
    heartbeatIntervalMs: settings.heartbeatIntervalMs,
    logger: (e) => log({ ...e, build: buildInfo.buildId }),
    signals: process,
    onSignalHandled: (signal) => {
      log({ event: 'app.exit', signal });
      server.close();
      process.exit(0);
    },
  });
  app.agent = agent;
  server.on('error', (err) => {
    log({ event: 'app.listen_failed', message: err.message });
    process.exit(1);
  });
  const listen = (): void => {
    server.listen(settings.listenPort, settings.listenHost, () => {
      const addr = server.address() as AddressInfo;
      log({ event: 'app.listening', host: addr.address, port: addr.port, gateway_id: settings.gatewayId, build: buildInfo.buildId, api: settings.ganymedeUrl, standby: settings.standby });
      // A reload's new app registers only when the old one hands over (POST /adopt on the control socket).
      if (!settings.standby) void agent.start();
      // ... and the reload waiting for it hears at once that it listens.
      if (settings.readyFifo) notifyReady(settings.readyFifo);
    });
  };
  // The control socket listens first: an app that answers HTTP can always be handed over.
  if (!settings.controlSocket) return listen();
  const socketPath = settings.controlSocket;
  listenControl(createControlServer(app, agent, (f) => log({ ...f, gateway_id: settings.gatewayId })), socketPath).then(listen, (err: unknown) => {
    log({ event: 'app.listen_failed', socket: socketPath, message: err instanceof Error ? err.message : String(err) });
    process.exit(1);
  });
}

main();
