import type { GatewayAllocatorOptions } from './allocator-types';
import { AllocatorError } from './errors';
import { quoteSchema } from './migrate';
import { isConnectionOptions, isPgPool } from './pg-pool';
import { isUserContainerNaming, isValidDomain, isValidEnvName, isValidIpv4, type UserContainerNaming } from './naming';

const DEFAULT_SCHEMA = 'gateway_pool';

/**
 * Checks every allocator option before anything is created, collecting every
 * problem into one INVALID_CONFIG error; returns the defaulted schema and naming.
 */
export function validateAllocatorOptions(opts: GatewayAllocatorOptions): { schema: string; naming: UserContainerNaming } {
  const problems: string[] = [];
  if (!isValidEnvName(opts.envName)) problems.push('envName must be a short lowercase DNS label');
  if (!isValidDomain(opts.domain)) problems.push('domain must be a lowercase DNS name without trailing dot');
  if (!isValidIpv4(opts.publicIp)) problems.push('publicIp must be an IPv4 address');
  if (!opts.powerdns?.apiUrl || !opts.powerdns.apiKey || !opts.powerdns.zone) problems.push('powerdns needs apiUrl, apiKey and zone');
  if (opts.powerdns?.database !== undefined && !isPgPool(opts.powerdns.database) && !isConnectionOptions(opts.powerdns.database))
    problems.push('powerdns.database must be { connectionString, max? } or a pg.Pool (PowerDNS\'s gpgsql database), or left out to write through the API');
  if (!opts.nginx?.confDir || !opts.nginx.tls?.certPath || !opts.nginx.tls.keyPath) problems.push('nginx needs confDir and tls.certPath/keyPath');
  const schema = opts.schema ?? DEFAULT_SCHEMA;
  try {
    quoteSchema(schema);
  } catch (err) {
    problems.push((err as Error).message);
  }
  const naming = opts.userContainerNaming ?? 'nested';
  if (!isUserContainerNaming(naming)) problems.push(`userContainerNaming must be 'nested' or 'flat'`);
  if (naming === 'flat' && opts.certificates) problems.push('certificates are not used with flat naming (the base wildcard covers every name): remove one of the two');
  if (opts.powerdns?.zone) {
    const zone = opts.powerdns.zone.replace(/\.$/, '');
    if (opts.domain !== zone && !opts.domain.endsWith(`.${zone}`)) problems.push(`domain ${opts.domain} is not inside zone ${zone}`);
  }
  if (problems.length > 0) throw new AllocatorError('INVALID_CONFIG', `invalid allocator options: ${problems.join('; ')}`, { problems });
  return { schema, naming };
}
