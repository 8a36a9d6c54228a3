/**
 * The facts file scripts/test-services.sh writes (`.test-services/env`, the
 * soak profile's `.test-services/soak/env`): `KEY=value` lines, read by the
 * integration suites, the bench and the soak alike.
 */
import { existsSync, readFileSync } from 'fs';

/** Where the shared PostgreSQL / PowerDNS of a services profile are reached. */
export interface TestServices {
  pgUrl: string;
  pdnsApiUrl: string;
  pdnsApiKey: string;
  pdnsDnsPort: number;
  /** PowerDNS's gpgsql database (role and database `pdns_test`), for writing records to its tables. */
  pdnsDbUrl: string;
  servicesScript: string;
}

/** An env file written before TEST_PDNS_DB_URL existed: the same cluster and password, role and database pdns_test (scripts/test-services.sh). */
function pdnsDbUrlOf(env: Readonly<Record<string, string>>): string {
  if (env.TEST_PDNS_DB_URL) return env.TEST_PDNS_DB_URL;
  const u = new URL(env.TEST_PG_URL);
  const db = env.SERVICES_PROFILE === 'soak' ? 'pdns_soak' : 'pdns_test';
  u.username = db;
  u.pathname = `/${db}`;
  return u.toString();
}

/** `KEY=value` lines (the value is everything after the first `=`); throws `missing` when the file does not exist. */
export function readEnvFile(file: string, missing = `${file} was not written`): Record<string, string> {
  if (!existsSync(file)) throw new Error(missing);
  const env: Record<string, string> = {};
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) env[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return env;
}

/** The connection facts of a services env file. */
export function testServicesOf(env: Readonly<Record<string, string>>): TestServices {
  return {
    pgUrl: env.TEST_PG_URL,
    pdnsApiUrl: env.TEST_PDNS_API_URL,
    pdnsApiKey: env.TEST_PDNS_API_KEY,
    pdnsDnsPort: Number(env.TEST_PDNS_DNS_PORT),
    pdnsDbUrl: pdnsDbUrlOf(env),
    servicesScript: env.TEST_SERVICES_SCRIPT,
  };
}
