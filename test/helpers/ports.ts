import * as net from 'net';

/**
 * `n` distinct TCP ports free on 127.0.0.1 right now, chosen by the kernel.
 * Suites take their nginx, API and Pebble ports from here instead of fixed
 * numbers, so two checkouts running the same suite at once never collide.
 */
export async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<net.Server>((resolve, reject) => {
          const srv = net.createServer();
          srv.once('error', reject);
          srv.listen(0, '127.0.0.1', () => resolve(srv));
        }),
    ),
  );
  const ports = servers.map((srv) => (srv.address() as net.AddressInfo).port);
  await Promise.all(servers.map((srv) => new Promise<void>((r) => srv.close(() => r()))));
  return ports;
}
