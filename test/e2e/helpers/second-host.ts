/**
 * A second Docker host inside this machine, for multi-host tests:
 *   - a network namespace `dmh-<id>` joined to this machine by a veth pair on a private /30
 *     (10.213.37.4k+1 here, .4k+2 in the namespace; an `unreachable` route for the /30 keeps its
 *     traffic on this machine even while the link is down: nothing else is ever a target);
 *   - a second dockerd in the namespace (own --data-root, --exec-root, --pidfile, bridge --bip,
 *     cgroup parent, no iptables) on unix:///run/demiurge-host2-<id>/docker.sock and
 *     tcp://<ns addr>:2375; one MASQUERADE rule in the namespace stands in for its ip-masq, so
 *     its containers reach this machine (stage 1) from <ns addr>;
 *   - an sshd in the namespace on <ns addr>:22 with its own config, host key and authorized key
 *     (generated into a temp dir; the machine's own sshd configuration is never read or touched),
 *     whose sessions get DOCKER_HOST of the second engine: reached as ssh://root@<ns addr>, the way
 *     `gatewayHosts` names a host, with DEMIURGE_SSH_OPTS naming the test key and known_hosts.
 * Teardown removes exactly what start made (by its per-checkout names), and also the leftovers of
 * an interrupted earlier run with the same names. Needs root, iproute2, dockerd, openssh-server.
 */
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { DockerApi } from '../../../tools/lib/docker-api';
import { run, waitFor } from './docker';

export interface SecondHost {
  id: string;
  netns: string;
  /** veth end on this machine (down = the host is cut off). */
  hostVeth: string;
  hostAddr: string;
  nsAddr: string;
  unixUrl: string;
  tcpUrl: string;
  sshUrl: string;
  /** Environment for CLIs that reach sshUrl (DEMIURGE_SSH_OPTS with the test key and known_hosts). */
  sshEnv: NodeJS.ProcessEnv;
  /** `docker -H <unix socket>` arguments for the second engine. */
  dockerArgs: string[];
  /** Takes the link down: the host is unreachable by tcp and ssh (immediately: no route). */
  cutOff(): Promise<void>;
  /** Brings the link back and waits until the engine answers over tcp and ssh again. */
  restore(): Promise<void>;
  teardown(): Promise<void>;
}

const SSHD = '/usr/sbin/sshd';

async function must(cmd: string, args: string[], what: string, opts: { timeoutMs?: number } = {}): Promise<string> {
  const r = await run(cmd, args, { timeoutMs: opts.timeoutMs ?? 60_000 });
  if (r.code !== 0) throw new Error(`${what}: ${cmd} ${args.join(' ')} failed (${r.code}): ${(r.stderr || r.stdout).trim()}`);
  return r.stdout.trim();
}

function names(id: string): {
  netns: string; hostVeth: string; nsVeth: string; hostAddr: string; nsAddr: string; subnet: string; bip: string;
  dataRoot: string; runDir: string; cgroupParent: string;
} {
  const k = parseInt(id, 16) % 64;
  return {
    netns: `dmh-${id}`,
    hostVeth: `dmh${id}h`,
    nsVeth: `dmh${id}n`,
    hostAddr: `10.213.37.${4 * k + 1}`,
    nsAddr: `10.213.37.${4 * k + 2}`,
    subnet: `10.213.37.${4 * k}/30`,
    bip: `10.214.${k}.1/24`,
    dataRoot: `/var/lib/demiurge-host2-${id}`,
    runDir: `/run/demiurge-host2-${id}`,
    cgroupParent: `demiurge-host2-${id}`,
  };
}

function readPid(file: string): number | undefined {
  try {
    const pid = Number(fs.readFileSync(file, 'utf8').trim());
    return Number.isInteger(pid) && pid > 1 ? pid : undefined;
  } catch {
    return undefined;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** SIGTERM, wait (bounded), then SIGKILL: only the pid this helper started (from its own pid file). */
async function stopPid(pid: number | undefined, what: string, graceMs: number): Promise<void> {
  if (pid === undefined || !alive(pid)) return;
  process.kill(pid, 'SIGTERM');
  const stopped = await waitFor(`${what} (pid ${pid}) to exit`, graceMs, async () => (alive(pid) ? undefined : true)).then(() => true, () => false);
  if (!stopped && alive(pid)) {
    process.kill(pid, 'SIGKILL');
    await waitFor(`${what} (pid ${pid}) to exit after SIGKILL`, 5000, async () => (alive(pid) ? undefined : true));
  }
}

/** Mount points under `prefix` (deepest first), from /proc/mounts. */
function mountsUnder(prefix: string): string[] {
  const lines = fs.readFileSync('/proc/mounts', 'utf8').split('\n');
  return lines.map((l) => l.split(' ')[1]).filter((m): m is string => !!m && (m === prefix || m.startsWith(`${prefix}/`)))
    .map((m) => m.replace(/\\040/g, ' ')).sort((a, b) => b.length - a.length);
}

/** Removes everything of this id (safe to call when nothing exists). */
async function removeAll(id: string, keysDir: string | undefined, log: (line: string) => void = () => undefined): Promise<void> {
  const n = names(id);
  const t0 = Date.now();
  const sock = `${n.runDir}/docker.sock`;
  if (fs.existsSync(sock)) {
    // Every container on the second engine is this helper's: remove them so dockerd stops at once.
    const api = new DockerApi(`unix://${sock}`, { connectTimeoutMs: 2000, timeoutMs: 30_000 });
    try {
      const all = await api.listContainers({}, true).catch(() => []);
      await Promise.all(all.map((c) => api.removeContainer(c.Id).catch(() => undefined)));
    } finally {
      api.close();
    }
  }
  const t1 = Date.now();
  await stopPid(readPid(`${n.runDir}/sshd.pid`), 'second-host sshd', 5000);
  await stopPid(readPid(`${n.runDir}/docker.pid`), 'second-host dockerd', 30_000);
  const t2 = Date.now();
  for (const m of [...mountsUnder(n.dataRoot), ...mountsUnder(n.runDir)]) await run('umount', ['-l', m]);
  await run('ip', ['netns', 'del', n.netns]);
  await run('ip', ['link', 'del', n.hostVeth]);
  await run('ip', ['route', 'del', 'unreachable', n.subnet]);
  fs.rmSync(n.dataRoot, { recursive: true, force: true });
  fs.rmSync(n.runDir, { recursive: true, force: true });
  if (keysDir) fs.rmSync(keysDir, { recursive: true, force: true });
  for (const ctl of fs.existsSync('/sys/fs/cgroup') ? fs.readdirSync('/sys/fs/cgroup') : []) {
    const dir = path.join('/sys/fs/cgroup', ctl, n.cgroupParent);
    if (fs.existsSync(dir)) await run('find', [dir, '-depth', '-type', 'd', '-exec', 'rmdir', '{}', ';']);
  }
  if (t2 - t0 > 0) log(`second host removed: containers ${t1 - t0} ms, daemons ${t2 - t1} ms, the rest ${Date.now() - t2} ms`);
}

function spawnDetached(cmd: string, args: string[], logFile: string): ChildProcess {
  const out = fs.openSync(logFile, 'a');
  const child = spawn(cmd, args, { detached: true, stdio: ['ignore', out, out] });
  fs.closeSync(out);
  child.unref();
  return child;
}

/**
 * Waits for `probe` while `child` runs: fails at once, with its log, if the daemon exits.
 * (nsenter --net: only the network namespace changes; `ip netns exec` would remount /sys and hide
 * the cgroup hierarchies dockerd needs.)
 */
async function waitWhileRunning(child: ChildProcess, what: string, logFile: string, timeoutMs: number, probe: () => Promise<unknown>): Promise<void> {
  let exited: string | undefined;
  child.once('exit', (code, signal) => { exited = `exited ${code ?? signal}`; });
  await waitFor(what, timeoutMs, async () => {
    if (exited) throw Object.assign(new Error(`${what}: the process ${exited}; log ${logFile}:\n${tail(logFile)}`), { fatal: true });
    return probe().then(() => true);
  }, 200).catch((err: Error) => {
    if (exited) throw new Error(`${what}: the process ${exited}; log ${logFile}:\n${tail(logFile)}`);
    throw err;
  });
}

function tail(file: string, lines = 20): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/**
 * Builds the second host and loads `images` (tags on the main engine) into it.
 * `log` gets one line per step with its time.
 */
export async function startSecondHost(id: string, images: string[], log: (line: string) => void = () => undefined): Promise<SecondHost> {
  if (!fs.existsSync(SSHD)) throw new Error(`${SSHD} is missing: install openssh-server (scripts/docker-setup.sh does)`);
  const n = names(id);
  const timed = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    const t0 = Date.now();
    const v = await fn();
    log(`second host: ${what} (${Date.now() - t0} ms)`);
    return v;
  };
  await timed('leftovers of an earlier run removed', () => removeAll(id, undefined));
  const keys = fs.mkdtempSync(path.join(os.tmpdir(), `demiurge-host2-${id}-`));
  const sock = `${n.runDir}/docker.sock`;
  const unixUrl = `unix://${sock}`;
  const tcpUrl = `tcp://${n.nsAddr}:2375`;
  const sshUrl = `ssh://root@${n.nsAddr}`;
  const sshEnv: NodeJS.ProcessEnv = {
    ...process.env,
    DEMIURGE_SSH_OPTS: `-F /dev/null -i ${keys}/id_ed25519 -o IdentitiesOnly=yes -o UserKnownHostsFile=${keys}/known_hosts -o StrictHostKeyChecking=yes`,
  };
  const dockerdLog = path.join(keys, 'dockerd.log');
  const sshdLog = path.join(keys, 'sshd.log');
  let madeSshdDir = false;
  const teardown = async (): Promise<void> => {
    await removeAll(id, keys, log);
    if (madeSshdDir) {
      try {
        fs.rmdirSync('/run/sshd');
      } catch {
        // not empty or already gone: not ours to force
      }
    }
  };
  try {
    await timed(`netns ${n.netns}, veth ${n.hostVeth} ${n.hostAddr} <-> ${n.nsAddr}`, async () => {
      const ns = (args: string[]): Promise<string> => must('nsenter', [`--net=/var/run/netns/${n.netns}`, ...args], `netns ${n.netns}`);
      await must('ip', ['netns', 'add', n.netns], 'netns');
      await must('ip', ['link', 'add', n.hostVeth, 'type', 'veth', 'peer', 'name', n.nsVeth], 'veth');
      await must('ip', ['link', 'set', n.nsVeth, 'netns', n.netns], 'veth into netns');
      await must('ip', ['addr', 'add', `${n.hostAddr}/30`, 'dev', n.hostVeth], 'host address');
      await must('ip', ['link', 'set', n.hostVeth, 'up'], 'host veth up');
      // While the link is down its connected route is gone: this keeps the /30 off the default route.
      await must('ip', ['route', 'add', 'unreachable', n.subnet, 'metric', '4242'], 'guard route');
      await ns(['ip', 'addr', 'add', `${n.nsAddr}/30`, 'dev', n.nsVeth]);
      await ns(['ip', 'link', 'set', n.nsVeth, 'up']);
      await ns(['ip', 'link', 'set', 'lo', 'up']);
      // What a real Docker host's ip-masq does (this dockerd runs without iptables): containers reach
      // other hosts from the host's address, so answers come back over the veth and never follow
      // this machine's default route.
      await ns(['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
      await ns(['iptables', '-t', 'nat', '-A', 'POSTROUTING', '-o', n.nsVeth, '-j', 'MASQUERADE']);
    });

    fs.mkdirSync(n.runDir, { recursive: true, mode: 0o700 });
    const dockerd = await timed('dockerd started', async () => {
      const child = spawnDetached('nsenter', [`--net=/var/run/netns/${n.netns}`, 'dockerd',
        '--data-root', n.dataRoot, '--exec-root', `${n.runDir}/exec`, '--pidfile', `${n.runDir}/docker.pid`,
        '-H', unixUrl, '-H', tcpUrl, '--tls=false', '--bip', n.bip, '--iptables=false', '--ip-masq=false',
        '--cgroup-parent', n.cgroupParent, '--userland-proxy=true', '--log-level', 'warn'], dockerdLog);
      const api = new DockerApi(unixUrl, { connectTimeoutMs: 1000, timeoutMs: 5000 });
      try {
        await waitWhileRunning(child, `the second dockerd to answer on ${sock}`, dockerdLog, 60_000, () => api.ping());
      } finally {
        api.close();
      }
      return readPid(`${n.runDir}/docker.pid`);
    });
    if (dockerd === undefined) throw new Error(`the second dockerd wrote no pid file ${n.runDir}/docker.pid`);

    await timed(`sshd on ${n.nsAddr}:22 with a test key`, async () => {
      await must('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', `demiurge-host2-${id}-host`, '-f', `${keys}/host_ed25519_key`], 'host key');
      await must('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', `demiurge-host2-${id}-client`, '-f', `${keys}/id_ed25519`], 'client key');
      fs.copyFileSync(`${keys}/id_ed25519.pub`, `${keys}/authorized_keys`);
      fs.chmodSync(`${keys}/authorized_keys`, 0o600);
      fs.writeFileSync(`${keys}/known_hosts`, `${n.nsAddr} ${fs.readFileSync(`${keys}/host_ed25519_key.pub`, 'utf8').split(' ').slice(0, 2).join(' ')}\n`);
      fs.writeFileSync(`${keys}/sshd_config`, [
        `ListenAddress ${n.nsAddr}:22`,
        `HostKey ${keys}/host_ed25519_key`,
        `PidFile ${n.runDir}/sshd.pid`,
        `AuthorizedKeysFile ${keys}/authorized_keys`,
        'PermitRootLogin prohibit-password',
        'PubkeyAuthentication yes',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'UsePAM no',
        // The keys live in a temp dir (world-writable /tmp above it).
        'StrictModes no',
        'PrintMotd no',
        'X11Forwarding no',
        'AllowTcpForwarding no',
        // `docker system dial-stdio` in a session then talks to the second engine.
        `SetEnv DOCKER_HOST=${unixUrl}`,
        'LogLevel ERROR',
        '',
      ].join('\n'));
      // sshd needs its privilege separation directory (created by the package's service script normally).
      if (!fs.existsSync('/run/sshd')) {
        fs.mkdirSync('/run/sshd', { mode: 0o755 });
        madeSshdDir = true;
      }
      const child = spawnDetached('nsenter', [`--net=/var/run/netns/${n.netns}`, SSHD, '-f', `${keys}/sshd_config`, '-D', '-e'], sshdLog);
      const api = new DockerApi(sshUrl, { connectTimeoutMs: 2000, timeoutMs: 10_000, env: sshEnv });
      try {
        await waitWhileRunning(child, `the second engine to answer over ${sshUrl}`, sshdLog, 30_000, () => api.ping());
      } finally {
        api.close();
      }
    });

    if (images.length > 0) {
      await timed(`loaded ${images.join(', ')}`, async () => {
        const r = await run('bash', ['-o', 'pipefail', '-c', 'docker save "$@" | docker -H "$H" load -q', 'load', ...images], {
          env: { ...process.env, H: unixUrl },
          timeoutMs: 300_000,
        });
        if (r.code !== 0) throw new Error(`loading ${images.join(', ')} into the second engine failed (${r.code}): ${r.stderr.trim()}`);
      });
    }

    const pingAll = async (what: string): Promise<void> => {
      for (const [url, env] of [[tcpUrl, process.env], [sshUrl, sshEnv]] as const) {
        const api = new DockerApi(url, { connectTimeoutMs: 1000, timeoutMs: 5000, env });
        try {
          await waitFor(`${url} to answer ${what}`, 30_000, async () => api.ping().then(() => true), 100);
        } finally {
          api.close();
        }
      }
    };
    return {
      id, netns: n.netns, hostVeth: n.hostVeth, hostAddr: n.hostAddr, nsAddr: n.nsAddr, unixUrl, tcpUrl, sshUrl, sshEnv,
      dockerArgs: ['-H', unixUrl],
      cutOff: async () => {
        await must('ip', ['link', 'set', n.hostVeth, 'down'], 'cut off');
      },
      restore: async () => {
        await must('ip', ['link', 'set', n.hostVeth, 'up'], 'restore');
        await pingAll('after the link came back');
      },
      teardown,
    };
  } catch (err) {
    const logs = `dockerd log:\n${tail(dockerdLog)}\nsshd log:\n${tail(sshdLog)}`;
    await teardown().catch(() => undefined);
    throw new Error(`${(err as Error).message}\n${logs}`);
  }
}
