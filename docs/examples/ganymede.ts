import type { Express } from 'express';
import type { Pool } from 'pg';
import { GatewayAllocator, type GatewayAllocatorOptions } from '@demiurge/runtime';
import { createGatewayRouter } from '@demiurge/runtime/express';

/** One environment's settings (its stack outputs), without the database: Ganymede brings its own pool. */
export type GatewaySettings = Omit<GatewayAllocatorOptions, 'pg'>;

export async function mountGateways<User>(
  app: Express,
  pool: Pool,
  settings: GatewaySettings,
  authenticate: (authorization: string | undefined) => Promise<User | null>,
): Promise<GatewayAllocator> {
  // Ganymede's pool (any pg 8.x) is used as given; allocator.close() leaves it open.
  const allocator = new GatewayAllocator({ ...settings, pg: pool });
  await allocator.migrate();
  app.use('/gateway', createGatewayRouter<User>({ allocator, authenticateUser: (req) => authenticate(headerValue(req.headers.authorization)) }));
  return allocator;
}

function headerValue(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}
