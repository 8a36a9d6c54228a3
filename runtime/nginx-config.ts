/**
 * Renders the stage-1 nginx configuration the allocator owns in its confDir.
 *
 * Design (see design.md, "Stage-1 routing cost"): ONE TLS server for every
 * organization, whose regex server_name matches the org names; the gateway of an
 * org is looked up per request in a table in nginx's shared memory
 * (lua-nginx-module's `lua_shared_dict`: a compiled Lua function cuts the org id
 * out of $host and does one `get`, ≈6,500 user-space instructions over a static
 * proxy, ≈1 µs, where njs 0.7's `js_set` + a route-file read cost ≈12 µs;
 * docs/bench.md, row 5).
 * Route changes are therefore data, not configuration, with no reload (a
 * reload costs 60-120 ms and, for ~100 ms, lets old workers keep accepting
 * with the old routes), and the cost is the same at 10 or 50,000
 * organizations. Reloads happen only when this base configuration changes.
 *
 * The durable routes are the per-org route files (runtime/nginx-route-files.ts
 * writes them atomically); the shared dict is the live table, derived from them:
 *  - after writing a batch of files, still under the nginx lock (so whoever
 *    holds it sees table = files), the writer asks the status server to
 *    (re)load exactly those organizations' files (`POST /__demiurge/routes/load`);
 *    the answer is what the table now holds, which every worker serves (one
 *    table in shared memory), so an allocation resolves only once it is routed,
 *    and a release only once its entry is gone;
 *  - loads are serialized inside nginx (a lock entry in the dict), and each
 *    load reads the files as they are when it runs, so the last load after the
 *    last write of a file leaves the table equal to the file, whatever the
 *    order in which concurrent writers' loads arrive;
 *  - a fresh nginx (new master: an empty zone) loads every route file once, in
 *    one worker's `init_worker` (after the master bound its sockets, before that
 *    worker accepts; every load waits for it) and marks the table loaded. So a
 *    removal whose status request is refused (nothing bound) is honoured by the
 *    initial load to come, and a removal nginx answers not at all fails the
 *    release (runtime/nginx-route-files.ts). A HUP reload keeps the zone (same
 *    name and size), so it does not read the files again (that read could race
 *    a writer's load and bring back a route just removed). The zone's size is
 *    therefore fixed (ROUTES_DICT_SIZE): changing it starts an empty zone at
 *    that reload, loaded from the files;
 *  - a miss is a miss: no lazy fill from the file on an unknown org (a fill
 *    racing a release could read the file just before its removal and put a
 *    stale route back after the release's load — gateways are reused by other
 *    organizations, so that would route one org's traffic to another's).
 * njs stays where it is not per request: the certificate per TLS handshake
 * and the pages stage 1 answers itself.
 */

import type { UserContainerNaming } from './naming';
import { renderRouteTable, routeLookupDirective } from './nginx-route-table';
import { ORG_PLACEHOLDER, gatewayDownPage, noGatewayPage } from './stage1-pages';

export const ROUTE_OWNER = 'demiurge-allocator';
export const ROUTES_SUBDIR = 'routes';
/** Per-organization certificate bundles (key + chain in one file): `<confDir>/certs/org-<uuid>.pem`. */
export const CERTS_SUBDIR = 'certs';
export const ORGS_CONF = 'demiurge-orgs.conf';
export const ROUTES_JS = 'demiurge-routes.js';
/** The stage-1 nginx.conf must load this module in its main context (Debian: libnginx-mod-http-js). */
export const NJS_MODULE_PATH = '/usr/lib/nginx/modules/ngx_http_js_module.so';
/** Nginx Development Kit: lua-nginx-module needs it loaded first (Debian: libnginx-mod-http-ndk). */
export const NDK_MODULE_PATH = '/usr/lib/nginx/modules/ndk_http_module.so';
/** lua-nginx-module (Debian: libnginx-mod-http-lua, with lua-resty-core and LuaJIT): the route table. */
export const LUA_MODULE_PATH = '/usr/lib/nginx/modules/ngx_http_lua_module.so';
/** The `load_module` lines every stage-1 nginx.conf needs in its main context, in this order. */
export const STAGE1_LOAD_MODULES = [NDK_MODULE_PATH, LUA_MODULE_PATH, NJS_MODULE_PATH].map((m) => `load_module ${m};`).join('\n');
export { ROUTES_DICT, ROUTES_DICT_SIZE } from './nginx-route-table';

export interface Stage1RenderOptions {
  confDir: string;
  domain: string;
  listen: string;
  certPath: string;
  keyPath: string;
  /** host:port of the loopback status server the allocator asks whether routes are live. */
  statusListen: string;
  /** User-container names the org server accepts besides `org-<uuid>.<domain>`; default nested. */
  naming?: UserContainerNaming;
  /**
   * Directory of per-organization certificate bundles. When set, the
   * certificate is chosen per TLS handshake (see renderOrgsConf); when not,
   * the base certificate is loaded once per reload, as before.
   */
  orgCertDir?: string;
}

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

const UUID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}';
/** naming.compactId: a UUID in 26 base32 characters (flat names carry it so the label fits in 63). */
const COMPACT = '[a-z2-7]{25}[aeimquy4]';

/** The org server's host pattern (without anchors' domain part): nested names always, flat ones when enabled. */
function hostPattern(o: Stage1RenderOptions, domain: string): string {
  const nested = `(?:[a-z0-9-]+\\.)*org-${UUID}`;
  if ((o.naming ?? 'nested') === 'nested') return `^${nested}\\.${domain}$`;
  return `^(?:${nested}|[a-z0-9-]+--org-(?:${UUID}|${COMPACT}))\\.${domain}$`;
}

/** Bundle file of an organization's certificate (key first, then leaf and chain). */
export function orgCertFileName(orgId: string): string {
  return `org-${orgId}.pem`;
}

const CERT_FILE_RE = new RegExp(`^org-(${UUID})\\.pem$`);

/** Org id of a certificate bundle file name, or undefined if the name is not one of ours. */
export function orgIdOfCertFile(fileName: string): string | undefined {
  return CERT_FILE_RE.exec(fileName)?.[1];
}

/** First line of a bundle the allocator wrote (PEM readers skip text before `-----BEGIN`). */
export function certOwnerLine(envName: string, orgId: string): string {
  return `# owner=${ROUTE_OWNER} env=${envName} org=${orgId}`;
}

/** The text of an organization's bundle file as the allocator writes it: owner line, then key and chain. */
export function renderCertFile(envName: string, orgId: string, bundlePem: string): string {
  return `${certOwnerLine(envName, orgId)}\n${bundlePem}`;
}

/** A short fingerprint of the base configuration, served by the status server so a reload can be confirmed. */
export function configVersion(text: string): string {
  let h = 2166136261;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 16777619) >>> 0;
  return h.toString(16).padStart(8, '0');
}

/** njs: the decoder of flat names' compact org id. */
const NJS_COMPACT_DECODER = `
// Flat names carry the org id as naming.compactId (26 base32 characters).
var B32 = 'abcdefghijklmnopqrstuvwxyz234567';
function uuidOf(token) {
    var hex = '', acc = 0, bits = 0;
    for (var i = 0; i < token.length; i++) {
        acc = (acc << 5) | B32.indexOf(token.charAt(i));
        bits += 5;
        if (bits >= 8) {
            var b = (acc >>> (bits - 8)) & 255;
            hex += (b < 16 ? '0' : '') + b.toString(16);
            bits -= 8;
            acc &= (1 << bits) - 1;
        }
    }
    return hex.slice(0, 8) + '-' + hex.slice(8, 12) + '-' + hex.slice(12, 16) + '-' + hex.slice(16, 20) + '-' + hex.slice(20, 32);
}
`;

/** njs: which certificate a TLS handshake gets (the org's bundle when readable, else the base). */
function njsTlsPart(o: Stage1RenderOptions, certDir: string): string {
  return `
var CERTS = ${JSON.stringify(`${certDir}/`)};
var BASE_CERT = ${JSON.stringify(o.certPath)};
var BASE_KEY = ${JSON.stringify(o.keyPath)};
var SNI = ${`/^(?:[a-z0-9-]+\\.)*org-(${UUID})\\.${escapeRegex(o.domain)}$/`};

function readable(file) {
    try {
        fs.accessSync(file, fs.constants.R_OK);
        return true;
    } catch (e) {
        return false;
    }
}

function hasCert(id) {
    return ID.test(id) && readable(CERTS + 'org-' + id + '.pem');
}

// js_set, evaluated once per TLS handshake (nginx caches it for the handshake's
// fake request, so the certificate and key maps always agree): the org whose
// bundle to serve, or '' for the base certificate (no org name, or the org's
// certificate is pending / not on disk: the base still covers org-<uuid>).
function tlsOrg(r) {
    var m = SNI.exec((r.variables.ssl_server_name || '').toLowerCase());
    return m && hasCert(m[1]) ? m[1] : '';
}
`;
}

export function renderRoutesJs(o: Stage1RenderOptions): string {
  const flat = (o.naming ?? 'nested') === 'flat';
  const certDir = o.orgCertDir;
  // njs 0.7 (Debian bookworm): ES5-style code, `var` only.
  const compactDecoder = flat ? NJS_COMPACT_DECODER : '';
  const tls = certDir ? njsTlsPart(o, certDir) : '';
  return `// ${ROUTE_OWNER}: written by the gateway allocator; do not edit by hand.
// The routes themselves are not here: stage 1 looks them up in its shared-memory table (Lua,
// ${ORGS_CONF}); njs chooses the certificate per TLS handshake and renders stage 1's own pages.
var fs = require('fs');
var ID = /^${UUID}$/;
${compactDecoder}${tls}
function orgIdOf(r) {
    var id = r.variables.demiurge_org_id || '';
${flat ? "    if (id.length === 26) id = uuidOf(id);\n" : ''}    return id;
}

// Pages stage 1 answers itself (runtime/stage1-pages.ts): HTML for people, JSON when
// asked for (Accept: application/json without text/html); never cached.
var PAGES = ${JSON.stringify({ noGateway: noGatewayPage(o.domain), gatewayDown: gatewayDownPage(o.domain) })};

function page(r, p) {
    var id = orgIdOf(r);
    if (!ID.test(id)) id = '';
    var accept = (r.headersIn['Accept'] || '').toLowerCase();
    var json = accept.indexOf('application/json') >= 0 && accept.indexOf('text/html') < 0;
    r.headersOut['Cache-Control'] = 'no-store';
    r.headersOut['Content-Type'] = json ? 'application/json; charset=utf-8' : 'text/html; charset=utf-8';
    r.return(p.status, (json ? p.json : p.html).split(${JSON.stringify(ORG_PLACEHOLDER)}).join(id));
}

function noGateway(r) {
    page(r, PAGES.noGateway);
}

function gatewayDown(r) {
    page(r, PAGES.gatewayDown);
}

export default { noGateway: noGateway, gatewayDown: gatewayDown${certDir ? ', tlsOrg: tlsOrg' : ''} };
`;
}

/**
 * The proxy directives of stage 1's org location (WebSocket upgrade, X-Forwarded-*, long
 * timeouts, no buffering), 8-space indented; the bench's static proxy uses the same ones so
 * row 5 compares like with like. `connection` names the map of $http_upgrade to Connection.
 */
export function proxyDirectives(connection: string): string {
  return [
    'proxy_http_version 1.1;',
    'proxy_set_header Upgrade $http_upgrade;',
    `proxy_set_header Connection ${connection};`,
    'proxy_set_header Host $host;',
    'proxy_set_header X-Real-IP $remote_addr;',
    'proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;',
    'proxy_set_header X-Forwarded-Proto $scheme;',
    'proxy_set_header X-Forwarded-Host $host;',
    'proxy_read_timeout 1h;',
    'proxy_send_timeout 1h;',
    'proxy_buffering off;',
  ].map((l) => `        ${l}`).join('\n');
}

/** nginx: the certificate of each TLS handshake, chosen by njs (tlsOrg). */
function orgCertMaps(o: Stage1RenderOptions, orgCertDir: string): string {
  return `
# Certificate per TLS handshake: the org's own bundle (org-<uuid> and *.org-<uuid>)
# when the allocator has written it, the base certificate otherwise.
js_set $demiurge_tls_org demiurge_routes.tlsOrg;

map $demiurge_tls_org $demiurge_ssl_certificate {
    "" ${o.certPath};
    default ${orgCertDir}/org-$demiurge_tls_org.pem;
}

map $demiurge_tls_org $demiurge_ssl_certificate_key {
    "" ${o.keyPath};
    default ${orgCertDir}/org-$demiurge_tls_org.pem;
}
`;
}

/** nginx: the loopback status server the allocator asks (and has load routes) before it answers. */
function statusServer(o: Stage1RenderOptions): string {
  return `# Loopback only: the allocator loads routes into the table and asks what it holds, so an
# allocation is answered only once nginx itself serves its route.
server {
    listen ${o.statusListen};
    access_log off;
    location = /__demiurge/routes {
        content_by_lua_block { demiurge.lookup() }
    }
    location = /__demiurge/routes/load {
        content_by_lua_block { demiurge.load() }
    }
    location / {
        return 404;
    }
}
`;
}

/**
 * Certificates: without orgCertDir, the base certificate is loaded by the
 * master at each reload. With it, `ssl_certificate` holds variables, so nginx
 * 1.22 loads the chosen files in the worker during every full handshake
 * (resumed sessions skip it): the org's bundle when its file is readable, the
 * base certificate otherwise. A new or renewed certificate is therefore live
 * for the next handshake after its file is renamed into place, with no reload.
 * The cost is the file load: ≈1.2 ms more worker CPU per full handshake here
 * (OpenSSL 3 PEM decoding), and the workers (not only the root master) must be
 * able to read the base key.
 */
export function renderOrgsConf(o: Stage1RenderOptions, version = ''): string {
  const domain = escapeRegex(o.domain);
  const flat = (o.naming ?? 'nested') === 'flat';
  const hostMap = flat
    ? `    "~^(?:[a-z0-9-]+\\.)*org-(?<demiurge_oid>${UUID})\\.${domain}$" $demiurge_oid;
    "~^[a-z0-9-]+--org-(?<demiurge_oid>${UUID}|${COMPACT})\\.${domain}$" $demiurge_oid;`
    : `    "~^(?:[a-z0-9-]+\\.)*org-(?<demiurge_oid>${UUID})\\.${domain}$" $demiurge_oid;`;
  const certs = o.orgCertDir ? orgCertMaps(o, o.orgCertDir) : '';
  const sslCert = o.orgCertDir ? '$demiurge_ssl_certificate' : o.certPath;
  const sslKey = o.orgCertDir ? '$demiurge_ssl_certificate_key' : o.keyPath;
  return `# ${ROUTE_OWNER}: written by the gateway allocator; do not edit by hand.
# org-<uuid>.${o.domain} and *.org-<uuid>.${o.domain}${flat ? ` and <name>--org-<uuid>.${o.domain}` : ''} -> the organization's gateway.

js_import demiurge_routes from ${o.confDir}/${ROUTES_JS};

map $host $demiurge_org_id {
    default "";
${hostMap}
}

${renderRouteTable({ domain: o.domain, routesDir: `${o.confDir}/${ROUTES_SUBDIR}`, version, flat, certDir: o.orgCertDir, certPath: o.certPath, keyPath: o.keyPath })}${certs}
map $http_upgrade $demiurge_connection_upgrade {
    default upgrade;
    "" close;
}

server {
    listen ${o.listen};
    server_name "~${hostPattern(o, domain)}";

    ssl_certificate ${sslCert};
    ssl_certificate_key ${sslKey};

    # What a person (or an API client) sees when there is nothing to pass the request to:
    # a page naming the problem and what to do, never a bare status or a download.
    # Only nginx's own errors: a gateway's answers (any status) pass through unchanged.
    error_page 404 @demiurge_no_gateway;
    error_page 502 504 @demiurge_gateway_down;

    location @demiurge_no_gateway {
        js_content demiurge_routes.noGateway;
    }

    location @demiurge_gateway_down {
        js_content demiurge_routes.gatewayDown;
    }

    location / {
        # One shared-dict get per request; "" (no route, or no org id) answers the no-gateway page.
        ${routeLookupDirective()}
        if ($demiurge_gateway = "") {
            return 404;
        }
        proxy_pass http://$demiurge_gateway;
${proxyDirectives('$demiurge_connection_upgrade')}
    }
}

${statusServer(o)}`;
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
