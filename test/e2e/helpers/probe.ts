/**
 * Hostile-request probe for the build server. The script runs INSIDE a container on the
 * environment network (the build server has no published port), speaking raw HTTP over a TCP
 * socket so that request targets reach the server byte for byte (no client-side normalization).
 */
export interface ProbeRequest {
  label: string;
  method: string;
  target: string;
  /** Expected status: 404 for everything refused, 405 for other methods, 200 for the controls. */
  expect: number[];
}

export interface ProbeResponse {
  label: string;
  status: number;
  bytes: number;
  /** The first 200 bytes of the body (to prove no foreign file content leaked). */
  head: string;
  error?: string;
}

/** Node.js source run with `node -e` in the probe container; reads PROBE_HOST, PROBE_PORT, PROBE_REQUESTS. */
export const PROBE_SCRIPT = `
const net = require('net');
const host = process.env.PROBE_HOST, port = Number(process.env.PROBE_PORT);
const reqs = JSON.parse(process.env.PROBE_REQUESTS);
function one(r) {
  return new Promise((resolve) => {
    const s = net.connect(port, host);
    const chunks = [];
    const done = (error) => {
      const raw = Buffer.concat(chunks);
      const text = raw.toString('latin1');
      const m = /^HTTP\\/1\\.[01] (\\d{3})/.exec(text);
      const sep = text.indexOf('\\r\\n\\r\\n');
      const body = sep >= 0 ? raw.subarray(sep + 4) : Buffer.alloc(0);
      resolve({ label: r.label, status: m ? Number(m[1]) : 0, bytes: body.length, head: body.subarray(0, 200).toString('latin1'), error });
    };
    s.setTimeout(5000, () => { s.destroy(); done('timeout'); });
    s.on('connect', () => s.write(r.method + ' ' + r.target + ' HTTP/1.1\\r\\nHost: ' + host + '\\r\\nConnection: close\\r\\n\\r\\n'));
    s.on('data', (d) => chunks.push(d));
    s.on('end', () => done());
    s.on('error', (e) => done(String(e.code || e.message)));
  });
}
(async () => {
  const out = [];
  for (const r of reqs) out.push(await one(r));
  process.stdout.write(JSON.stringify(out));
})();
`;
