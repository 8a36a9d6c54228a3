import type { GatewayAllocatorOptions } from '../../runtime';
import type { TestServices } from './services';
import type { Stage1Nginx } from './stage1-nginx';

/** One suite's pool: its own env name, domain (= zone) and schema on the shared services. */
export interface SuitePool {
  env: string;
  domain: string;
  schema: string;
}

/** Allocator options for a suite's pool on the test services and its stage-1 nginx. */
export function testAllocatorOptions(s: TestServices, nginx: Stage1Nginx, p: SuitePool): GatewayAllocatorOptions {
  return {
    envName: p.env,
    domain: p.domain,
    publicIp: '127.0.0.1',
    pg: { connectionString: s.pgUrl },
    powerdns: { apiUrl: s.pdnsApiUrl, apiKey: s.pdnsApiKey, zone: p.domain },
    nginx: nginx.nginxOptions(),
    schema: p.schema,
    logger: null,
  };
}

/** The same pool as the environment a deployed process reads (runtime/cli/cli-config.ts SETTINGS). */
export function allocatorSettingsEnv(s: TestServices, nginx: Stage1Nginx, p: SuitePool): NodeJS.ProcessEnv {
  const n = nginx.nginxOptions();
  return {
    DATABASE_URL: s.pgUrl,
    ENV_NAME: p.env,
    DOMAIN: p.domain,
    PUBLIC_IP: '127.0.0.1',
    PDNS_API_URL: s.pdnsApiUrl,
    PDNS_API_KEY: s.pdnsApiKey,
    NGINX_CONF_DIR: n.confDir,
    NGINX_TLS_CERT: n.tls.certPath,
    NGINX_TLS_KEY: n.tls.keyPath,
    NGINX_LISTEN: n.listen,
    NGINX_STATUS_LISTEN: n.statusListen,
    NGINX_TEST_COMMAND: JSON.stringify(n.testCommand),
    NGINX_RELOAD_COMMAND: JSON.stringify(n.reloadCommand),
    ALLOCATOR_SCHEMA: p.schema,
  };
}
