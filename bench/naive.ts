/**
 * The baseline: what the shell-script allocator did, made as cheap as it can
 * be, measured in the same run. Per allocation, sequentially: one PowerDNS
 * PATCH, one route file (a TLS `server` block per organization, the seeds'
 * pattern, as `sed` would write it), one `nginx -s reload`, and the answer.
 *
 * It runs against its own nginx (own prefix, listening on a unix socket, so it
 * needs no port) with the same certificate, zone and stand-in gateways as the
 * allocator. The PATCH and the file write are done in-process rather than by
 * spawning curl and sed, which only makes the baseline faster, so every ratio
 * to it is conservative. It checks no database, and it does not wait for the
 * route to be live: right after each answer the bench makes the same HTTPS
 * check as for the allocator and counts how often the naive sequence answered
 * before its route was served.
 */
import { execFile } from 'child_process';
import { promises as fs } from 'fs';
import * as http from 'http';
import * as https from 'https';
import * as path from 'path';
import { performance } from 'perf_hooks';
import type { Stage1Nginx } from '../test/helpers/stage1-nginx';
import { extraConfDir } from './system';

export interface NaiveOptions {
  nginx: Stage1Nginx;
  domain: string;
  pdnsApiUrl: string;
  pdnsApiKey: string;
  publicIp: string;
}

export interface NaiveRep {
  allocate: number[];
  release: number[];
  /** Allocations whose HTTPS check right after the answer did not reach their gateway. */
  notLiveAtAnswer: number;
  /** ms from the answer until the route was actually served (polled every 5 ms). */
  untilLive: number[];
  reloads: number;
  patches: number;
}

export class NaiveAllocator {
  readonly socket: string;
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  private readonly ca: Promise<Buffer>;

  constructor(private readonly o: NaiveOptions) {
    this.socket = path.join(o.nginx.prefix, 'naive.sock');
    this.ca = fs.readFile(o.nginx.caFile);
  }

  /** The catch-all server, so an organization without a route gets a 404 as on stage-1. */
  async writeDefault(): Promise<void> {
    await fs.writeFile(
      path.join(extraConfDir(this.o.nginx), '00-naive-default.conf'),
      `server {
    listen unix:${this.socket} ssl default_server;
    ssl_certificate ${this.o.nginx.certFile};
    ssl_certificate_key ${this.o.nginx.keyFile};
    return 404 "no gateway is allocated to this organization\\n";
}
`,
    );
  }

  private routeFile(org: string): string {
    return path.join(extraConfDir(this.o.nginx), `naive-org-${org}.conf`);
  }

  private patch(org: string, present: boolean): Promise<void> {
    const names = [`org-${org}.${this.o.domain}.`, `*.org-${org}.${this.o.domain}.`];
    const rrsets = names.map((name) =>
      present
        ? { name, type: 'A', ttl: 60, changetype: 'REPLACE', records: [{ content: this.o.publicIp, disabled: false }] }
        : { name, type: 'A', changetype: 'DELETE' },
    );
    const body = JSON.stringify({ rrsets });
    const url = new URL(`${this.o.pdnsApiUrl}/api/v1/servers/localhost/zones/${this.o.domain}.`);
    return new Promise((resolve, reject) => {
      const req = http.request(
        { host: url.hostname, port: url.port, path: url.pathname, method: 'PATCH', agent: this.agent, headers: { 'X-API-Key': this.o.pdnsApiKey, 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) } },
        (res) => {
          let out = '';
          res.on('data', (c: Buffer) => (out += c.toString()));
          res.on('end', () => (res.statusCode === 204 ? resolve() : reject(new Error(`naive PATCH answered ${res.statusCode}: ${out.slice(0, 200)}`))));
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  }

  private reload(): Promise<void> {
    const n = this.o.nginx;
    return new Promise((resolve, reject) =>
      execFile('nginx', ['-s', 'reload', '-p', n.prefix, '-c', path.join(n.prefix, 'nginx.conf')], (err, _out, stderr) =>
        err ? reject(new Error(`naive nginx -s reload: ${stderr || err.message}`)) : resolve(),
      ),
    );
  }

  async allocate(org: string, host: string, port: number): Promise<void> {
    await this.patch(org, true);
    await fs.writeFile(
      this.routeFile(org),
      `server {
    listen unix:${this.socket} ssl;
    server_name org-${org}.${this.o.domain} *.org-${org}.${this.o.domain};
    ssl_certificate ${this.o.nginx.certFile};
    ssl_certificate_key ${this.o.nginx.keyFile};
    location / {
        proxy_pass http://${host}:${port};
        proxy_set_header Host $host;
    }
}
`,
    );
    await this.reload();
  }

  async release(org: string): Promise<void> {
    await this.patch(org, false);
    await fs.rm(this.routeFile(org), { force: true });
    await this.reload();
  }

  /** One HTTPS request over the naive nginx's socket: does it reach the organization's gateway? */
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

  /** `count` sequential allocations, then their sequential releases. */
  async rep(orgs: Array<{ org: string; host: string }>, port: number): Promise<NaiveRep> {
    const rep: NaiveRep = { allocate: [], release: [], notLiveAtAnswer: 0, untilLive: [], reloads: 0, patches: 0 };
    for (const { org, host } of orgs) {
      const t0 = performance.now();
      await this.allocate(org, host, port);
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
    for (const { org } of orgs) {
      const t0 = performance.now();
      await this.release(org);
      rep.release.push(performance.now() - t0);
      rep.reloads += 1;
      rep.patches += 1;
    }
    return rep;
  }

  close(): void {
    this.agent.destroy();
  }
}
