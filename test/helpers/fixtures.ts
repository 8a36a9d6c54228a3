import { randomUUID } from 'crypto';
import * as http from 'http';
import type { AddressInfo } from 'net';
import axios from 'axios';
import { Pool } from 'pg';
import type { TestServices } from './services';
import { ZONE_WRITE_SETTINGS } from '../../runtime/powerdns-client';

/**
 * One HTTP server standing in for every test gateway: gateways are registered
 * as 127.0.<k>.<j>:<port> (all of 127/8 is loopback), so the address a request
 * arrives on tells which gateway nginx routed it to.
 */
export async function startStandInGateways(port = 0): Promise<{ port: number; close: () => Promise<void> }> {
  const server = http.createServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ gatewayAddress: req.socket.localAddress, host: req.headers.host, path: req.url, forwardedProto: req.headers['x-forwarded-proto'] }));
  });
  await new Promise<void>((r) => server.listen(port, '0.0.0.0', r));
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise((r) => server.close(() => r())),
  };
}

/** Loopback address of test gateway i. */
export function gatewayHost(i: number): string {
  return `127.0.${1 + Math.floor(i / 250)}.${1 + (i % 250)}`;
}

export function randomOrg(): string {
  return randomUUID();
}

export function suiteId(): string {
  return Math.random().toString(36).slice(2, 8);
}

export async function createZone(s: TestServices, domain: string): Promise<void> {
  const res = await axios.post(
    `${s.pdnsApiUrl}/api/v1/servers/localhost/zones`,
    // As the program's zone command creates it (runtime/powerdns-client.ts ZONE_WRITE_SETTINGS).
    { name: `${domain}.`, kind: 'Native', nameservers: [], ...ZONE_WRITE_SETTINGS },
    { headers: { 'X-API-Key': s.pdnsApiKey }, validateStatus: () => true },
  );
  if (res.status !== 201 && res.status !== 409) throw new Error(`zone create ${domain}: ${res.status} ${JSON.stringify(res.data)}`);
}

export async function deleteZone(s: TestServices, domain: string): Promise<void> {
  await axios.delete(`${s.pdnsApiUrl}/api/v1/servers/localhost/zones/${domain}.`, { headers: { 'X-API-Key': s.pdnsApiKey }, validateStatus: () => true });
}

export async function zoneRRsets(s: TestServices, domain: string): Promise<Array<{ name: string; type: string; records: Array<{ content: string }>; comments: Array<{ content: string; account: string }> }>> {
  const res = await axios.get(`${s.pdnsApiUrl}/api/v1/servers/localhost/zones/${domain}.`, { headers: { 'X-API-Key': s.pdnsApiKey } });
  return res.data.rrsets;
}

export async function patchZone(s: TestServices, domain: string, rrsets: unknown[]): Promise<void> {
  const res = await axios.patch(`${s.pdnsApiUrl}/api/v1/servers/localhost/zones/${domain}.`, { rrsets }, { headers: { 'X-API-Key': s.pdnsApiKey }, validateStatus: () => true });
  if (res.status !== 204) throw new Error(`patch ${domain}: ${res.status} ${JSON.stringify(res.data)}`);
}

export async function dropSchema(pgUrl: string, schema: string): Promise<void> {
  const pool = new Pool({ connectionString: pgUrl, max: 1 });
  await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  await pool.end();
}
