/** Per-checkout identity for e2e names: two checkouts on one machine never share containers or ports. */
import * as crypto from 'crypto';
import { REPO_ROOT } from './docker';

/**
 * Stable per checkout: the same checkout reuses its image tags (so a warm run
 * hits the build cache under the same names), two checkouts on one machine
 * get different names and, usually, different port slots.
 */
export function checkoutId(root = REPO_ROOT): string {
  return crypto.createHash('sha256').update(root).digest('hex').slice(0, 6);
}
