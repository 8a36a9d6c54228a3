import { execFileSync } from 'child_process';
import { readFileSync } from 'fs';
import * as path from 'path';

const ROOT = path.resolve(__dirname, '..', '..');
export const DEV_ENTRYPOINT = path.join(ROOT, 'images/dev/rootfs/usr/local/bin/dev-entrypoint');
/** The dev image's page files (copied to /usr/share/demiurge/pages in the image). */
export const DEV_PAGES_DIR = path.join(ROOT, 'images/dev/rootfs/usr/share/demiurge/pages');

export interface DevSitesOptions {
  domain: string;
  certPath: string;
  keyPath: string;
  frontendRoot: string;
  ganymedeUpstream: string;
  pagesDir: string;
  /** Loopback ports replacing the image's 80 and 443. */
  httpPort: number;
  httpsPort: number;
}

/**
 * The dev image's own stage-1 server blocks (apex, ganymede, :80 redirect,
 * refusal of unknown names), rendered by the entrypoint's own heredoc with a
 * suite's values, listening on loopback test ports instead of 80/443.
 */
export function renderDevSites(o: DevSitesOptions): string {
  const script = readFileSync(DEV_ENTRYPOINT, 'utf8');
  const m = /^cat > \/etc\/nginx\/sites-enabled\/demiurge-base\.conf <<CONF\n([\s\S]*?)\nCONF$/m.exec(script);
  if (!m) throw new Error(`${DEV_ENTRYPOINT}: the demiurge-base.conf heredoc was not found`);
  const rendered = execFileSync('bash', ['-c', `set -u\ncat <<CONF\n${m[1]}\nCONF\n`], {
    encoding: 'utf8',
    env: {
      PATH: process.env.PATH,
      DOMAIN: o.domain,
      TLS_CERT_PATH: o.certPath,
      TLS_KEY_PATH: o.keyPath,
      FRONTEND_ROOT: o.frontendRoot,
      GANYMEDE_UPSTREAM: o.ganymedeUpstream,
      DEMIURGE_PAGES_DIR: o.pagesDir,
    },
  });
  const out = rendered
    .replace(/listen 80 default_server;/g, `listen 127.0.0.1:${o.httpPort} default_server;`)
    .replace(/listen 443 /g, `listen 127.0.0.1:${o.httpsPort} `);
  if (/listen (80|443)\b/.test(out)) throw new Error(`a listen on 80/443 was left in the rendered dev sites:\n${out}`);
  return out;
}
