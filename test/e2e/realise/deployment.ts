/**
 * What the user-level checks of the stack suite need to know about a deployed
 * environment, read from its stack outputs and from the Docker engine only,
 * so the same checks run after the realiser (outputs captured under mocks) and
 * after a real `pulumi up --stack dev` (`pulumi stack output --json --show-secrets`).
 */
import { execFile } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import type { GatewaySpec } from '../../../runtime/inventory';
import { powerDnsContainerName, volumeName } from '../../../runtime/naming';
import type { Engine } from './engine';

/** The stack outputs the checks use (README "Stack outputs"). */
export interface StackOutputs {
  envName: string;
  domain: string;
  publicIp: string;
  gatewayInventory: GatewaySpec[];
  powerDnsApiUrl: string;
  powerDnsAdminUrl: string;
  powerDnsApiKey: string;
  databaseUrl: string;
  zone: string;
  nginxConfDir: string;
  networkName: string;
  devContainerName: string;
  dnsPort: number;
  tlsMode: string;
  /** mkcert: the dev CA, as PEM (newer program) or as a path on the deploying machine (older one). */
  tlsDevCaCertificate: string | null;
  tlsCaRootPath: string | null;
  /** Secret: bearer token of https://ganymede.<domain>/operator/*. */
  operatorToken: string;
}

const STRING_KEYS = ['envName', 'domain', 'publicIp', 'powerDnsApiUrl', 'powerDnsAdminUrl', 'powerDnsApiKey', 'databaseUrl', 'zone', 'nginxConfDir', 'networkName', 'devContainerName', 'tlsMode', 'operatorToken'] as const;

/** Validates the shape (a missing or renamed output fails here, naming it). */
export function parseOutputs(raw: Record<string, unknown>): StackOutputs {
  const problems: string[] = [];
  for (const k of STRING_KEYS) if (typeof raw[k] !== 'string' || raw[k] === '') problems.push(`${k} must be a non-empty string, got ${JSON.stringify(raw[k])}`);
  if (typeof raw.dnsPort !== 'number') problems.push(`dnsPort must be a number, got ${JSON.stringify(raw.dnsPort)}`);
  for (const k of ['tlsDevCaCertificate', 'tlsCaRootPath']) {
    if (!(raw[k] === null || raw[k] === undefined || typeof raw[k] === 'string')) problems.push(`${k} must be a string or null`);
  }
  const inv = raw.gatewayInventory;
  if (!Array.isArray(inv) || inv.length === 0) problems.push('gatewayInventory must be a non-empty list');
  if (problems.length > 0) throw new Error(`stack outputs are not what the checks expect:\n  ${problems.join('\n  ')}`);
  return {
    ...(raw as unknown as StackOutputs),
    tlsDevCaCertificate: (raw.tlsDevCaCertificate as string | null | undefined) ?? null,
    tlsCaRootPath: (raw.tlsCaRootPath as string | null | undefined) ?? null,
  };
}

export interface Deployment {
  outputs: StackOutputs;
  /** Where the stage-1 HTTPS port is published on this host. */
  httpsHost: string;
  httpsPort: number;
  /** Where the stage-1 HTTP port (redirect to https) is published. */
  httpPort: number;
  dnsHost: string;
  dnsPort: number;
  /** mkcert root CA; undefined in tlsMode none/letsencrypt (system trust then). */
  caFile: string | undefined;
  buildsVolume: string;
  pdnsContainer: string;
}

function hostPort(bindings: Record<string, Array<{ HostIp: string; HostPort: string }>> | null, key: string, what: string): { host: string; port: number } {
  const b = bindings?.[key]?.[0];
  if (!b) throw new Error(`${what}: ${key} is not published`);
  return { host: b.HostIp === '' || b.HostIp === '0.0.0.0' ? '127.0.0.1' : b.HostIp, port: Number(b.HostPort) };
}

export function expandHome(p: string): string {
  return p.startsWith('~/') ? `${os.homedir()}${p.slice(1)}` : p;
}

/**
 * Reads the published stage-1 and DNS ports back from the engine: what a user's browser and resolver reach.
 * `workDir` receives the dev CA when the outputs carry it as PEM.
 */
export async function describeDeployment(outputs: StackOutputs, engine: Engine, workDir: string): Promise<Deployment> {
  const dev = await engine.inspectContainer(outputs.devContainerName);
  if (!dev) throw new Error(`dev container ${outputs.devContainerName} does not exist`);
  const https = hostPort(dev.HostConfig.PortBindings, '443/tcp', outputs.devContainerName);
  const http = hostPort(dev.HostConfig.PortBindings, '80/tcp', outputs.devContainerName);
  const pdnsName = powerDnsContainerName(outputs.envName);
  const pdns = await engine.inspectContainer(pdnsName);
  if (!pdns) throw new Error(`PowerDNS container ${pdnsName} does not exist`);
  const dns = hostPort(pdns.HostConfig.PortBindings, '53/udp', pdnsName);
  if (dns.port !== outputs.dnsPort) throw new Error(`stack output dnsPort ${outputs.dnsPort} but ${pdnsName} publishes 53/udp on ${dns.port}`);
  let ca: string | undefined;
  if (outputs.tlsMode === 'mkcert') {
    if (outputs.tlsDevCaCertificate) {
      if (!/^-----BEGIN CERTIFICATE-----/.test(outputs.tlsDevCaCertificate.trim())) throw new Error('tlsDevCaCertificate is not a PEM certificate');
      ca = `${workDir}/dev-ca.pem`;
      fs.writeFileSync(ca, `${outputs.tlsDevCaCertificate.trim()}\n`);
    } else if (outputs.tlsCaRootPath) {
      ca = expandHome(outputs.tlsCaRootPath);
      if (!fs.existsSync(ca)) throw new Error(`tlsCaRootPath ${ca} does not exist on this machine`);
    } else {
      throw new Error('tlsMode is mkcert but the outputs carry no dev CA (tlsDevCaCertificate / tlsCaRootPath)');
    }
  }
  return {
    outputs,
    httpsHost: https.host,
    httpsPort: https.port,
    httpPort: http.port,
    dnsHost: dns.host,
    dnsPort: dns.port,
    caFile: ca,
    buildsVolume: volumeName(outputs.envName, 'builds'),
    pdnsContainer: pdnsName,
  };
}

// ------------------------------------------------------------------ user-level probes

export interface DigAnswer {
  status: string;
  answers: Array<{ name: string; type: string; data: string }>;
  authority: Array<{ name: string; type: string; data: string }>;
}

/** `dig @host -p port name type`, parsed (status, answer and authority sections). */
export function dig(d: Deployment, name: string, type = 'A'): Promise<DigAnswer> {
  return new Promise((resolve, reject) => {
    execFile('dig', [`@${d.dnsHost}`, '-p', String(d.dnsPort), '+tries=2', '+time=2', '+norecurse', name, type], (err, stdout) => {
      if (err) return reject(new Error(`dig ${name} ${type}: ${err.message}`));
      const status = /status: ([A-Z]+)/.exec(stdout)?.[1] ?? 'NO-ANSWER';
      const section = (title: string): DigAnswer['answers'] => {
        const m = new RegExp(`;; ${title} SECTION:\\n([\\s\\S]*?)(?:\\n\\n|$)`).exec(stdout);
        return (m?.[1] ?? '').split('\n').filter((l) => l.trim() !== '').map((l) => {
          const f = l.split(/\s+/);
          return { name: f[0], type: f[3], data: f.slice(4).join(' ') };
        });
      };
      resolve({ status, answers: section('ANSWER'), authority: section('AUTHORITY') });
    });
  });
}

/** Plain HTTP to the published stage-1 port: status and Location. */
export function curlHttp(d: Deployment, name: string, urlPath: string): Promise<{ status: number; location: string }> {
  return new Promise((resolve, reject) => {
    execFile('curl', ['-sS', '--max-time', '8', '-o', '/dev/null', '-w', '%{http_code} %{redirect_url}', '-H', `Host: ${name}`, `http://${d.httpsHost}:${d.httpPort}${urlPath}`], (err, stdout, stderr) => {
      if (err) return reject(new Error(`curl http ${name}: ${stderr || err.message}`));
      const [status, location] = stdout.split(' ');
      resolve({ status: Number(status), location: location ?? '' });
    });
  });
}

export interface CurlResult {
  code: number;
  status: number;
  body: string;
  stderr: string;
}

/** `curl --resolve <name>:<port>:<ip> https://<name>:<port><path>` with the environment's CA (never -k when there is one). */
export function curlHttps(d: Deployment, name: string, urlPath: string): Promise<CurlResult> {
  const args = ['-sS', '--max-time', '8', '--resolve', `${name}:${d.httpsPort}:${d.httpsHost}`, '-w', '\n%{http_code}'];
  if (d.caFile) args.push('--cacert', d.caFile);
  args.push(`https://${name}:${d.httpsPort}${urlPath}`);
  return new Promise((resolve) => {
    execFile('curl', args, (err, stdout, stderr) => {
      const i = stdout.lastIndexOf('\n');
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? Number((err as { code: number }).code) : 1) : 0;
      resolve({ code, status: i >= 0 ? Number(stdout.slice(i + 1)) : 0, body: i >= 0 ? stdout.slice(0, i) : stdout, stderr });
    });
  });
}
