/**
 * Row 4's baseline: the seed's allocation path, run by bench/seed/gateway-pool.sh
 * (state files, first-ready walk, one PowerDNS PATCH, one TLS `server` block per
 * organization and one `nginx -s reload` per allocation; the same per release),
 * sequentially, as the seed runs it: one shell per call.
 *
 * It runs against its own nginx (own prefix, listening on a unix socket, so it
 * needs no port) with the same certificate, zone and stand-in gateways as the
 * allocator. It does not wait for the route to be live (the seed does not):
 * right after each answer the bench makes the same HTTPS check as for the
 * allocator and counts how often the seed answered before its route was served.
 */
import { execFile } from 'child_process';
import { promises as fs } from 'fs';
import * as https from 'https';
import * as path from 'path';
import { performance } from 'perf_hooks';
import type { Stage1Nginx } from '../test/helpers/stage1-nginx';
import { extraConfDir } from './system';

const SCRIPT = path.join(__dirname, 'seed', 'gateway-pool.sh');

export interface SeedOptions {
  nginx: Stage1Nginx;
  domain: string;
  pdnsApiUrl: string;
  pdnsApiKey: string;
  publicIp: string;
}

export interface SeedRep {
  allocate: number[];
  release: number[];
  /** Allocations whose HTTPS check right after the answer did not reach their gateway. */
  notLiveAtAnswer: number;
  /** ms from the answer until the route was actually served (polled every 5 ms). */
  untilLive: number[];
  reloads: number;
  patches: number;
}

export class SeedBaseline {
  readonly socket: string;
  private readonly poolDir: string;
  private readonly keyHeader: string;
  private readonly ca: Promise<Buffer>;

  constructor(private readonly o: SeedOptions) {
    this.socket = path.join(o.nginx.prefix, 'seed.sock');
    this.poolDir = path.join(o.nginx.prefix, 'gateway-pool');
    this.keyHeader = path.join(o.nginx.prefix, 'pdns-key.header');
    this.ca = fs.readFile(o.nginx.caFile);
  }

  /** One state file per gateway, as `gateway-pool.sh create` writes them; and the catch-all server (404, as on stage 1). */
  async setUp(gateways: Array<{ name: string; host: string; port: number; vpnPort: number }>): Promise<void> {
    await fs.mkdir(this.poolDir, { recursive: true });
    await fs.writeFile(this.keyHeader, `X-API-Key: ${this.o.pdnsApiKey}\n`, { mode: 0o600 });
    await Promise.all(gateways.map((g) => fs.writeFile(path.join(this.poolDir, `${g.name}.state`), `${g.name}|ready|${g.host}:${g.port}|${g.vpnPort}|\n`)));
    await fs.writeFile(
      path.join(extraConfDir(this.o.nginx), '00-seed-default.conf'),
      `server {
    listen unix:${this.socket} ssl default_server;
    ssl_certificate ${this.o.nginx.certFile};
    ssl_certificate_key ${this.o.nginx.keyFile};
    return 404 "no gateway is allocated to this organization\\n";
}
`,
    );
  }

  private run(cmd: 'allocate' | 'deallocate', org: string): Promise<string> {
    const n = this.o.nginx;
    const env = {
      PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
      POOL_DIR: this.poolDir,
      DOMAIN: this.o.domain,
      HOST_IP: this.o.publicIp,
      PDNS_API_URL: this.o.pdnsApiUrl,
      PDNS_KEY_HEADER: this.keyHeader,
      CONF_DIR: extraConfDir(n),
      LISTEN: `unix:${this.socket}`,
      CERT: n.certFile,
      KEY: n.keyFile,
      NGINX_PREFIX: n.prefix,
      NGINX_CONF: path.join(n.prefix, 'nginx.conf'),
    };
    return new Promise((resolve, reject) =>
      execFile('bash', [SCRIPT, cmd, org], { env }, (err, out, stderr) => (err ? reject(new Error(`seed gateway-pool.sh ${cmd}: ${stderr.trim() || err.message}`)) : resolve(out.trim()))),
    );
  }

  /** Allocates; answers the gateway's host (the script's `name|host:port|vpn`). */
  async allocate(org: string): Promise<string> {
    const [, hostPort] = (await this.run('allocate', org)).split('|');
    return hostPort.replace(/:\d+$/, '');
  }

  async release(org: string): Promise<void> {
    await this.run('deallocate', org);
  }

  /** One HTTPS request over the seed nginx's socket: does it reach the organization's gateway? */
  async isLive(org: string, host: string): Promise<boolean> {
    const fqdn = `org-${org}.${this.o.domain}`;
    const ca = await this.ca;
    return new Promise((resolve) => {
      const req = https.request({ socketPath: this.socket, servername: fqdn, headers: { host: fqdn }, path: '/bench-check', ca, agent: false }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => {
          try {
            resolve(res.statusCode === 200 && (JSON.parse(body) as { gatewayAddress?: string }).gatewayAddress === host);
          } catch {
            resolve(false);
          }
        });
      });
      req.on('error', () => resolve(false));
      req.end();
    });
  }

  /** Sequential allocations of `orgs`, then their sequential releases. */
  async rep(orgs: string[]): Promise<SeedRep> {
    const rep: SeedRep = { allocate: [], release: [], notLiveAtAnswer: 0, untilLive: [], reloads: 0, patches: 0 };
    for (const org of orgs) {
      const t0 = performance.now();
      const host = await this.allocate(org);
      const answered = performance.now();
      rep.allocate.push(answered - t0);
      rep.reloads += 1;
      rep.patches += 1;
      if (!(await this.isLive(org, host))) {
        rep.notLiveAtAnswer += 1;
        const deadline = answered + 10_000;
        while (!(await this.isLive(org, host)) && performance.now() < deadline) await new Promise((r) => setTimeout(r, 5));
      }
      rep.untilLive.push(performance.now() - answered);
    }
    for (const org of orgs) {
      const t0 = performance.now();
      await this.release(org);
      rep.release.push(performance.now() - t0);
      rep.reloads += 1;
      rep.patches += 1;
    }
    return rep;
  }
}
