/**
 * Renders the stage-1 nginx configuration the allocator owns in its confDir.
 *
 * Design (see design.md, "Stage-1 routing cost"): ONE TLS server for every
 * organization, whose regex server_name captures the org id, and a `map` from
 * org id to gateway whose entries come from one small include file per org.
 * A reload then costs the same at 10 or 10,000 organizations, unlike one
 * `server` block (and TLS context) per organization.
 */

export const ROUTE_OWNER = 'demiurge-allocator';
export const ROUTES_SUBDIR = 'routes';
export const ORGS_CONF = 'demiurge-orgs.conf';
export const GENERATION_FILE = 'generation.inc';

export interface Stage1RenderOptions {
  confDir: string;
  domain: string;
  envName: string;
  listen: string;
  certPath: string;
  keyPath: string;
  /** host:port of the loopback status server the allocator polls to know a reload is live. */
  statusListen: string;
}

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

const UUID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}';

export function renderOrgsConf(o: Stage1RenderOptions): string {
  const domain = escapeRegex(o.domain);
  return `# ${ROUTE_OWNER}: written by the gateway allocator for env ${o.envName}; do not edit by hand.
# org-<uuid>.${o.domain} and *.org-<uuid>.${o.domain} -> the organization's gateway.

map $host $demiurge_org_id {
    default "";
    "~^(?:[a-z0-9-]+\\.)*org-(?<demiurge_oid>${UUID})\\.${domain}$" $demiurge_oid;
}

map $demiurge_org_id $demiurge_gateway {
    default "";
    include ${o.confDir}/${ROUTES_SUBDIR}/*.conf;
}

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

# Loopback only: the allocator reads the live configuration generation here,
# so an allocation is answered only once the workers serving it have its route.
server {
    listen ${o.statusListen};
    access_log off;
    location = /__demiurge/generation {
        default_type text/plain;
        include ${o.confDir}/${GENERATION_FILE};
    }
    location / {
        return 404;
    }
}
`;
}

export function renderGeneration(generation: number): string {
  return `return 200 "${generation}\\n";\n`;
}

export function parseGeneration(text: string): number | undefined {
  const m = /return 200 "(\d+)\\n";/.exec(text);
  return m ? Number(m[1]) : undefined;
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
