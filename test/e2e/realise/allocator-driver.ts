/**
 * Runs INSIDE the dev container (node, as Ganymede would), transpiled to
 * /opt/demiurge-e2e-allocator/driver.js next to the transpiled runtime/ and
 * the node_modules it needs. The host drives one GatewayAllocator through it:
 * one JSON request per stdin line, one JSON answer per stdout line; the
 * allocator's own JSON log lines go to stderr.
 *
 * Why inside the container: the allocator writes route files into its
 * confDir, runs `nginx -t` / `nginx -s reload`, asks nginx's loopback status
 * server, and reaches PostgreSQL and PowerDNS by the container names the stack
 * outputs carry (`databaseUrl`, `powerDnsApiUrl`) - exactly what the API server
 * in the dev container does.
 *
 * Requests: { id, op, args }. ops: init (args: options without nginx.tls, which
 * comes from the container's TLS_CERT_PATH / TLS_KEY_PATH like any process in
 * it), migrate, registerGateways, markReady, allocate, release, status, list,
 * getAllocation, close.
 */
import * as path from 'path';
import * as readline from 'readline';
import type * as Runtime from '../../../runtime';

type AllocatorOptions = ConstructorParameters<typeof Runtime.GatewayAllocator>[0];
type InitOptions = Omit<AllocatorOptions, 'nginx'> & { nginx: Omit<AllocatorOptions['nginx'], 'tls'> };

interface Request {
  id: number;
  op: string;
  args?: unknown;
}

// The bundle puts the transpiled runtime next to this file.
const runtime = require(path.join(__dirname, 'runtime')) as typeof Runtime;
let allocator: Runtime.GatewayAllocator | undefined;

function need(): Runtime.GatewayAllocator {
  if (allocator === undefined) throw new Error('init first');
  return allocator;
}

async function handle(req: Request): Promise<unknown> {
  switch (req.op) {
    case 'init': {
      const o = req.args as InitOptions;
      const certPath = process.env.TLS_CERT_PATH;
      const keyPath = process.env.TLS_KEY_PATH;
      if (!certPath || !keyPath) throw new Error('TLS_CERT_PATH / TLS_KEY_PATH are not set in the dev container');
      allocator = new runtime.GatewayAllocator({ ...o, nginx: { ...o.nginx, tls: { certPath, keyPath } } });
      return { certPath, keyPath };
    }
    case 'migrate':
      return need().migrate();
    case 'registerGateways':
      return need().registerGateways(req.args as Runtime.GatewaySpec[]);
    case 'markReady':
      return need().markReady(req.args as string[]);
    case 'allocate':
      return need().allocate(String(req.args));
    case 'release':
      return need().release(String(req.args));
    case 'getAllocation':
      return (await need().getAllocation(String(req.args))) ?? null;
    case 'status':
      return need().status();
    case 'list':
      return need().list();
    case 'metrics':
      return need().metrics();
    case 'close': {
      await need().close();
      allocator = undefined;
      return {};
    }
    default:
      throw new Error(`unknown op ${req.op}`);
  }
}

const rl = readline.createInterface({ input: process.stdin });
let pending = Promise.resolve();
rl.on('line', (line) => {
  if (line.trim() === '') return;
  const req = JSON.parse(line) as Request;
  // One request at a time, in order: the host awaits each answer anyway.
  pending = pending.then(async () => {
    let answer: unknown;
    try {
      answer = { id: req.id, ok: true, result: await handle(req) };
    } catch (err) {
      const e = err as { name?: string; code?: string; message?: string };
      answer = { id: req.id, ok: false, error: { name: e.name ?? 'Error', code: e.code ?? null, message: e.message ?? String(err) } };
    }
    process.stdout.write(`${JSON.stringify(answer)}\n`);
  });
});
rl.on('close', () => {
  void pending.then(async () => {
    if (allocator) await allocator.close().catch(() => undefined);
    process.exit(0);
  });
});
