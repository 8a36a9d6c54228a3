/**
 * Measures a real `nginx -s reload` of the stage-1 nginx until its new workers
 * serve. A tiny probe server (its own unix socket, so no port and nothing the
 * allocator's servers see) answers with the pid of the worker that took the
 * request; the reload is done when a worker that did not exist before answers.
 */
import { execFile } from 'child_process';
import { readFileSync, writeFileSync } from 'fs';
import * as http from 'http';
import * as path from 'path';
import { performance } from 'perf_hooks';
import type { Stage1Nginx } from '../test/helpers/stage1-nginx';
import { childrenOf, extraConfDir } from './system';

export interface ReloadTiming {
  /** `nginx -s reload` itself: it parses the whole configuration, signals the master and exits. */
  commandMs: number;
  /** From the command's start until a new-generation worker answers. */
  untilNewServesMs: number;
  /** Until the old workers have exited (they keep accepting for a while after the new ones start). */
  untilOldGoneMs: number;
}

export class ReloadProbe {
  readonly socket: string;

  constructor(private readonly nginx: Stage1Nginx) {
    this.socket = path.join(nginx.prefix, 'probe.sock');
  }

  /** Call before nginx starts (or reload once after). The file name sorts after the allocator's files and is not one it owns. */
  install(): void {
    writeFileSync(
      path.join(extraConfDir(this.nginx), 'zz-bench-probe.conf'),
      `# bench only: which worker answers (reload measurement)
server {
    listen unix:${this.socket};
    access_log off;
    location / { return 200 "$pid"; }
}
`,
    );
  }

  masterPid(): number {
    return Number(readFileSync(path.join(this.nginx.prefix, 'nginx.pid'), 'utf8').trim());
  }

  workerPids(): number[] {
    return childrenOf(this.masterPid());
  }

  private ask(): Promise<number | undefined> {
    return new Promise((resolve) => {
      const req = http.get({ socketPath: this.socket, path: '/', agent: false, timeout: 1000 }, (res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => resolve(Number(body) || undefined));
      });
      req.on('error', () => resolve(undefined));
      req.on('timeout', () => req.destroy());
    });
  }

  async measure(): Promise<ReloadTiming> {
    const old = new Set(this.workerPids());
    const n = this.nginx;
    const t0 = performance.now();
    let commandMs = Number.NaN;
    const command = new Promise<void>((resolve, reject) =>
      execFile('nginx', ['-s', 'reload', '-p', n.prefix, '-c', path.join(n.prefix, 'nginx.conf')], (err, _o, stderr) => {
        commandMs = performance.now() - t0;
        return err ? reject(new Error(`nginx -s reload: ${stderr || err.message}`)) : resolve();
      }),
    );
    let untilNewServesMs = Number.NaN;
    const deadline = t0 + 30_000;
    for (;;) {
      const pid = await this.ask();
      if (pid !== undefined && !old.has(pid)) {
        untilNewServesMs = performance.now() - t0;
        break;
      }
      if (performance.now() > deadline) throw new Error('nginx reload: no new worker answered within 30 s');
      await new Promise((r) => setTimeout(r, 1));
    }
    await command;
    while (this.workerPids().some((p) => old.has(p))) {
      if (performance.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 2));
    }
    return { commandMs, untilNewServesMs, untilOldGoneMs: performance.now() - t0 };
  }
}
