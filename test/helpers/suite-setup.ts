/**
 * The set-up most integration suites begin with: names of their own (so
 * suites and checkouts running at once never share a zone, schema or pool),
 * their zone in the test PowerDNS and their own stage-1 nginx.
 */
import { createZone, deleteZone, dropSchema, suiteId } from './fixtures';
import { freePorts } from './ports';
import type { TestServices } from './services';
import { Stage1Nginx } from './stage1-nginx';

export interface SuiteNames {
  id: string;
  /** `<prefix>-<id>.test` */
  domain: string;
  /** `<prefix>_<id>` (a PostgreSQL schema) */
  schema: string;
  /** `<prefix><id>` (an environment name) */
  env: string;
}

/** Fresh domain, schema and environment names for a suite; `prefix` says whose they are. */
export function suiteNames(prefix: string): SuiteNames {
  const id = suiteId();
  return { id, domain: `${prefix}-${id}.test`, schema: `${prefix}_${id}`, env: `${prefix}${id}` };
}

/** Creates the suite's zone and starts its stage-1 nginx (on free ports unless `ports` says [https, status]). */
export async function zoneWithStage1(s: TestServices, domain: string, ports?: [number, number]): Promise<Stage1Nginx> {
  await createZone(s, domain);
  const [httpsPort, statusPort] = ports ?? (await freePorts(2));
  const nginx = new Stage1Nginx(domain, httpsPort, statusPort);
  nginx.start();
  return nginx;
}

/** The after-hook counterpart: drops the suite's zone and schemas (nothing when the services never came up). */
export async function removeZoneAndSchemas(s: TestServices | undefined, domain: string, schemas: string | readonly string[]): Promise<void> {
  if (!s) return;
  await deleteZone(s, domain);
  for (const schema of typeof schemas === 'string' ? [schemas] : schemas) await dropSchema(s.pgUrl, schema);
}
