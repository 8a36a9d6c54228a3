/** Facts about the machine and its processes, read from /proc (Linux only, like the rest of the set-up). */
import { execFileSync } from 'child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'fs';
import * as os from 'os';
import * as path from 'path';

export interface MachineFacts {
  hostname: string;
  cores: number;
  cpuModel: string;
  memoryGiB: number;
  kernel: string;
  node: string;
  nginx: string;
  njs: string;
  /** lua-nginx-module (stage 1's route table), Debian's package version. */
  lua: string;
  postgres: string;
  powerdns: string;
}

function tryRun(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  } catch (err) {
    const e = err as { stderr?: string; stdout?: string };
    return `${e.stdout ?? ''}${e.stderr ?? ''}`.trim();
  }
}

export function machineFacts(postgres: string, powerdns: string): MachineFacts {
  // nginx -v prints on stderr.
  const nginxOut = tryRun('sh', ['-c', 'nginx -v 2>&1']);
  const njs = tryRun('sh', ['-c', "dpkg-query -W -f='${Version}' libnginx-mod-http-js 2>/dev/null"]);
  const lua = tryRun('sh', ['-c', "dpkg-query -W -f='${Version}' libnginx-mod-http-lua 2>/dev/null"]);
  return {
    hostname: os.hostname(),
    cores: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    nginx: nginxOut.replace(/^nginx version:\s*(nginx\/)?/, ''),
    njs: njs || 'unknown',
    lua: lua || 'unknown',
    postgres,
    powerdns,
  };
}

/** Peak (VmHWM) and current (VmRSS) resident set of a process, in MiB. */
export function rssMiB(pid: number): { peak: number; current: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN);
  return { peak: kb('VmHWM') / 1024, current: kb('VmRSS') / 1024 };
}

/** Resets a process's peak RSS to its current RSS (so a phase's peak is its own); false if not permitted. */
export function resetPeakRss(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

export function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

const TICK_MS = 1000 / 100; // USER_HZ is 100 on Linux

/** CPU ms of processes: own time, plus reaped children's time for the given parents (backends that exited). */
export function cpuMs(pids: number[], withReapedChildren: number[] = []): number {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // fields after "(comm) ": state=0 … utime=11 stime=12 cutime=13 cstime=14
      ticks += Number(f[11]) + Number(f[12]);
      if (withReapedChildren.includes(pid)) ticks += Number(f[13]) + Number(f[14]);
    } catch {
      /* exited */
    }
  }
  return ticks * TICK_MS;
}

function cmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
  } catch {
    return '';
  }
}

function comm(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

function allPids(): number[] {
  return readdirSync('/proc').filter((d) => /^\d+$/.test(d)).map(Number);
}

/** The processes of the test PostgreSQL cluster (postmaster first), found by their titles. */
export function postgresPids(cluster = 'demiurge_test'): number[] {
  const pids = allPids().filter((p) => comm(p).startsWith('postgres') && cmdline(p).includes(cluster));
  const master = pids.find((p) => cmdline(p).includes(' -D '));
  return master ? [master, ...pids.filter((p) => p !== master)] : pids;
}

/** The pdns_server whose configuration serves the API on the given port (another checkout may run it). */
export function powerDnsPid(apiPort: number): number | undefined {
  for (const pid of allPids()) {
    if (comm(pid) !== 'pdns_server') continue;
    const dir = /--config-dir=(\S+)/.exec(cmdline(pid))?.[1];
    const conf = dir ? path.join(dir, 'pdns.conf') : '';
    if (conf && existsSync(conf) && new RegExp(`^webserver-port=${apiPort}$`, 'm').test(readFileSync(conf, 'utf8'))) return pid;
  }
  return undefined;
}

/**
 * Where the bench puts its own server blocks in a Stage1Nginx: the suite's
 * extra directory when the helper has one, else the included confDir (the
 * allocator only touches its own files there).
 */
export function extraConfDir(nginx: { confDir: string }): string {
  const sites = (nginx as { sitesDir?: unknown }).sitesDir;
  return typeof sites === 'string' ? sites : nginx.confDir;
}
