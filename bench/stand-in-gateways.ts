/**
 * The stand-in gateways: one small nginx listening on every loopback address
 * (0.0.0.0:<port>), answering each request with the address it was reached on,
 * so a check through stage 1 tells which gateway answered. nginx rather than a
 * Node.js server so the gateways cost little CPU next to what is measured (2
 * cores), and so row 5's requests/s are stage 1's, not the stand-in's.
 */
import { execFileSync } from 'child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'fs';
import * as os from 'os';
import * as path from 'path';

export class StandInGateways {
  private readonly prefix = mkdtempSync(path.join(os.tmpdir(), 'demiurge-bench-gw-'));
  private readonly conf = path.join(this.prefix, 'nginx.conf');

  constructor(readonly port: number) {}

  start(): void {
    mkdirSync(path.join(this.prefix, 'logs'), { recursive: true });
    writeFileSync(
      this.conf,
      `# bench only: stand-in gateways (bench/stand-in-gateways.ts)
worker_processes 1;
pid ${this.prefix}/nginx.pid;
error_log ${this.prefix}/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path ${this.prefix}/tmp-body;
    proxy_temp_path ${this.prefix}/tmp-proxy;
    fastcgi_temp_path ${this.prefix}/tmp-fastcgi;
    uwsgi_temp_path ${this.prefix}/tmp-uwsgi;
    scgi_temp_path ${this.prefix}/tmp-scgi;
    keepalive_requests 1000000;
    server {
        listen ${this.port} backlog=4096;
        default_type application/json;
        location / {
            return 200 '{"gatewayAddress":"$server_addr","host":"$host","path":"$request_uri","forwardedProto":"$http_x_forwarded_proto"}';
        }
    }
}
`,
    );
    execFileSync('nginx', ['-p', this.prefix, '-c', this.conf], { stdio: ['ignore', 'pipe', 'pipe'] });
  }

  close(): void {
    const pidFile = path.join(this.prefix, 'nginx.pid');
    if (existsSync(pidFile)) {
      const pid = Number(readFileSync(pidFile, 'utf8').trim());
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        /* already gone */
      }
    }
    rmSync(this.prefix, { recursive: true, force: true });
  }
}
