/**
 * Renders the stage-1 nginx configuration the allocator owns in its confDir.
 *
 * Design (see design.md, "Stage-1 routing cost"): ONE TLS server for every
 * organization, whose regex server_name captures the org id; the gateway of an
 * org is looked up per request by njs (`js_set`) in the org's route file.
 * Route changes are therefore data, not configuration: an atomic rename makes
 * a route live for the next request, with no reload (a reload costs 60-120 ms
 * and, for ~100 ms, lets old workers keep accepting with the old routes), and
 * the cost is the same at 10 or 50,000 organizations. Reloads happen only when
 * this base configuration itself changes.
 */

export const ROUTE_OWNER = 'demiurge-allocator';
export const ROUTES_SUBDIR = 'routes';
export const ORGS_CONF = 'demiurge-orgs.conf';
export const ROUTES_JS = 'demiurge-routes.js';
/** The stage-1 nginx.conf must load this module in its main context (Debian: libnginx-mod-http-js). */
export const NJS_MODULE_PATH = '/usr/lib/nginx/modules/ngx_http_js_module.so';

export interface Stage1RenderOptions {
  confDir: string;
  domain: string;
  listen: string;
  certPath: string;
  keyPath: string;
  /** host:port of the loopback status server the allocator asks whether routes are live. */
  statusListen: string;
}

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

const UUID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}';

/** A short fingerprint of the base configuration, served by the status server so a reload can be confirmed. */
export function configVersion(text: string): string {
  let h = 2166136261;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 16777619) >>> 0;
  return h.toString(16).padStart(8, '0');
}

export function renderRoutesJs(o: Stage1RenderOptions, version: string): string {
  return `// ${ROUTE_OWNER}: written by the gateway allocator; do not edit by hand.
var fs = require('fs');
var ROUTES = ${JSON.stringify(`${o.confDir}/${ROUTES_SUBDIR}/`)};
var ID = /^${UUID}$/;
var LINE = /^(${UUID}) "([^"]+)";$/m;

function target(id) {
    if (!ID.test(id)) return '';
    try {
        var m = LINE.exec(fs.readFileSync(ROUTES + 'org-' + id + '.conf', 'utf8'));
        return m && m[1] === id ? m[2] : '';
    } catch (e) {
        return '';
    }
}

// js_set: the host:port of the organization's gateway, '' when none is allocated.
function gateway(r) {
    return target(r.variables.demiurge_org_id || '');
}

// Status server: what the workers would route each id to right now.
function lookup(r) {
    var ids = (r.args.ids || '').split(',');
    var out = { version: '${version}', routes: {} };
    for (var i = 0; i < ids.length; i++) {
        if (ID.test(ids[i])) out.routes[ids[i]] = target(ids[i]);
    }
    r.headersOut['Content-Type'] = 'application/json';
    r.return(200, JSON.stringify(out));
}

export default { gateway: gateway, lookup: lookup };
`;
}

export function renderOrgsConf(o: Stage1RenderOptions): string {
  const domain = escapeRegex(o.domain);
  return `# ${ROUTE_OWNER}: written by the gateway allocator; do not edit by hand.
# org-<uuid>.${o.domain} and *.org-<uuid>.${o.domain} -> the organization's gateway.

js_import demiurge_routes from ${o.confDir}/${ROUTES_JS};

map $host $demiurge_org_id {
    default "";
    "~^(?:[a-z0-9-]+\\.)*org-(?<demiurge_oid>${UUID})\\.${domain}$" $demiurge_oid;
}

js_set $demiurge_gateway demiurge_routes.gateway;

map $http_upgrade $demiurge_connection_upgrade {
    default upgrade;
    "" close;
}

server {
    listen ${o.listen};
    server_name "~^(?:[a-z0-9-]+\\.)*org-${UUID}\\.${domain}$";

    ssl_certificate ${o.certPath};
    ssl_certificate_key ${o.keyPath};

    location / {
        if ($demiurge_gateway = "") {
            return 404 "no gateway is allocated to this organization\\n";
        }
        proxy_pass http://$demiurge_gateway;
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $demiurge_connection_upgrade;
        proxy_set_header Host $host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host $host;
        proxy_read_timeout 1h;
        proxy_send_timeout 1h;
        proxy_buffering off;
    }
}

# Loopback only: the allocator asks the workers what they route, so an
# allocation is answered only once nginx itself serves its route.
server {
    listen ${o.statusListen};
    access_log off;
    location = /__demiurge/routes {
        js_content demiurge_routes.lookup;
    }
    location / {
        return 404;
    }
}
`;
}

export function routeFileName(orgId: string): string {
  return `org-${orgId}.conf`;
}

export function routeOwnerLine(envName: string, orgId: string): string {
  return `# owner=${ROUTE_OWNER} env=${envName} org=${orgId}`;
}

export function renderRoute(envName: string, orgId: string, gatewayName: string, host: string, port: number): string {
  return `${routeOwnerLine(envName, orgId)} gateway=${gatewayName}\n${orgId} "${host}:${port}";\n`;
}

const ROUTE_FILE_RE = new RegExp(`^org-(${UUID})\\.conf$`);

/** Org id of a route file name, or undefined if the name is not one of ours. */
export function orgIdOfRouteFile(fileName: string): string | undefined {
  return ROUTE_FILE_RE.exec(fileName)?.[1];
}
