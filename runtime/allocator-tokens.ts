import { timingSafeEqual } from 'crypto';
import { db, type AllocatorContext } from './allocator-context';
import type { TokenHolder, TokenInspection } from './allocator-types';
import { AllocatorError } from './errors';
import { GatewayStates } from './gateway-states';
import { hashToken, isPlausibleToken, newToken } from './tokens';
import { assertGatewayName, assertOrganizationId } from './validation';

/** Every problem of a set of registration tokens (names and token shapes), empty when all are fine; pure. */
export function registrationTokenProblems(tokens: Record<string, string>): string[] {
  const problems: string[] = [];
  for (const [name, token] of Object.entries(tokens)) {
    try {
      assertGatewayName(name);
    } catch {
      problems.push(`${JSON.stringify(name.slice(0, 60))} is not a gateway name`);
    }
    if (!isPlausibleToken(token)) problems.push(`token of ${name.slice(0, 60)} must be a string of 16..200 characters`);
  }
  return problems;
}

/**
 * The two kinds of gateway tokens, both stored only hashed: the
 * allocation-scoped token (issued by allocate, rotated, retired on release and
 * remembered for a week) and the per-gateway registration token (the stack's
 * GATEWAY_TOKEN secret, checked on /gateway/ready).
 */
export class AllocatorTokens {
  constructor(private readonly c: AllocatorContext) {}

  async verifyToken(token: string): Promise<TokenHolder | undefined> {
    const found = await this.inspectToken(token);
    return found.status === 'valid' ? found.holder : undefined;
  }

  async inspectToken(token: string): Promise<TokenInspection> {
    this.c.open.assertOpen();
    if (!isPlausibleToken(token)) return { status: 'unknown' };
    const hash = hashToken(token);
    const row = await db(() => this.c.store.tokens.findByTokenHash(hash), 'token lookup failed');
    if (row) return { status: 'valid', holder: { gateway: row.name, organizationId: row.organizationId as string, allocationId: row.allocationId as string } };
    const retired = await db(() => this.c.store.tokens.findRetiredToken(hash), 'token lookup failed');
    return retired ? { status: 'retired', gateway: retired.gateway, organizationId: retired.organizationId } : { status: 'unknown' };
  }

  async setRegistrationTokens(tokens: Record<string, string>): Promise<void> {
    this.c.open.assertOpen();
    const problems = registrationTokenProblems(tokens);
    if (problems.length > 0) throw new AllocatorError('INVALID_GATEWAY', `invalid registration tokens: ${problems.slice(0, 10).join('; ')}`, { problems });
    const hashes = Object.entries(tokens).map(([name, token]) => ({ name, hash: hashToken(token) }));
    const unknown = await db(() => this.c.store.tokens.setRegistrationHashes(hashes), 'storing registration tokens failed');
    if (unknown.length > 0) throw new AllocatorError('UNKNOWN_GATEWAY', `registration tokens for unknown gateway(s): ${unknown.slice(0, 10).join(', ')}`, { unknown });
  }

  async verifyRegistration(name: string, token: string): Promise<boolean> {
    this.c.open.assertOpen();
    if (typeof name !== 'string' || !isPlausibleToken(token)) return false;
    try {
      assertGatewayName(name);
    } catch {
      return false;
    }
    const found = await db(() => this.c.store.tokens.registrationHash(name), 'registration lookup failed');
    if (!found?.hash || found.state === GatewayStates.retired) return false;
    return timingSafeEqual(found.hash, hashToken(token));
  }

  async rotateToken(organizationId: string, allocationId?: string): Promise<string> {
    this.c.open.assertOpen();
    assertOrganizationId(organizationId);
    const token = newToken();
    const row = await db(() => this.c.store.tokens.rotateToken(organizationId, hashToken(token), allocationId), 'token rotation failed');
    if (!row) throw new AllocatorError('NOT_ALLOCATED', `organization ${organizationId} holds no allocated gateway`, { organizationId });
    return token;
  }
}
